"""Checks for lesson 26 — A 2025 training recipe (Newton–Schulz, warm-up–stable–decay, the Muon/AdamW split).

newton_schulz
    References: the quintic iteration written here in float64 (X / ||X||_F, then five times
    X <- a X + (b A + c A A) X with A = X X^T), and torch.optim.Muon itself: one step with no
    momentum, no weight decay and lr = 1 moves a weight by -sqrt(max(1, out/in)) * NS(G) computed
    in bfloat16, which the learner's float32 answer must match to bfloat16's precision (Frobenius). Mistakes:
    no normalisation, the spectral instead of the Frobenius norm, the coefficients in the wrong
    order, one step too few or too many.

wsd_schedule
    Reference: `olm_edu.optim.wsd_lr`, checked against torch's LinearLR / ConstantLR chain in
    tests/test_optim.py. Mistakes: a cosine decay, the decay one step late (min_lr reached after
    the last step), the decay over decay_fraction of the steps after warm-up.

split_parameters
    Reference: `olm_edu.optim.muon_split` on models with tied and untied heads, learned and
    rotary positions, QK-norm. Mistakes: the embedding or the output head given to Muon, the
    norms and biases given to Muon, everything 2-D given to Muon.

Tolerances: Newton–Schulz atol=1e-4, rtol=1e-4 against float64 (five steps of float32 matmuls)
and a relative Frobenius error below 6% against torch's bfloat16 update (its five bfloat16 steps
drift by up to ~3%; a wrong step count is off by ~30%); learning rates rel 1e-9.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from olm_edu.grading import Check, exercise, shared_module
from olm_edu.optim import MUON_COEFFICIENTS, muon_split, wsd_lr

__all__ = ["newton_schulz", "split_parameters", "wsd_schedule"]

NS_TOL = dict(atol=1e-4, rtol=1e-4)
# torch runs the iteration in bfloat16: measured ||torch - float64|| / ||float64|| <= 0.03 on these
# shapes, while one step too few or too many is off by ~0.3
TORCH_RELATIVE_TOL = 0.06


def _iterate(matrix: torch.Tensor, steps: int = 5, coefficients=MUON_COEFFICIENTS, *, norm: str = "fro") -> torch.Tensor:
    """The quintic iteration in float64; norm "fro" (correct), "spectral" or "none" (mistakes)."""
    a, b, c = coefficients
    x = matrix.double()
    if norm == "fro":
        x = x / x.norm()
    elif norm == "spectral":
        x = x / torch.linalg.matrix_norm(x, ord=2)
    for _ in range(steps):
        gram = x @ x.T  # (m, m)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


# ---------------------------------------------------------------------------
# Exercise 1 — a Newton–Schulz orthogonalisation
# ---------------------------------------------------------------------------


@exercise("Exercise 1 — Newton–Schulz orthogonalisation")
def newton_schulz(check: Check, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """fn(G) -> float32 (m, n): five quintic Newton–Schulz steps on G / ||G||_F."""
    shapes = [(8, 8), (6, 10), (12, 5)] + ([(32, 32), (1, 7), (64, 16)] if check.hidden else [])
    for shape in shapes:
        gradient = check.randn(*shape) * 3
        what = f"newton_schulz of a {shape} matrix"
        got = check.call(fn, gradient.clone(), what=what)
        mistakes = {
            "the result blows up: divide G by its Frobenius norm first, so every singular value is <= 1":
                _iterate(gradient, norm="none"),
            "divide by the Frobenius norm (G.norm()), as Muon does, not by the largest singular value":
                _iterate(gradient, norm="spectral"),
            "the coefficients are (a, b, c) = (3.4445, -4.7750, 2.0315), in that order: X <- aX + bAX + cAAX":
                _iterate(gradient, coefficients=MUON_COEFFICIENTS[::-1]),
            "four steps: Muon takes five": _iterate(gradient, steps=4),
            "six steps: Muon takes five": _iterate(gradient, steps=6),
        }
        if isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
            check.fail(f"{what}: the result has NaN or inf: divide G by its norm before iterating")
        check.close_or_diagnose(got, _iterate(gradient), mistakes, what=what, **NS_TOL)
        check.expect(got.dtype == torch.float32, f"{what}: expected float32, got {got.dtype}")
        # against torch.optim.Muon: one step with lr 1, no momentum, no decay
        weight = nn.Parameter(torch.zeros(*shape))
        weight.grad = gradient.clone()
        torch.optim.Muon([weight], lr=1.0, weight_decay=0.0, momentum=0.0, nesterov=False).step()
        update = -weight.detach() / math.sqrt(max(1.0, shape[0] / shape[1]))
        relative = ((got.double() - update.double()).norm() / update.double().norm()).item()
        check.expect(relative < TORCH_RELATIVE_TOL,
                     f"{what}: differs from torch.optim.Muon's update by {relative:.1%} (Frobenius norm); "
                     f"bfloat16 rounding explains up to {TORCH_RELATIVE_TOL:.0%}")


# ---------------------------------------------------------------------------
# Exercise 2 — warm-up–stable–decay
# ---------------------------------------------------------------------------


def _cosine_tail(step, max_lr, warmup_steps, total_steps, decay_fraction, min_lr):
    decay_steps = round(decay_fraction * total_steps)
    start = total_steps - decay_steps
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step < start:
        return max_lr
    progress = min(1.0, (step - start + 1) / decay_steps)
    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2


def _late_by_one(step, max_lr, warmup_steps, total_steps, decay_fraction, min_lr):
    return wsd_lr(step - 1, max_lr=max_lr, warmup_steps=warmup_steps, total_steps=total_steps,
                  decay_fraction=decay_fraction, min_lr=min_lr) if step >= warmup_steps else \
        max_lr * (step + 1) / warmup_steps


@exercise("Exercise 3 — warm-up–stable–decay")
def wsd_schedule(check: Check, fn: Callable[..., float]) -> None:
    """fn(step, max_lr, warmup_steps, total_steps, decay_fraction, min_lr) -> the WSD learning rate."""
    cases = [(3e-3, 10, 100, 0.2, 3e-4), (1.0, 0, 50, 0.5, 0.0), (2e-2, 5, 40, 0.25, 1e-3)]
    if check.hidden:
        cases += [(5e-3, 20, 1000, 0.1, 0.0), (1e-2, 1, 7, 1 / 7, 1e-3)]
    for max_lr, warmup, total, fraction, min_lr in cases:
        args = (max_lr, warmup, total, fraction, min_lr)
        got = [check.call(fn, step, *args, what=f"wsd_schedule({step}, {max_lr}, {warmup}, {total}, {fraction}, "
                                                 f"{min_lr})") for step in range(total + 3)]
        expected = [wsd_lr(step, max_lr=max_lr, warmup_steps=warmup, total_steps=total, decay_fraction=fraction,
                           min_lr=min_lr) for step in range(total + 3)]
        for step, (mine, reference) in enumerate(zip(got, expected)):
            if isinstance(mine, torch.Tensor):
                mine = mine.item()
            if not isinstance(mine, (int, float)) or not math.isclose(mine, reference, rel_tol=1e-9, abs_tol=1e-15):
                what = f"max_lr={max_lr}, warmup_steps={warmup}, total_steps={total}, decay_fraction={fraction}, " \
                       f"min_lr={min_lr}: step {step}"
                for message, wrong in {
                    "the decay is linear in WSD, not a cosine": _cosine_tail,
                    "the decay starts one step late: the last step (total_steps - 1) must already train at min_lr":
                        _late_by_one,
                }.items():
                    if isinstance(mine, (int, float)) and math.isclose(mine, wrong(step, *args), rel_tol=1e-9):
                        check.fail(f"{what}: {message}")
                check.fail(f"{what}: expected {reference:.6g}, got {mine!r}")
            check.passed += 1


# ---------------------------------------------------------------------------
# Exercise 3 — which parameters Muon gets
# ---------------------------------------------------------------------------


def _models(hidden: bool) -> list[tuple[str, nn.Module]]:
    from olm_edu.models import ModelConfig, build

    base = ModelConfig(vocab_size=17, max_seq_len=8, embed_dim=16, num_layers=2, num_heads=2, hidden_dim=32)
    variants = [("GPT-2 style (tied head, learned positions)", base),
                ("Llama style (untied head, RoPE, RMSNorm, QK-norm)",
                 base.replace(tie_embeddings=False, position="rope", norm="rmsnorm", norm_bias=False, qk_norm=True,
                              qkv_bias=False, attn_out_bias=False, ffn_bias=False, ffn="glu", activation="silu"))]
    if hidden:
        variants.append(("one layer, untied, learned positions", base.replace(num_layers=1, tie_embeddings=False)))
    return [(name, shared_module(build, cfg)) for name, cfg in variants]


@exercise("Exercise 2 — Muon for the matrices, AdamW for the rest")
def split_parameters(check: Check, fn: Callable[[nn.Module], tuple[list, list]]) -> None:
    """fn(model) -> (names for Muon, names for AdamW)."""
    for label, model in _models(check.hidden):
        muon, adamw = muon_split(model)
        expected_muon, expected_adamw = sorted(n for n, _ in muon), sorted(n for n, _ in adamw)
        got = check.call(fn, model, what=f"split_parameters on a {label} model")
        check.expect(isinstance(got, tuple) and len(got) == 2,
                     f"{label}: expected a pair (muon names, adamw names), got {type(got).__name__}")
        got_muon, got_adamw = (sorted(str(n) for n in part) for part in got)
        extra = set(got_muon) - set(expected_muon)
        if any(n.startswith("embed") or n.startswith("positions") for n in extra):
            check.fail(f"{label}: an embedding went to Muon ({sorted(extra)[0]}): a lookup table is not a linear map "
                       "of its input; keep it on AdamW")
        if any(n.startswith("head") for n in extra):
            check.fail(f"{label}: the output head went to Muon: it stays on AdamW")
        if any(n.endswith("bias") or "norm" in n for n in extra):
            check.fail(f"{label}: a bias or a norm gain went to Muon ({sorted(extra)[0]}): Muon is for matrices")
        missing = set(expected_muon) - set(got_muon)
        if missing:
            check.fail(f"{label}: {sorted(missing)[0]} is a hidden matrix and belongs to Muon")
        check.equal(got_muon, expected_muon, what=f"{label}: Muon's parameters")
        check.equal(got_adamw, expected_adamw, what=f"{label}: AdamW's parameters (each parameter once)")
