"""Checks for lesson 06 — Training (batches, cross-entropy, a bigram model, the schedule).

Each check compares the learner's function with an independent reference on fresh random
inputs, and when the answer is wrong it tries the usual mistakes (targets equal to the inputs,
log-softmax over the wrong axis, a warm-up that starts at 0, ...) to say which one it is.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from olm_edu.grading import Check, exercise
from olm_edu.data import get_batch as library_get_batch
from olm_edu.train import lr_at, next_token_loss

_BUILTIN_CROSS_ENTROPY = (
    "torch.nn.functional.cross_entropy",
    "torch.nn.functional.nll_loss",
    "torch.nn.functional.log_softmax",
    "torch.log_softmax",
    "torch.Tensor.log_softmax",
    "torch.special.log_softmax",
    "torch.logsumexp",
    "torch.Tensor.logsumexp",
    "torch.special.logsumexp",
)


# ---------------------------------------------------------------------------
# Exercise 1 — batches
# ---------------------------------------------------------------------------

BatchFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _call_batch(check: Check, fn: BatchFn, data: torch.Tensor, batch_size: int, block_size: int, seed: int):
    call = f"get_batch(data of length {len(data)}, batch_size={batch_size}, block_size={block_size}, generator)"
    result = check.call(fn, data, batch_size, block_size, generator=torch.Generator().manual_seed(seed), what=call,
                        hint="every window must fit: a start s needs s + block_size <= len(data) - 1 for its targets, "
                        "so draw s with torch.randint(len(data) - block_size, ...)")
    check.expect(
        isinstance(result, tuple) and len(result) == 2 and all(isinstance(t, torch.Tensor) for t in result),
        f"{call} should return a tuple (inputs, targets) of two tensors, got {type(result).__name__}",
    )
    inputs, targets = result
    for name, tensor in (("inputs", inputs), ("targets", targets)):
        check.expect(
            tuple(tensor.shape) == (batch_size, block_size),
            f"{call}: {name} should have shape (batch_size, block_size) = {(batch_size, block_size)}, "
            f"got {tuple(tensor.shape)}",
        )
        check.expect(tensor.dtype == torch.long, f"{call}: {name} should hold int64 token ids, got {tensor.dtype}")
    return call, inputs, targets


def _windows_ok(check: Check, call: str, data: torch.Tensor, position: torch.Tensor, inputs, targets) -> None:
    """Each input row is data[s : s + T] and each target row data[s + 1 : s + T + 1]."""
    block_size = inputs.shape[1]
    if not torch.isin(inputs, data).all():
        check.fail(f"{call}: inputs hold values that are not in data. Hint: the inputs are token ids copied from "
                   "data, data[s : s + block_size], not positions")
    for row in range(inputs.shape[0]):
        starts = position[inputs[row, 0]].item()
        expected_inputs = data[starts : starts + block_size]
        if len(expected_inputs) < block_size or not torch.equal(inputs[row], expected_inputs):
            check.fail(
                f"{call}: row {row} of inputs is not a contiguous window of data. Hint: inputs[b] is "
                "data[s : s + block_size] for a random start s"
            )
        expected_targets = data[starts + 1 : starts + block_size + 1]
        if torch.equal(targets[row], inputs[row]):
            check.fail(
                f"{call}: row {row} of targets equals its inputs, so the model would learn to copy the token it "
                "sees. Hint: each target is the NEXT token: targets[b] = data[s + 1 : s + block_size + 1]"
            )
        if block_size > 1 and torch.equal(targets[row, 1:], inputs[row, :-1]):
            check.fail(
                f"{call}: row {row} of targets is shifted the wrong way: it holds the token BEFORE each input. "
                "Hint: targets[b] = data[s + 1 : s + block_size + 1], one step ahead of the inputs"
            )
        if len(expected_targets) < block_size or not torch.equal(targets[row], expected_targets):
            check.fail(
                f"{call}: row {row} of targets should be data[s + 1 : s + block_size + 1] for the start s of its "
                "inputs. Hint: targets[b, t] is the token that follows inputs[b, t]"
            )
    check.passed += 1


@exercise("Exercise 1 — batches of next-token examples", reference=library_get_batch)
def get_batch(check: Check, fn: BatchFn) -> None:
    # Two valid starts only (0 and 1): both must be drawn, and neither may run off the end.
    block_size = 10
    data = torch.arange(block_size + 2) * 3 + 1
    position = torch.empty(int(data.max()) + 1, dtype=torch.long)
    position[data] = torch.arange(len(data))
    call, inputs, targets = _call_batch(check, fn, data, 200, block_size, int(check.randint(0, 2**31 - 1, 1)))
    _windows_ok(check, call, data, position, inputs, targets)
    starts = set(position[inputs[:, 0]].tolist())
    check.expect(
        starts == {0, 1},
        f"{call}: with len(data) = block_size + 2 the valid starts are 0 and 1, but 200 draws gave the starts "
        f"{sorted(starts)}. Hint: the last valid start is len(data) - block_size - 1 (its targets end at the last "
        "token); torch.randint(high, ...) draws from 0 to high - 1",
    )

    cases = [(1000, 8, 16), (300, 4, 1), (50, 3, 49)]
    if check.hidden:
        cases += [(5000, 32, 64), (2, 1, 1), (97, 16, 30)]
    for length, batch_size, block_size in cases:
        data = check.randint(0, 2**30, 1)[0] % 7 + torch.randperm(length, generator=check.generator)  # distinct ids
        position = torch.empty(int(data.max()) + 1, dtype=torch.long)
        position[data] = torch.arange(length)
        original = data.clone()
        seed = int(check.randint(0, 2**31 - 1, 1))
        call, inputs, targets = _call_batch(check, fn, data, batch_size, block_size, seed)
        check.expect(torch.equal(data, original), f"{call} changed `data`; only read from it")
        _windows_ok(check, call, data, position, inputs, targets)
        again = _call_batch(check, fn, data, batch_size, block_size, seed)
        check.expect(
            torch.equal(again[1], inputs) and torch.equal(again[2], targets),
            f"{call}: two generators seeded alike gave different batches. Hint: draw the starts with "
            "torch.randint(..., generator=generator) so a seed reproduces the batch",
        )


# ---------------------------------------------------------------------------
# Exercise 2 — cross-entropy
# ---------------------------------------------------------------------------

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _reference_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _diagnose_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, got: torch.Tensor) -> str:
    """A hint naming the mistake `got` looks like, or a general one."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    picked = log_probs.gather(-1, targets[..., None])[..., 0]  # (B, T)
    B, T = targets.shape
    probabilities = picked.exp()
    wrong_axis = torch.log_softmax(logits.double(), dim=1).gather(-1, targets[..., None])[..., 0]
    suspects = {
        "you return the sum over B*T positions, not the mean. Hint: divide by the number of positions, B * T":
            -picked.sum(),
        "you divided by the batch size B only. Hint: average over every position, all B * T of them":
            -picked.sum() / B,
        "you averaged over the vocabulary axis too. Hint: pick each target's log-probability first, then average "
        "over the B * T positions only": -log_probs.mean(),
        "your log-softmax normalises over the wrong axis (the T axis). Hint: subtract the log-sum-exp over the "
        "vocabulary, the last axis (dim=-1, keepdim=True)": -wrong_axis.mean(),
        "you averaged probabilities, not log-probabilities. Hint: the loss is -log p(target), averaged":
            -probabilities.mean(),
        "the sign is flipped. Hint: the loss is MINUS the mean log-probability of the targets, a positive number":
            picked.mean(),
    }
    if got.dim() == 0 and torch.isfinite(got):
        for message, value in suspects.items():
            if math.isclose(got.item(), value.item(), rel_tol=1e-4, abs_tol=1e-5):
                return message
    return ("log_softmax(z) = z - m - log(sum(exp(z - m))), m the largest logit of each row (over the last axis); "
            "gather each target's log-probability, then take minus the mean over the B * T positions")


@exercise("Exercise 2 — cross-entropy from logits", reference=next_token_loss)
def cross_entropy(check: Check, fn: LossFn) -> None:
    check.forbid(*_BUILTIN_CROSS_ENTROPY, reason="Exercise 2 asks you to write the cross-entropy from exp, log and sum")
    shapes = [(2, 5, 7), (4, 3, 70), (1, 1, 2)] + ([(3, 8, 65), (1, 16, 1000)] if check.hidden else [])
    for B, T, V in shapes:
        logits = check.randn(B, T, V, scale=2.0)
        targets = check.randint(0, V, B, T)
        what = f"cross_entropy of random logits of shape {(B, T, V)}"
        got = check.call(fn, logits.clone(), targets.clone(), what=what)
        if not isinstance(got, torch.Tensor):
            check.fail(f"{what}: expected a torch.Tensor, got {type(got).__name__}. Hint: keep it a tensor "
                       "(no .item()) so that loss.backward() works")
        if got.dim() != 0:
            check.fail(f"{what}: expected a single number (a 0-dim tensor), got shape {tuple(got.shape)}. Hint: "
                       "average over all B * T positions")
        expected = _reference_cross_entropy(logits, targets)
        check.close(got, expected, what=what, atol=1e-5, rtol=1e-5,
                    hint=_diagnose_cross_entropy(logits, targets, got.detach()))

    # Gradients must flow: the loss is what training differentiates.
    logits = check.randn(2, 4, 9)
    targets = check.randint(0, 9, 2, 4)
    _, tracked, gradient = check.call_with_gradient(fn, logits, targets, wrt=0, what="logits that require grad")
    check.expect(tracked and gradient is not None,
                 "your loss does not require grad, so training could not differentiate it. Hint: compute it from "
                 "`logits` with tensor operations only (no .item(), no torch.tensor(...) around a result)")
    reference = logits.detach().requires_grad_()
    (expected_gradient,) = torch.autograd.grad(_reference_cross_entropy(reference, targets), reference)
    check.close(gradient, expected_gradient, what="gradient of your loss with respect to the logits", atol=1e-6)

    # Large logits: exp overflows unless the maximum is subtracted first.
    large = torch.tensor([[[1000.0, 1001.0, 1002.0], [-5.0, 990.0, 3.0]]])
    targets = torch.tensor([[2, 1]])
    check.close(check.call(fn, large, targets, what="logits near 1000"), _reference_cross_entropy(large, targets),
                what="cross_entropy of logits near 1000", atol=1e-4,
                hint="exp(1000) is inf in float32: subtract each row's maximum (over the last axis) before exp")

    # A very unlikely target: its probability underflows to 0, its log-probability must not.
    unlikely = torch.tensor([[[0.0, 0.0, -200.0], [1.0, 2.0, 3.0]]])
    targets = torch.tensor([[2, 0]])
    check.close(check.call(fn, unlikely, targets, what="a target 200 below the largest logit"),
                _reference_cross_entropy(unlikely, targets),
                what="cross_entropy when a target's logit is 200 below the others", atol=1e-4,
                hint="its probability e^-200 underflows to 0 in float32 and log(0) = -inf: compute log-probabilities "
                     "directly, z - m - log(sum(exp(z - m))), instead of taking the log of probabilities")
    # Rows whose logits lie far apart: one maximum over the whole tensor underflows the lower rows.
    far_apart = torch.tensor([[[0.0, 1.0, 2.0], [200.0, 201.0, 199.0]], [[-150.0, -149.0, -152.0], [5.0, 4.0, 6.0]]])
    targets = torch.tensor([[0, 1], [2, 2]])
    check.close(check.call(fn, far_apart.clone(), targets, what="rows whose largest logits are 200 apart"),
                _reference_cross_entropy(far_apart, targets),
                what="cross_entropy of rows whose largest logits are 200 apart", atol=1e-4,
                hint="subtract each row's own maximum (max over the last axis, keepdim=True), not one maximum over "
                     "the whole tensor: exp(-200) underflows to 0 in float32, so a row far below the global maximum "
                     "gets log(0) = -inf")
    if check.hidden:  # more values, at the exercise's float32 tolerance: upcasting or not is the learner's choice
        doubles = check.randn(2, 3, 11, dtype=torch.float64)
        targets = check.randint(0, 11, 2, 3)
        got = check.call(fn, doubles, targets, what="float64 logits")
        check.close(got, _reference_cross_entropy(doubles, targets), what="cross_entropy of float64 logits",
                    atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# Exercise 3 — the bigram model
# ---------------------------------------------------------------------------

BigramFn = Callable[..., torch.Tensor]


def _reference_bigram(data: torch.Tensor, vocab_size: int, smoothing: float) -> torch.Tensor:
    """(V, V) float64: log((count(a -> b) + smoothing) / (count(a -> anything) + smoothing * V))."""
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    for current, following in zip(data[:-1].tolist(), data[1:].tolist()):
        counts[current, following] += 1
    counts += smoothing
    return (counts / counts.sum(dim=1, keepdim=True)).log()


def _random_stream(check: Check, length: int, vocab_size: int) -> torch.Tensor:
    """Token ids with some structure (so pair counts differ from row to row), as int64."""
    favourite = check.randint(0, vocab_size, vocab_size)
    stream = [int(check.randint(0, vocab_size, 1))]
    for coin in torch.rand(length - 1, generator=check.generator).tolist():
        stream.append(int(favourite[stream[-1]]) if coin < 0.5 else int(check.randint(0, vocab_size, 1)))
    return torch.tensor(stream)


def reference_bigram_log_probs(data: torch.Tensor, vocab_size: int, smoothing: float = 1.0) -> torch.Tensor:
    """Exercise 3's table, counted with torch.bincount (fast enough for millions of pairs): (V, V) float64."""
    counts = torch.bincount(data[:-1] * vocab_size + data[1:], minlength=vocab_size * vocab_size)
    smoothed = counts.view(vocab_size, vocab_size).double() + smoothing
    return (smoothed / smoothed.sum(dim=1, keepdim=True)).log()


@exercise("Exercise 3 — a bigram model", reference=reference_bigram_log_probs)
def bigram_log_probs(check: Check, fn: BigramFn) -> None:
    cases = [(300, 6, 1.0), (500, 10, 0.1), (40, 8, 1.0)]
    if check.hidden:
        cases += [(2000, 27, 0.5), (2, 3, 1.0)]
    for length, vocab_size, smoothing in cases:
        data = _random_stream(check, length, vocab_size)
        data[data == vocab_size - 1] = 0
        data[-1] = vocab_size - 1  # the last id occurs once, at the end: it is followed by nothing
        call = f"bigram_log_probs(data of length {length}, vocab_size={vocab_size}, smoothing={smoothing})"
        got = check.call(fn, data.clone(), vocab_size, smoothing, what=call)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (vocab_size, vocab_size):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            check.fail(f"{call}: expected a tensor of shape (vocab_size, vocab_size) = {(vocab_size, vocab_size)}, "
                       f"got {shape}")
        got = got.detach().double()
        if torch.isnan(got).any():
            row = int(torch.isnan(got).any(dim=1).nonzero()[0])
            check.fail(f"{call}: row {row} holds nan: token {row} is never followed by anything, so its counts are "
                       "0 / 0. Hint: add `smoothing` to every count before normalising")
        if torch.isneginf(got).any():
            a, b = (int(i) for i in torch.isneginf(got).nonzero()[0])
            check.fail(f"{call}: entry [{a}, {b}] is -inf: the pair ({a}, {b}) never occurs, and log(0) = -inf. Hint: "
                       "add `smoothing` to every count before normalising, so no pair is impossible")
        row_totals = got.exp().sum(dim=1)
        if not torch.allclose(row_totals, torch.ones_like(row_totals), atol=1e-4):
            row = int((row_totals - 1).abs().argmax())
            column_totals = got.exp().sum(dim=0)
            where = ("the columns sum to 1 instead: normalise each row (dim=1), the distribution of what follows "
                     "one token" if torch.allclose(column_totals, torch.ones_like(column_totals), atol=1e-4) else
                     "divide each row's smoothed counts by that row's total, count(a) + smoothing * vocab_size")
            check.fail(f"{call}: row {row} is not a probability distribution: its probabilities sum to "
                       f"{row_totals[row].item():.4f}, not 1. Hint: {where}")
        expected = _reference_bigram(data, vocab_size, smoothing)
        transposed = _reference_bigram(data.flip(0), vocab_size, smoothing)
        seen_once = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
        seen_once[data[:-1], data[1:]] = 1.0  # what `counts[a, b] += 1` with repeated index pairs gives
        seen_once = ((seen_once + smoothing) / (seen_once + smoothing).sum(dim=1, keepdim=True)).log()
        hint = ("row a holds log p(b | a), estimated from the pairs (data[i], data[i + 1]) with `smoothing` added to "
                "every count")
        if torch.allclose(got, transposed, atol=1e-4) and not torch.allclose(got, expected, atol=1e-4):
            hint = ("you counted the pairs the other way round: entry [a, b] is the probability that b comes AFTER a, "
                    "so count (data[i], data[i + 1]) into counts[data[i], data[i + 1]]")
        if torch.allclose(got, seen_once, atol=1e-4) and not torch.allclose(got, expected, atol=1e-4):
            hint = ("each pair was counted at most once: `counts[a, b] += 1` with tensors of indices adds 1 only once "
                    "for a repeated pair. Use counts.index_put_((a, b), ones, accumulate=True), or a Python loop")
        check.close(got, expected, what=call, atol=1e-4, rtol=1e-4, hint=hint)
        last = vocab_size - 1
        check.close(got[last], torch.full((vocab_size,), -math.log(vocab_size), dtype=torch.float64),
                    what=f"{call}, row {last} (a token never followed by anything)", atol=1e-4,
                    hint="with no observed successors, smoothing alone gives the uniform distribution")


# ---------------------------------------------------------------------------
# Exercise 4 — warm-up and cosine decay
# ---------------------------------------------------------------------------

ScheduleFn = Callable[..., float]


def _as_float(check: Check, value: object, what: str) -> float:
    try:
        return float(value)  # a float, a Python int or a one-element tensor
    except (TypeError, ValueError):
        check.fail(f"{what}: expected a number, got {type(value).__name__}")
    raise AssertionError  # unreachable


_WARMUP_HINT = ("the first step must already learn: use max_lr * (step + 1) / warmup_steps, which is max_lr / "
                "warmup_steps at step 0 and reaches max_lr at step warmup_steps - 1")
_DECAY_HINT = ("the cosine runs from max_lr at step warmup_steps down to min_lr at step total_steps: "
               "min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2 with "
               "progress = (step - warmup_steps) / (total_steps - warmup_steps), capped at 1")


def _decay_hint(step: int, got: float, config: dict) -> str:
    """Name the mistake when the decay looks like a known wrong formula."""
    max_lr, warmup, total, min_lr = (config[k] for k in ("max_lr", "warmup_steps", "total_steps", "min_lr"))
    progress = (step - warmup) / max(1, total - warmup)
    to_zero = max_lr * (1 + math.cos(math.pi * min(progress, 1.0))) / 2
    if min_lr > 0 and math.isclose(got, to_zero, rel_tol=1e-6, abs_tol=1e-12):
        return "your schedule decays to 0, not to min_lr. Hint: " + _DECAY_HINT
    if progress > 1:
        return "after total_steps the learning rate stays at min_lr: cap progress at 1, or the cosine climbs back up"
    return _DECAY_HINT


def reference_lr_schedule(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float) -> float:
    """olm_edu.train.lr_at with Exercise 4's signature."""
    return lr_at(step, max_lr=max_lr, warmup_steps=warmup_steps, total_steps=total_steps, min_lr=min_lr)


@exercise("Exercise 4 — warm-up and cosine decay", reference=reference_lr_schedule)
def lr_schedule(check: Check, fn: ScheduleFn) -> None:
    configs = [dict(max_lr=1e-3, warmup_steps=10, total_steps=100, min_lr=1e-4),
               dict(max_lr=6e-3, warmup_steps=4, total_steps=38, min_lr=6e-4),
               dict(max_lr=2e-3, warmup_steps=0, total_steps=50, min_lr=2e-5)]  # "no warm-up at all"
    if check.hidden:
        configs += [dict(max_lr=3e-4, warmup_steps=1, total_steps=2, min_lr=0.0),
                    dict(max_lr=5e-3, warmup_steps=0, total_steps=7, min_lr=0.0),
                    dict(max_lr=1.0, warmup_steps=25, total_steps=1001, min_lr=0.25)]
    check.forbid("olm_edu.train.lr_at", reason="Exercise 4 asks you to write the schedule yourself")
    for config in configs:
        warmup, total = config["warmup_steps"], config["total_steps"]
        shown = ", ".join(f"{key}={value:g}" for key, value in config.items())
        # The steps where mistakes show first, then every step.
        key_steps = []
        if warmup:
            key_steps = [(0, "the first warm-up step"), (warmup - 1, "the last warm-up step reaches max_lr")]
        key_steps += [(warmup, "the decay starts from max_lr"),
                      (warmup + (total - warmup) // 2, "half-way through the decay the learning rate is "
                       "(max_lr + min_lr) / 2"),
                      (total, "the schedule ends at min_lr"), (total + 7, "after total_steps it stays at min_lr")]
        key_steps += [(step, "") for step in range(total + 3)]
        for step, rule in key_steps:
            what = f"lr_schedule({step}, {shown})"
            got = _as_float(check, check.call(fn, step, what=what, **config), what)
            want = lr_at(step, **config)
            if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12):
                check.passed += 1
                continue
            if step < warmup:
                hint = ("a learning rate of 0 wastes the first step. Hint: " if got == 0 else "") + _WARMUP_HINT
            else:
                hint = _decay_hint(step, got, config)
            check.fail(f"{what} should be {want:.6g}{f' ({rule})' if rule else ''}, got {got:.6g}. Hint: {hint}")
