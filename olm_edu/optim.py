"""A 2025 training recipe: Muon for the matrices, AdamW for the rest, warm-up–stable–decay.

Muon (momentum, orthogonalised)
    For a weight matrix W (out, in), SGD with momentum steps along the momentum buffer M. Its
    singular values are very uneven: a few directions dominate every update and the rest barely
    move. Muon replaces M by the nearest semi-orthogonal matrix, U V^T where M = U S V^T, so
    every direction of the update gets the same size:

        M <- mu M + G;   U V^T ~= NS(G + mu M)  (Nesterov);   W <- W - lr * wd * W - lr' * U V^T

    The SVD is too slow for every step, so `newton_schulz` approximates U V^T with five steps
    of an odd matrix polynomial X <- a X + b (X X^T) X + c (X X^T)^2 X, after scaling X so that
    its largest singular value is at most 1 (dividing by the Frobenius norm is enough). Each
    step pushes every singular value towards 1 and leaves U and V alone. The coefficients
    (3.4445, -4.7750, 2.0315) are Keller Jordan's: they push small singular values up fast and
    settle near, not at, 1 (about 0.7 to 1.2), which trains as well as the exact U V^T.

    torch.optim.Muon implements it; `Muon` here is the same optimiser with one more option, the
    dtype of the Newton–Schulz iteration: torch runs it in bfloat16, which is fast on GPUs but
    slow on CPUs for the small matrices of the course (each bfloat16 matmul costs milliseconds
    there), so the course runs it in float32 on the CPU. With ns_dtype="bfloat16" it equals
    torch.optim.Muon bit for bit (tests/test_optim.py). `lr' = lr * 0.2 * sqrt(max(out, in))` ("match_rms_adamw",
    Moonshot's Moonlight) gives the update the RMS of an AdamW update, so Muon can share AdamW's
    learning rate and weight decay. Muon is for hidden matrices only: the embeddings (a lookup,
    not a linear map of the input), the output head, the norms' gains and the biases stay on
    AdamW (`muon_split`).

Warm-up–stable–decay (WSD, `wsd_lr`)
    Cosine decay ties the whole schedule to a run length chosen in advance. WSD warms up, holds
    max_lr flat for most of the run, then decays linearly to min_lr over the last
    `decay_fraction` of the steps. The flat part can be extended at will (a checkpoint from
    it can be decayed at any time), and the short final decay gives most of the loss drop that
    a cosine gives over the whole run.

    optimizer = make_optimizer(model, "muon", lr=2e-2, weight_decay=0.1)
    for step in range(total):
        set_lr(optimizer, wsd_lr(step, max_lr=2e-2, warmup_steps=50, total_steps=total))
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from olm_edu.choices import check_choice

__all__ = [
    "MUON_COEFFICIENTS",
    "Muon",
    "OPTIMIZERS",
    "SCHEDULES",
    "Optimizers",
    "lr_at_step",
    "make_optimizer",
    "muon_split",
    "newton_schulz",
    "set_lr",
    "wsd_lr",
]

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


# ---------------------------------------------------------------------------
# Newton–Schulz orthogonalisation
# ---------------------------------------------------------------------------


def newton_schulz(
    matrix: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Approximately U V^T for matrix = U S V^T: every singular value pushed towards 1.

    Shapes: (m, n) -> (m, n). The iteration runs on the wide orientation (rows <= columns, so
    X X^T is the small Gram matrix) in `dtype` (bfloat16 as in torch.optim.Muon; float32 or
    float64 to study the maths). X <- X / ||X||_F, then `steps` times
        A = X X^T;   X <- a X + (b A + c A A) X.
    """
    a, b, c = coefficients
    x = matrix.to(dtype)
    tall = matrix.shape[0] > matrix.shape[1]
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T  # (m, m)
        polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A A, one rounding
        x = torch.addmm(x, polynomial, x, beta=a)  # a X + (b A + c A A) X
    return x.T if tall else x


_NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def _muon_lr_scale(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix learning-rate factor for a weight (out, in)."""
    rows, columns = shape[:2]
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1.0, rows / columns))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, columns))
    return 1.0


class Muon(torch.optim.Muon):
    """torch.optim.Muon with the dtype of its Newton–Schulz iteration as an option.

    For each matrix W with gradient G and momentum buffer M (all (out, in)):
        M <- mu M + (1 - mu) G                      (an exponential average, as torch keeps it)
        U  = G + mu (M - G) if nesterov else M      (lerp(G, M, mu))
        O  = newton_schulz(U) in ns_dtype
        W <- W (1 - lr wd) - lr * scale(W) * O      (scale: see `adjust_lr_fn` of torch.optim.Muon)
    ns_dtype: "bfloat16" (torch's choice) or "float32" (faster on CPUs for small matrices).
    """

    def __init__(self, params, *, ns_dtype: str = "bfloat16", **kwargs):
        check_choice("ns_dtype", ns_dtype, tuple(_NS_DTYPES))
        super().__init__(params, **kwargs)
        self.defaults["ns_dtype"] = ns_dtype
        for group in self.param_groups:
            group.setdefault("ns_dtype", ns_dtype)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                gradient = parameter.grad
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(gradient)
                buffer = state["momentum_buffer"]
                buffer.lerp_(gradient, 1 - momentum)
                update = gradient.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = newton_schulz(update, group["ns_steps"], group["ns_coefficients"], group["eps"],
                                       dtype=_NS_DTYPES[group["ns_dtype"]])
                parameter.mul_(1 - lr * group["weight_decay"])
                parameter.add_(update, alpha=-lr * _muon_lr_scale(group["adjust_lr_fn"], parameter.shape))
        return loss


# ---------------------------------------------------------------------------
# Which parameters go to Muon, and the pair of optimisers
# ---------------------------------------------------------------------------


def muon_split(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(Muon's parameters, AdamW's parameters), each a list of (name, parameter).

    Muon: the 2-D weights of the linear layers inside the blocks (model.layers, or any module
    that is not an embedding or the output head). AdamW: embeddings (token and position), the
    output head, every 1-D tensor (norm gains, biases) and any parameter of 3 or more dimensions
    (fused experts). A tied embedding appears once, on AdamW.
    """
    embedding_ids = {
        id(parameter)
        for module in model.modules()
        if isinstance(module, nn.Embedding) or type(module).__name__ in ("OutputHead", "LearnedPositions")
        for parameter in module.parameters(recurse=False)
    }
    muon, adamw = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_head = name.split(".")[0] in ("head", "lm_head")
        if parameter.dim() == 2 and id(parameter) not in embedding_ids and not is_head:
            muon.append((name, parameter))
        else:
            adamw.append((name, parameter))
    return muon, adamw


class Optimizers:
    """Several optimisers stepped as one: `step`, `zero_grad`, `param_groups` over all of them.

    Each group keeps its peak learning rate in group["max_lr"]; `set_lr(optimizers, factor)`
    sets every group's lr to max_lr * factor. `optimizers` is the list, e.g. [Muon, AdamW], in
    the form torch.distributed.checkpoint's state-dict helpers accept.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = [optimizer for optimizer in optimizers if optimizer.param_groups]

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def __iter__(self) -> Iterator[torch.optim.Optimizer]:
        return iter(self.optimizers)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def __repr__(self) -> str:
        return "Optimizers(" + ", ".join(type(o).__name__ for o in self.optimizers) + ")"


def make_optimizer(
    model: nn.Module,
    optimizer: str = "adamw",
    *,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    muon_lr: float | None = None,
    muon_momentum: float = 0.95,
    ns_dtype: str | None = None,
) -> Optimizers:
    """The optimiser(s) of a recipe, as one `Optimizers`.

    "adamw": AdamW over every parameter, matrices and embeddings decayed, vectors not (lesson
    06's `olm_edu.train.weight_decay_groups`). "muon": torch.optim.Muon (Nesterov, 5
    Newton–Schulz steps, "match_rms_adamw" scaling) at `muon_lr` (default `lr`) on the hidden
    matrices, AdamW at `lr` on the rest (embeddings and head decayed, vectors not).
    ns_dtype: Muon's Newton–Schulz dtype; default bfloat16 on GPUs, float32 elsewhere.
    """
    from olm_edu.train import weight_decay_groups

    check_choice("optimizer", optimizer, OPTIMIZERS)
    if optimizer == "adamw":
        groups = weight_decay_groups(model, weight_decay)
        for group in groups:
            group["max_lr"] = lr
        return Optimizers(torch.optim.AdamW(groups, lr=lr, betas=betas))
    muon_params, adamw_params = muon_split(model)
    muon_lr = lr if muon_lr is None else muon_lr
    if ns_dtype is None:
        on_gpu = bool(muon_params) and muon_params[0][1].device.type == "cuda"
        ns_dtype = "bfloat16" if on_gpu else "float32"
    muon = Muon([p for _, p in muon_params], lr=muon_lr, weight_decay=weight_decay, momentum=muon_momentum,
                adjust_lr_fn="match_rms_adamw", ns_dtype=ns_dtype)
    muon.param_groups[0]["max_lr"] = muon_lr
    groups = [
        {"params": [p for _, p in adamw_params if p.dim() >= 2], "weight_decay": weight_decay, "max_lr": lr},
        {"params": [p for _, p in adamw_params if p.dim() < 2], "weight_decay": 0.0, "max_lr": lr},
    ]
    adamw = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas)
    return Optimizers(muon, adamw)


def set_lr(optimizers: Optimizers, factor: float) -> None:
    """Every group's lr = its max_lr * factor (the schedule gives the factor)."""
    for group in optimizers.param_groups:
        group["lr"] = group["max_lr"] * factor


# ---------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------


def wsd_lr(
    step: int,
    *,
    max_lr: float,
    warmup_steps: int,
    total_steps: int,
    decay_fraction: float = 0.2,
    min_lr: float = 0.0,
) -> float:
    """Warm-up–stable–decay learning rate at `step` (counted from 0).

    warm-up, step < warmup_steps:             max_lr * (step + 1) / warmup_steps
    stable, up to decay_start:                max_lr
    decay, decay_start <= step < total_steps: linear from max_lr to min_lr,
        decay_start = total_steps - round(decay_fraction * total_steps);
        lr = max_lr + (min_lr - max_lr) * (step - decay_start + 1) / decay_steps
        (the last step, total_steps - 1, trains at min_lr)
    from total_steps on:                      min_lr
    """
    if not 0.0 <= decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction={decay_fraction} must be in [0, 1]")
    decay_steps = round(decay_fraction * total_steps)
    decay_start = total_steps - decay_steps
    if not 0 <= warmup_steps <= decay_start:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps - decay steps = {decay_start}]")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step < decay_start:
        return max_lr
    if step >= total_steps:
        return min_lr
    return max_lr + (min_lr - max_lr) * (step - decay_start + 1) / decay_steps


def lr_at_step(
    schedule: str, step: int, *, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float,
    decay_fraction: float = 0.2,
) -> float:
    """The learning rate of the named schedule: "cosine" (lesson 06's `lr_at`) or "wsd" (`wsd_lr`)."""
    from olm_edu.train import lr_at

    check_choice("schedule", schedule, SCHEDULES)
    if schedule == "cosine":
        return lr_at(step, max_lr=max_lr, warmup_steps=warmup_steps, total_steps=total_steps, min_lr=min_lr)
    return wsd_lr(step, max_lr=max_lr, warmup_steps=warmup_steps, total_steps=total_steps,
                  decay_fraction=decay_fraction, min_lr=min_lr)


