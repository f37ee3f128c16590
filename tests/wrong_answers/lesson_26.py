"""Wrong answers for lesson 26 — A 2025 training recipe."""

_NS_HEAD = "def newton_schulz(gradient, steps=5):\n    a, b, c = 3.4445, -4.7750, 2.0315\n"
_NS_LOOP = (
    "    for _ in range(steps):\n"
    "        gram = x @ x.T\n"
    "        x = a * x + (b * gram + c * gram @ gram) @ x\n"
    "    return x\n"
)
_WSD_HEAD = (
    "import math\n\n\ndef wsd_schedule(step, max_lr, warmup_steps, total_steps, decay_fraction, min_lr):\n"
    "    decay_steps = round(decay_fraction * total_steps)\n"
    "    decay_start = total_steps - decay_steps\n"
    "    if step < warmup_steps:\n        return max_lr * (step + 1) / warmup_steps\n"
    "    if step < decay_start:\n        return max_lr\n"
    "    if step >= total_steps:\n        return min_lr\n"
)
_SPLIT_HEAD = "def split_parameters(model):\n    muon, adamw = [], []\n    for name, p in model.named_parameters():\n"

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "26_training_recipe.ipynb": {
        "newton_schulz": [
            (_NS_HEAD + "    x = gradient\n" + _NS_LOOP, "divide G by its"),
            (_NS_HEAD + "    x = gradient / torch.linalg.matrix_norm(gradient, ord=2)\n" + _NS_LOOP,
             "not by the largest singular value"),
            (_NS_HEAD + "    a, b, c = c, b, a\n    x = gradient / gradient.norm()\n" + _NS_LOOP, "in that order"),
            (_NS_HEAD + "    x = gradient / gradient.norm()\n" + _NS_LOOP.replace("range(steps)", "range(steps - 1)"),
             "four steps"),
        ],
        "split_parameters": [
            (_SPLIT_HEAD + "        (muon if p.dim() == 2 else adamw).append(name)\n    return muon, adamw\n",
             "an embedding went to Muon"),
            (_SPLIT_HEAD + "        (muon if name.startswith('layers.') else adamw).append(name)\n    return muon, adamw\n",
             "a bias or a norm gain went to Muon"),
            (_SPLIT_HEAD + "        (muon if p.dim() == 2 and 'attn' in name else adamw).append(name)\n"
             "    return muon, adamw\n", "belongs to Muon"),
        ],
        "wsd_schedule": [
            (_WSD_HEAD + "    progress = (step - decay_start + 1) / decay_steps\n"
             "    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2\n", "not a cosine"),
            (_WSD_HEAD + "    return max_lr + (min_lr - max_lr) * (step - decay_start) / decay_steps\n",
             "one step late"),
            (_WSD_HEAD + "    return max_lr * (1 - (step - decay_start + 1) / decay_steps)\n", "expected"),
        ],
    },
}

CORRECT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "26_training_recipe.ipynb": {
        "newton_schulz": [
            # torch's orientation (the Gram matrix of the short side) and A (A X) instead of A^2 X
            _NS_HEAD + "    tall = gradient.shape[0] > gradient.shape[1]\n"
            "    x = gradient.T if tall else gradient\n"
            "    x = x / torch.linalg.matrix_norm(x, ord='fro')\n"
            "    for _ in range(steps):\n"
            "        ax = (x @ x.T) @ x\n"
            "        x = a * x + b * ax + c * (x @ x.T) @ ax\n"
            "    return x.T if tall else x\n",
        ],
        "split_parameters": [
            # the Muon list first, then everything not in it
            "def split_parameters(model):\n"
            "    named = list(model.named_parameters())\n"
            "    muon = [n for n, p in named if n.split('.')[0] == 'layers' and p.ndim == 2]\n"
            "    return muon, [n for n, _ in named if n not in muon]\n",
        ],
        "wsd_schedule": [
            # the decay counted by the steps left after this one
            "def wsd_schedule(step, max_lr, warmup_steps, total_steps, decay_fraction, min_lr):\n"
            "    if step >= total_steps:\n        return min_lr\n"
            "    if step < warmup_steps:\n        return max_lr * (step + 1) / warmup_steps\n"
            "    decay_steps = round(decay_fraction * total_steps)\n"
            "    left = total_steps - 1 - step\n"
            "    if left >= decay_steps:\n        return max_lr\n"
            "    return min_lr + (max_lr - min_lr) * left / decay_steps\n",
        ],
    },
}
