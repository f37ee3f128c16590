"""Wrong answers for lesson 06 — Training."""

_BATCH_HEAD = (
    "def get_batch(data, batch_size, block_size, generator=None):\n"
    "    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)\n"
    "    offsets = torch.arange(block_size)\n"
)
_LOG_PROBS_TAIL = (
    "    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)\n"
    "    return -picked.mean()\n"
)
_BIGRAM_HEAD = (
    "def bigram_log_probs(data, vocab_size, smoothing=1.0):\n"
    "    counts = torch.zeros(vocab_size, vocab_size)\n"
)
_COUNT_PAIRS = "    counts.index_put_((data[:-1], data[1:]), torch.ones(len(data) - 1), accumulate=True)\n"
_SCHEDULE_HEAD = (
    "import math\n\n"
    "def lr_schedule(step, max_lr, warmup_steps, total_steps, min_lr):\n"
    "    if step < warmup_steps:\n"
)

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "06_training.ipynb": {
        "get_batch": [
            (
                _BATCH_HEAD + "    inputs = data[starts[:, None] + offsets]\n    return inputs, inputs.clone()\n",
                "equals its inputs",
            ),
            (
                _BATCH_HEAD + "    inputs = data[starts[:, None] + offsets + 1]\n"
                "    return inputs, data[starts[:, None] + offsets]\n",
                "shifted the wrong way",
            ),
            (
                "def get_batch(data, batch_size, block_size, generator=None):\n"
                "    starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)\n"
                "    offsets = torch.arange(block_size)\n"
                "    return data[starts[:, None] + offsets], data[starts[:, None] + offsets + 1]\n",
                "the last valid start is len(data) - block_size - 1",
            ),
            (
                "def get_batch(data, batch_size, block_size, generator=None):\n"
                "    starts = torch.randint(len(data) - block_size, (batch_size,))\n"
                "    offsets = torch.arange(block_size)\n"
                "    return data[starts[:, None] + offsets], data[starts[:, None] + offsets + 1]\n",
                "two generators seeded alike gave different batches",
            ),
        ],
        "cross_entropy": [
            (
                "def cross_entropy(logits, targets):\n"
                "    log_probs = logits - logits.exp().sum(dim=-1, keepdim=True).log()\n" + _LOG_PROBS_TAIL,
                "subtract each row's maximum",
            ),
            (
                "def cross_entropy(logits, targets):\n"
                "    shifted = (logits - logits.max(dim=-1, keepdim=True).values).exp()\n"
                "    log_probs = (shifted / shifted.sum(dim=-1, keepdim=True)).log()\n" + _LOG_PROBS_TAIL,
                "instead of taking the log of probabilities",
            ),
            (
                "def cross_entropy(logits, targets):\n"
                "    shifted = logits - logits.max(dim=1, keepdim=True).values\n"
                "    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()\n" + _LOG_PROBS_TAIL,
                "normalises over the wrong axis",
            ),
            (
                "def cross_entropy(logits, targets):\n"
                "    shifted = logits - logits.max(dim=-1, keepdim=True).values\n"
                "    log_probs = shifted - shifted.exp().sum(dim=-1, keepdim=True).log()\n"
                "    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)\n"
                "    return -picked.sum() / logits.shape[0]\n",
                "divided by the batch size B only",
            ),
            (
                "def cross_entropy(logits, targets):\n"
                "    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())\n",
                "not allowed here",
            ),
            (  # stable for one row, not for rows whose maxima lie far apart
                "def cross_entropy(logits, targets):\n"
                "    shifted = logits - logits.max()\n"
                "    log_probs = shifted - shifted.exp().sum(dim=-1, keepdim=True).log()\n" + _LOG_PROBS_TAIL,
                "not one maximum over the whole tensor",
            ),
        ],
        "bigram_log_probs": [
            (
                _BIGRAM_HEAD + _COUNT_PAIRS
                + "    return (counts / counts.sum(dim=1, keepdim=True)).log()\n",
                "add `smoothing` to every count",
            ),
            (
                _BIGRAM_HEAD
                + "    counts.index_put_((data[1:], data[:-1]), torch.ones(len(data) - 1), accumulate=True)\n"
                "    counts += smoothing\n    return (counts / counts.sum(dim=1, keepdim=True)).log()\n",
                "counted the pairs the other way round",
            ),
            (
                _BIGRAM_HEAD + "    counts[data[:-1], data[1:]] += 1\n"
                "    counts += smoothing\n    return (counts / counts.sum(dim=1, keepdim=True)).log()\n",
                "each pair was counted at most once",
            ),
            (
                _BIGRAM_HEAD + _COUNT_PAIRS
                + "    counts += smoothing\n    return (counts / counts.sum(dim=0, keepdim=True)).log()\n",
                "the columns sum to 1 instead",
            ),
        ],
        "lr_schedule": [
            (
                _SCHEDULE_HEAD + "        return max_lr * step / warmup_steps\n"
                "    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))\n"
                "    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2\n",
                "wastes the first step",
            ),
            (
                _SCHEDULE_HEAD + "        return max_lr * (step + 1) / warmup_steps\n"
                "    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))\n"
                "    return max_lr * (1 + math.cos(math.pi * progress)) / 2\n",
                "decays to 0, not to min_lr",
            ),
            (
                _SCHEDULE_HEAD + "        return max_lr * (step + 1) / warmup_steps\n"
                "    progress = (step - warmup_steps) / total_steps\n"
                "    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2\n",
                "half-way through the decay",
            ),
            (
                _SCHEDULE_HEAD + "        return max_lr * (step + 1) / warmup_steps\n"
                "    progress = (step - warmup_steps) / (total_steps - warmup_steps)\n"
                "    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2\n",
                "cap progress at 1",
            ),
            (  # the warm-up fraction computed before the test: fails only when there is no warm-up
                "import math\n\n"
                "def lr_schedule(step, max_lr, warmup_steps, total_steps, min_lr):\n"
                "    warm = max_lr * (step + 1) / warmup_steps\n"
                "    if step < warmup_steps:\n"
                "        return warm\n"
                "    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))\n"
                "    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2\n",
                "ZeroDivisionError",
            ),
        ],
    },
}

CORRECT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "06_training.ipynb": {
        "cross_entropy": [
            # upcasts to float32 (a float64 input is computed in float32): the exercise asks for no dtype
            "def cross_entropy(logits, targets):\n"
            "    logits = logits.float()\n"
            "    top = logits.amax(dim=-1, keepdim=True)\n"
            "    log_norm = top + (logits - top).exp().sum(dim=-1, keepdim=True).log()\n"
            "    picked = torch.take_along_dim(logits, targets[..., None], dim=-1)\n"
            "    return (log_norm - picked).mean()\n",
        ],
        "lr_schedule": [
            "import math\n\n"
            "def lr_schedule(step, max_lr, warmup_steps, total_steps, min_lr):\n"
            "    if step < warmup_steps:\n"
            "        return (step + 1) / warmup_steps * max_lr\n"
            "    if step >= total_steps:\n"
            "        return min_lr\n"
            "    cosine = math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps))\n"
            "    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + cosine)\n",
        ],
    },
}
