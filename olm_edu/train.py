"""Training a language model: the loss, the optimiser, the learning-rate schedule and the loop.

The objective
    A batch is B windows of T tokens from the training stream; the targets are the same windows
    shifted by one token (`olm_edu.data.get_batch`). The model gives logits (B, T, V), and the
    loss is the cross-entropy between each position's predicted distribution and the token that
    really came next, averaged over all B*T positions:

        loss = -1/(B T) * sum_{b,t} log softmax(logits[b, t])[targets[b, t]]      (nats per token)

    exp(loss) is the perplexity: how many tokens the model is, on average, choosing between.

The optimiser: AdamW
    Adam keeps running averages of each parameter's gradient (m) and squared gradient (v) and
    steps by m / (sqrt(v) + eps): every parameter moves about lr per step whatever the scale of
    its gradient. AdamW's weight decay shrinks the weights directly, p -= lr * weight_decay * p,
    instead of adding weight_decay * p to the gradient (where Adam's rescaling would undo it).

    Which parameters decay follows the GPT-2 reproductions (nanoGPT): every tensor with two or
    more dimensions (the weight matrices of the linear layers, the token and position
    embeddings; with tied embeddings the token embedding is also the output matrix) decays; the
    vectors (biases, the gains and biases of the norms) do not. Decay keeps the matrices from
    growing without need; pulling a norm's gain or a bias towards 0 has no such reason and only
    fights the fit. See `weight_decay_groups`.

The learning-rate schedule: linear warm-up, then cosine decay (`lr_at`)
    Adam's running averages start empty, so the first updates are badly scaled; warming the
    learning rate up from near 0 to max_lr over `warmup_steps` steps avoids an early blow-up.
    Then a half cosine brings it down to min_lr at `total_steps`: large steps early to make
    progress, small steps late to settle into a minimum.

Gradient clipping (`clip_gradients`)
    One unlucky batch can produce a huge gradient. If the global norm of all gradients (every
    gradient tensor flattened into one long vector) exceeds grad_clip, every gradient is scaled
    by the same factor so that the norm equals grad_clip: the direction is kept, the step is
    bounded. Same semantics as `torch.nn.utils.clip_grad_norm_`.

The loop (`train`)
        history = train(model, train_data, val_data, steps=2000, batch_size=32, block_size=128,
                        max_lr=2e-3, device="auto", live_plot=True)
        history.val_loss[-1]

    Each step: a random batch, forward, loss, backward, clip, set the learning rate, AdamW step.
    A mixture-of-experts model's `aux_loss()` (load balancing, router z-loss) is added to the
    loss before backward, and its `update_router_biases()` (DeepSeek-V3's aux-loss-free
    balance) runs after every optimiser step; for dense models both are no-ops.
    Every `eval_every` steps (and after the last) the validation loss is measured on the same
    fixed batches each time, so the curve moves only when the model does. A tqdm bar shows the
    loss and the learning rate; in Jupyter, `live_plot=True` redraws a loss plot in place.
    `device="auto"` trains on CUDA, else Apple's MPS, else the CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from olm_edu.data import get_batch

__all__ = [
    "TrainingHistory",
    "LivePlot",
    "aux_loss",
    "clip_gradients",
    "estimate_loss",
    "lr_at",
    "make_optimizer",
    "moving_average",
    "next_token_loss",
    "pick_device",
    "train",
    "weight_decay_groups",
]


# ---------------------------------------------------------------------------
# Device
# ---------------------------------------------------------------------------


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> CUDA if available, else Apple's MPS if available, else CPU; anything else as given."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# ---------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats per token.

    Shapes: logits (B, T, V), targets (B, T) integer -> scalar
    """
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    data: torch.Tensor,
    *,
    batch_size: int,
    block_size: int,
    num_batches: int = 20,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> float:
    """Mean loss of `model` over `num_batches` batches of `data` (N,), in nats per token.

    The batches are drawn with a generator seeded with `seed`: the same seed gives the same
    batches, so successive estimates differ only because the model changed. The model runs in
    eval mode (no dropout) and is put back in the mode it was in.
    """
    device = next(model.parameters()).device if device is None else torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    total = 0.0
    for _ in range(num_batches):
        inputs, targets = get_batch(data, batch_size, block_size, generator=generator, device=device)
        total += next_token_loss(model(inputs), targets).item()
    model.train(was_training)
    return total / num_batches


def aux_loss(model: nn.Module) -> torch.Tensor | float:
    """The auxiliary loss a model asks to have added to the language-modelling loss.

    An `olm_edu` model's `aux_loss()` (the MoE load-balancing and router z-losses, read from the
    forward just run; exactly 0 for dense models); 0.0 for a model without one.
    """
    return model.aux_loss() if hasattr(model, "aux_loss") else 0.0


# ---------------------------------------------------------------------------
# Optimiser, schedule, clipping
# ---------------------------------------------------------------------------


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: tensors with >= 2 dimensions decay, vectors do not.

    Returns [{"params": matrices and embeddings, "weight_decay": weight_decay},
             {"params": biases and norm weights, "weight_decay": 0.0}].
    A tied weight appears once (model.parameters() yields each tensor once).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over `weight_decay_groups(model)`, with GPT-3's betas (0.9, 0.95)."""
    return torch.optim.AdamW(weight_decay_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)


def lr_at(step: int, *, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate at `step` (counted from 0): linear warm-up, then cosine decay to min_lr.

    warm-up, step < warmup_steps:   max_lr * (step + 1) / warmup_steps
        (step 0 already moves the weights; the last warm-up step reaches max_lr)
    decay, warmup_steps <= step:    min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2,
        progress = (step - warmup_steps) / (total_steps - warmup_steps), capped at 1
        (max_lr at the end of warm-up, the mean of the two half-way, min_lr from total_steps on)
    """
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most `max_norm`.

    global norm = sqrt(sum over every gradient tensor g of sum(g**2)). When it exceeds
    max_norm, every gradient is multiplied by max_norm / (norm + 1e-6), as
    `torch.nn.utils.clip_grad_norm_` does. Returns the norm before clipping.
    """
    gradients = [p.grad for p in parameters if p.grad is not None]
    if not gradients:
        return 0.0
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in gradients]))
    scale = max_norm / (norm + 1e-6)
    if scale < 1:
        for gradient in gradients:
            gradient.mul_(scale.to(gradient.dtype))
    return norm.item()


# ---------------------------------------------------------------------------
# Live plot
# ---------------------------------------------------------------------------


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Colab), False in a script or a terminal IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and ("IPKernelApp" in shell.config or type(shell).__name__ == "ZMQInteractiveShell")


class LivePlot:
    """A loss plot that redraws in place in a Jupyter notebook; a no-op anywhere else.

    plot = LivePlot(); plot.update(history) ... ; the figure stays in the cell's output.
    """

    def __init__(self, title: str = "training a language model", smoothing: int = 20):
        self.title, self.smoothing = title, smoothing
        self.enabled = _in_notebook()
        if not self.enabled:
            return
        import matplotlib.pyplot as plt
        from IPython.display import display

        self.figure, self.ax = plt.subplots(figsize=(7, 3.8))
        plt.close(self.figure)  # shown through `display`, not again by the inline backend
        self.handle = display(self.figure, display_id=True)

    def update(self, history: "TrainingHistory") -> None:
        if not self.enabled:
            return
        ax = self.ax
        ax.clear()
        if history.train_loss:
            ax.plot(history.steps, history.train_loss, color="tab:blue", alpha=0.25, linewidth=0.8)
            ax.plot(history.steps, moving_average(history.train_loss, self.smoothing), color="tab:blue",
                    label="training batches (smoothed)")
        if history.val_loss:
            ax.plot(history.val_steps, history.val_loss, color="tab:orange", marker="o", label="validation")
        ax.set_title(self.title)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats per token)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
        self.handle.update(self.figure)


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at each position (fewer at the start)."""
    averages, running = [], 0.0
    for index, value in enumerate(values):
        running += value
        if index >= window:
            running -= values[index - window]
        averages.append(running / min(index + 1, window))
    return averages


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


@dataclass
class TrainingHistory:
    """What happened during `train`.

    Per step: steps, train_loss (of that step's batch, language modelling only), lr, grad_norm
    (before clipping), aux_loss (what `model.aux_loss()` added to it; 0 for dense models).
    Per evaluation: val_steps (steps completed when measured), val_loss.
    seconds: wall time of the training steps (evaluations excluded); tokens: tokens trained on.
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    aux_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def train(
    model: nn.Module,
    train_data: torch.Tensor,
    val_data: torch.Tensor | None = None,
    *,
    steps: int,
    batch_size: int,
    block_size: int,
    max_lr: float,
    warmup_steps: int | None = None,
    min_lr: float | None = None,
    weight_decay: float = 0.1,
    grad_clip: float | None = 1.0,
    eval_every: int | None = None,
    eval_batches: int = 20,
    seed: int = 0,
    eval_seed: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    live_plot: bool = False,
    optimizer: str = "adamw",
    muon_lr: float | None = None,
    schedule: str = "cosine",
    decay_fraction: float = 0.2,
    z_loss: float = 0.0,
    time_budget: float | None = None,
) -> TrainingHistory:
    """Train `model` (token ids (B, T) -> logits (B, T, V)) on next-token prediction.

    train_data, val_data: 1-D tensors of token ids. Defaults: warmup_steps = steps // 10,
    min_lr = max_lr / 10, eval_every = steps // 10 (validation also runs before the first step
    and after the last). grad_clip=None switches clipping off (the norms are still recorded).
    `seed` fixes the batches (and dropout): the same model, data and seed give the same history.
    The validation batches are drawn with `eval_seed` (default: `seed`); give runs with different
    seeds the same eval_seed to score them all on the same text.
    The model is moved to `device` and trained in place; the returned `TrainingHistory` holds
    the curves.

    Lesson 26's recipe (`olm_edu.optim`): optimizer="muon" (Muon at `muon_lr`, default max_lr,
    on the hidden matrices, AdamW on the rest), schedule="wsd" (warm-up, flat, then a linear
    decay over the last `decay_fraction` of the steps), and `z_loss` (coefficient of the mean
    squared log-partition of the output logits, which keeps them from drifting upwards).

    time_budget (seconds): stop when the training steps (evaluations excluded) have taken this
    much wall time, instead of after `steps` steps: the way to compare recipes whose steps cost
    different amounts (lesson 26's race). The schedule then runs on the clock: its step counter
    is `steps` times the fraction of the budget spent, so the warm-up, the decay and the
    evaluations (`warmup_steps`, `decay_fraction`, `eval_every`, all counted on that grid of
    `steps`) fall at the same fractions of the budget whatever each step costs, and the run ends
    at the end of its decay.
    """
    from olm_edu.optim import lr_at_step, make_optimizer as make_recipe_optimizer

    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget={time_budget} must be a positive number of seconds (or None)")
    warmup_steps = steps // 10 if warmup_steps is None else warmup_steps
    min_lr = max_lr / 10 if min_lr is None else min_lr
    eval_every = max(1, steps // 10) if eval_every is None else eval_every
    device = pick_device(device)
    model.to(device)
    optimizers = make_recipe_optimizer(model, optimizer, lr=max_lr, weight_decay=weight_decay, muon_lr=muon_lr)
    generator = torch.Generator().manual_seed(seed)
    history = TrainingHistory()
    plot = LivePlot() if live_plot else None

    def evaluate(completed: int) -> None:
        if val_data is None:
            return
        loss = estimate_loss(model, val_data, batch_size=batch_size, block_size=block_size,
                             num_batches=eval_batches, seed=seed if eval_seed is None else eval_seed,
                             device=device)
        history.val_steps.append(completed)
        history.val_loss.append(loss)
        if plot is not None:
            plot.update(history)

    with torch.random.fork_rng(devices=None if device.type == "cuda" else []):
        torch.manual_seed(seed)  # dropout, if the model has any
        model.train()
        evaluate(0)
        bar = tqdm(total=steps if time_budget is None else time_budget, desc="training", disable=not progress,
                   unit="step" if time_budget is None else "s")

        def schedule_clock() -> int:
            """Where the schedule is: steps done, or `steps` x the fraction of the time budget spent."""
            if time_budget is None:
                return len(history.steps)
            return min(steps, int(steps * history.seconds / time_budget))

        def finished() -> bool:
            return len(history.steps) == steps if time_budget is None else history.seconds >= time_budget

        step = 0
        while not finished():
            clock = min(schedule_clock(), steps - 1)
            lr = lr_at_step(schedule, clock, max_lr=max_lr, warmup_steps=warmup_steps, total_steps=steps,
                            min_lr=min_lr, decay_fraction=decay_fraction)
            started = time.perf_counter()
            for group in optimizers.param_groups:  # Muon's group may peak at its own muon_lr
                group["lr"] = lr if group["max_lr"] == max_lr else group["max_lr"] * lr / max_lr
            inputs, targets = get_batch(train_data, batch_size, block_size, generator=generator, device=device)
            logits = model(inputs)
            loss = next_token_loss(logits, targets)
            aux = aux_loss(model)  # MoE balancing losses; exactly 0 for a dense model
            if z_loss:
                aux = aux + z_loss * torch.logsumexp(logits.float(), dim=-1).square().mean()
            optimizers.zero_grad(set_to_none=True)
            (loss + aux).backward()
            norm = clip_gradients(model.parameters(), math.inf if grad_clip is None else grad_clip)
            optimizers.step()
            if hasattr(model, "update_router_biases"):
                model.update_router_biases()  # DeepSeek-V3's aux-loss-free balance, once per step
            loss_value = loss.item()
            history.seconds += time.perf_counter() - started
            step += 1
            history.tokens += inputs.numel()
            history.steps.append(step)
            history.train_loss.append(loss_value)
            history.lr.append(lr)
            history.grad_norm.append(norm)
            history.aux_loss.append(aux.item() if torch.is_tensor(aux) else aux)
            bar.update(1 if time_budget is None else min(history.seconds, time_budget) - bar.n)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", refresh=False)
            # evaluate each time the schedule's clock passes a multiple of eval_every, and at the end
            if schedule_clock() // eval_every > clock // eval_every or finished():
                evaluate(step)
                if history.val_loss:
                    bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{history.val_loss[-1]:.3f}", lr=f"{lr:.2e}")
        bar.close()
    return history


if __name__ == "__main__":  # python -m olm_edu.train, or torchrun ... -m olm_edu.train: see olm_edu.training_run
    import sys

    from olm_edu.training_run import main

    sys.exit(main())
