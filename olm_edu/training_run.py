"""`olm-edu train`: a training run from the command line, on one process or many.

    olm-edu train --steps 1000                                  # lesson 06's model on Shakespeare
    olm-edu train --optimizer muon --schedule wsd --lr 1e-2     # lesson 26's recipe
    torchrun --nproc_per_node 2 -m olm_edu.train --parallel ddp --steps 200
    olm-edu train --preset Qwen3-0.6B --set num_layers=2 embed_dim=256 --data tokens.npy
    olm-edu train --resume runs/train/step-000500              # continue, bit for bit

One optimiser step, on every rank:
    1. the learning rate from the schedule (cosine or warm-up–stable–decay, `olm_edu.optim`);
    2. the global batch (batch_size rows of block_size tokens) from the seeded generator, the same
       on every rank; this rank's slice of it (`olm_edu.distributed.rank_slice`), cut into
       `grad_accum` micro-batches;
    3. for each micro-batch, under autocast when --dtype bf16: forward, loss (+ z-loss, + the MoE
       aux loss) / grad_accum, backward; gradients add up, and only the last micro-batch
       synchronises them across ranks (DDP's all-reduce, FSDP's reduce-scatter);
    4. clip the global gradient norm, optimiser step(s), MoE router-bias update.
Every eval_every steps the validation loss (fixed batches) is measured; every checkpoint_every
steps and at the end a checkpoint is written (`olm_edu.checkpoint`: safetensors + JSON). Rank 0
writes `metrics.jsonl` (one line per step: mean loss, each rank's own loss, lr, gradient norm).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from olm_edu import checkpoint, distributed
from olm_edu.choices import check_choice
from olm_edu.data import CharVocab, get_batch, shakespeare
from olm_edu.models import ModelConfig, build, from_hf_config, preset
from olm_edu.nn.moe import router_z_loss
from olm_edu.optim import OPTIMIZERS, SCHEDULES, lr_at_step, make_optimizer, set_lr
from olm_edu.train import aux_loss, estimate_loss, next_token_loss

__all__ = ["COURSE_PRESET", "DTYPES", "RunSettings", "load_data", "main", "model_config", "parse_args", "run"]

DTYPES = ("fp32", "bf16")
# Lesson 06's model: GPT-2's architecture at 0.4 M parameters (vocab_size comes from the data).
COURSE_PRESET = "shakespeare-char"
_COURSE_SIZES = dict(max_seq_len=64, embed_dim=128, num_layers=2, num_heads=4, hidden_dim=512)
# Flags that --resume may change: where output goes and how chatty it is, not the maths.
_RESUMABLE = ("resume", "out", "progress", "checkpoint_every", "eval_every")


@dataclass
class RunSettings:
    """Everything that defines a run (the command's flags, one field each)."""

    preset: str = COURSE_PRESET
    config: str | None = None
    set: list[str] = field(default_factory=list)
    data: str = "shakespeare"
    out: str = "runs/train"
    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    block_size: int = 64
    optimizer: str = "adamw"
    lr: float = 5e-3
    muon_lr: float | None = None
    min_lr: float | None = None
    warmup_steps: int | None = None
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0
    z_loss: float = 0.0
    parallel: str = "none"
    dtype: str = "fp32"
    checkpoint_activations: bool = False
    compile: bool = False
    eval_every: int = 100
    eval_batches: int = 20
    checkpoint_every: int | None = None
    resume: str | None = None
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def validate(self, world_size: int) -> None:
        """Refuse bad values and incompatible combinations, naming the flag."""
        check_choice("--optimizer", self.optimizer, OPTIMIZERS)
        check_choice("--schedule", self.schedule, SCHEDULES)
        check_choice("--parallel", self.parallel, distributed.PARALLEL)
        check_choice("--dtype", self.dtype, DTYPES)
        for flag in ("steps", "batch_size", "grad_accum", "block_size", "eval_every", "eval_batches"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')}={getattr(self, flag)} must be >= 1")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every={self.checkpoint_every} must be >= 1")
        if self.lr <= 0 or (self.muon_lr is not None and self.muon_lr <= 0):
            raise ValueError("--lr and --muon-lr must be > 0")
        if self.muon_lr is not None and self.optimizer != "muon":
            raise ValueError("--muon-lr needs --optimizer muon")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"--warmup-steps={self.warmup_steps} must be in [0, --steps={self.steps}]")
        if self.config is not None and self.preset != COURSE_PRESET:
            raise ValueError("give either --preset or --config, not both")
        if world_size > 1 and self.parallel == "none":
            raise ValueError(f"launched on {world_size} processes: choose --parallel ddp or --parallel fsdp")
        if self.parallel != "none" and world_size == 1:
            raise ValueError(f"--parallel {self.parallel} needs several processes: "
                             f"torchrun --nproc_per_node 2 -m olm_edu.train --parallel {self.parallel} ...")
        if self.batch_size % (world_size * self.grad_accum):
            raise ValueError(f"--batch-size={self.batch_size} must be a multiple of processes x --grad-accum "
                             f"= {world_size} x {self.grad_accum}")
        if self.optimizer == "muon" and self.parallel == "fsdp":
            raise ValueError("--optimizer muon does not work with --parallel fsdp: Muon orthogonalises whole "
                             "matrices and FSDP keeps only a shard of each on a rank; use --parallel ddp")
        if self.compile and self.checkpoint_activations:
            raise ValueError("--compile with --checkpoint-activations is not supported here; choose one")


# ---------------------------------------------------------------------------
# Data and model
# ---------------------------------------------------------------------------


def load_data(spec: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train ids (N,), validation ids (M,), vocabulary size) for --data.

    "shakespeare": the course corpus, one token per character (validation = the held-out plays).
    A path to a .npy file (loaded without pickle) or a .bin file of uint16 ids: a token stream
    whose last 10% is the validation split; the vocabulary size is its largest id + 1.
    """
    if spec == "shakespeare":
        train_text, val_text = shakespeare("train"), shakespeare("val")
        vocab = CharVocab.from_text(train_text + val_text)
        return vocab.encode_tensor(train_text), vocab.encode_tensor(val_text), len(vocab)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--data {spec!r}: not 'shakespeare' and no such file")
    if path.suffix == ".npy":
        ids = np.load(path, allow_pickle=False)
    elif path.suffix == ".bin":
        ids = np.fromfile(path, dtype=np.uint16)
    else:
        raise ValueError(f"--data {spec!r}: a token file must be .npy or .bin (uint16)")
    tokens = torch.from_numpy(ids.astype(np.int64).reshape(-1))
    split = int(len(tokens) * 0.9)
    return tokens[:split], tokens[split:], int(tokens.max()) + 1


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def model_config(settings: RunSettings, vocab_size: int) -> ModelConfig:
    """The ModelConfig of --preset or --config, with --set key=value overrides applied.

    With the course corpus the vocabulary is the data's (a character vocabulary), whatever the
    preset says; with a token file the model's vocabulary must cover the data's ids.
    """
    if settings.config is not None:
        cfg = from_hf_config(settings.config)
    elif settings.preset == COURSE_PRESET:
        cfg = preset("gpt2").replace(name=COURSE_PRESET, vocab_size=vocab_size, **_COURSE_SIZES)
    else:
        cfg = preset(settings.preset)
    overrides = {}
    for item in settings.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        if key not in {f.name for f in fields(ModelConfig)}:
            raise ValueError(f"--set {key}=...: ModelConfig has no field {key!r}")
        overrides[key] = _parse_value(value)
    if settings.data == "shakespeare":
        overrides.setdefault("vocab_size", vocab_size)
    cfg = cfg.replace(**overrides)
    if cfg.vocab_size < vocab_size:
        raise ValueError(f"--data has token ids up to {vocab_size - 1} but the model's vocab_size is {cfg.vocab_size}")
    if cfg.max_seq_len < settings.block_size:
        raise ValueError(f"--block-size={settings.block_size} exceeds the model's max_seq_len={cfg.max_seq_len}")
    return cfg


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def _random_states(generator: torch.Generator) -> dict[str, torch.Tensor]:
    states = {"batch_generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _restore_random_states(states: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    generator.set_state(states["batch_generator"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def _sync_gradients(model: torch.nn.Module, parallel: str, sync: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce (DDP) / reduce-scatter (FSDP) on all but the last micro-batch."""
    if parallel == "ddp" and not sync:
        return model.no_sync()
    if parallel == "fsdp":
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def _gradient_norm(model: torch.nn.Module, max_norm: float | None) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf if max_norm is None else max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _resume_settings(settings: RunSettings, given: set[str]) -> RunSettings:
    saved = checkpoint.read_trainer_state(settings.resume)["settings"]
    changed = sorted(name for name in given - set(_RESUMABLE) if getattr(settings, name) != saved.get(name))
    if changed:
        flags = ", ".join("--" + name.replace("_", "-") for name in changed)
        raise ValueError(f"--resume continues the saved run with its own settings; {flags} cannot change")
    kept = {name: getattr(settings, name) for name in _RESUMABLE}
    return RunSettings(**{**saved, **kept})


def run(settings: RunSettings, given: set[str] = frozenset()) -> dict[str, list]:
    """Train as `settings` says, on this process's share; returns the history (on every rank):
    {"steps", "loss", "val_steps", "val_loss", "seconds"}. `given`: the flags set on the command line."""
    if settings.resume is not None:
        settings = _resume_settings(settings, set(given))
    ctx = distributed.setup(settings.device)
    try:
        settings.validate(ctx.world_size)
        return _train(settings, ctx)
    finally:
        distributed.teardown()


def _train(settings: RunSettings, ctx: distributed.Distributed) -> dict[str, list]:
    train_data, val_data, vocab_size = load_data(settings.data)
    cfg = model_config(settings, vocab_size)
    torch.manual_seed(settings.seed)  # the same initial weights on every rank
    model = build(cfg).to(ctx.device)
    if settings.checkpoint_activations:
        distributed.checkpoint_activations(model)
    trained = distributed.wrap(model, settings.parallel, ctx)
    forward = torch.compile(trained) if settings.compile else trained
    optimizers = make_optimizer(model, settings.optimizer, lr=settings.lr, weight_decay=settings.weight_decay,
                                muon_lr=settings.muon_lr)
    generator = torch.Generator().manual_seed(settings.seed)
    start = 0
    if settings.resume is not None:
        start, states, _ = checkpoint.load(settings.resume, model, optimizers)
        _restore_random_states(states, generator)
    warmup = settings.steps // 10 if settings.warmup_steps is None else settings.warmup_steps
    min_lr = settings.lr / 10 if settings.min_lr is None else settings.min_lr
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=settings.dtype == "bf16")
    out = Path(settings.out)
    history: dict[str, list] = {"steps": [], "loss": [], "val_steps": [], "val_loss": [], "seconds": []}
    metrics = None
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        metrics = (out / "metrics.jsonl").open("a" if start else "w")

    def evaluate(step: int) -> None:
        with autocast:
            loss = estimate_loss(forward, val_data, batch_size=settings.batch_size // ctx.world_size,
                                 block_size=settings.block_size, num_batches=settings.eval_batches,
                                 seed=settings.seed + 1, device=ctx.device)
        loss = distributed.all_mean(loss, ctx)
        history["val_steps"].append(step)
        history["val_loss"].append(loss)
        if metrics is not None:
            metrics.write(json.dumps({"step": step, "val_loss": loss}) + "\n")

    def save(step: int) -> None:
        checkpoint.save(out / f"step-{step:06d}", trained, optimizers, step=step,
                        random_states=_random_states(generator), settings=asdict(settings), is_main=ctx.is_main)

    trained.train()
    if start == 0:
        evaluate(0)
    bar = tqdm(range(start, settings.steps), desc="training", disable=not (settings.progress and ctx.is_main),
               initial=start, total=settings.steps)
    elapsed = 0.0
    for step in bar:
        began = time.perf_counter()
        lr_factor = lr_at_step(settings.schedule, step, max_lr=1.0, warmup_steps=warmup,
                               total_steps=settings.steps, min_lr=min_lr / settings.lr,
                               decay_fraction=settings.decay_fraction)
        set_lr(optimizers, lr_factor)
        inputs, targets = get_batch(train_data, settings.batch_size, settings.block_size, generator=generator)
        inputs = distributed.rank_slice(inputs, ctx.rank, ctx.world_size).to(ctx.device)
        targets = distributed.rank_slice(targets, ctx.rank, ctx.world_size).to(ctx.device)
        local_loss = 0.0
        for index, (x, y) in enumerate(zip(inputs.chunk(settings.grad_accum), targets.chunk(settings.grad_accum))):
            with _sync_gradients(trained, settings.parallel, sync=index == settings.grad_accum - 1), autocast:
                logits = forward(x)
                loss = next_token_loss(logits, y)
                total = loss + aux_loss(model)
                if settings.z_loss:
                    total = total + settings.z_loss * router_z_loss(logits.flatten(0, 1).float())
                (total / settings.grad_accum).backward()
            local_loss += loss.item() / settings.grad_accum
        norm = _gradient_norm(trained, settings.grad_clip)
        optimizers.step()
        optimizers.zero_grad(set_to_none=True)
        if hasattr(model, "update_router_biases"):
            model.update_router_biases()
        elapsed += time.perf_counter() - began
        rank_losses = [local_loss]
        if ctx.world_size > 1:
            gathered = torch.zeros(ctx.world_size, dtype=torch.float64, device=ctx.device)
            gathered[ctx.rank] = local_loss
            dist.all_reduce(gathered)
            rank_losses = gathered.tolist()
        mean_loss = sum(rank_losses) / len(rank_losses)
        history["steps"].append(step + 1)
        history["loss"].append(mean_loss)
        history["seconds"].append(elapsed)
        if metrics is not None:
            metrics.write(json.dumps({"step": step + 1, "loss": mean_loss, "rank_losses": rank_losses,
                                      "lr": settings.lr * lr_factor, "grad_norm": norm}) + "\n")
        bar.set_postfix(loss=f"{mean_loss:.3f}", refresh=False)
        done = step + 1
        if done % settings.eval_every == 0 or done == settings.steps:
            evaluate(done)
            bar.set_postfix(loss=f"{mean_loss:.3f}", val=f"{history['val_loss'][-1]:.3f}")
        if (settings.checkpoint_every and done % settings.checkpoint_every == 0) or done == settings.steps:
            save(done)
    bar.close()
    if metrics is not None:
        metrics.close()
    return history


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="olm-edu train", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    d = RunSettings()
    add("--preset", default=d.preset, help=f"a preset name (default {COURSE_PRESET}: lesson 06's model)")
    add("--config", default=None, help="a config.json (Hugging Face) instead of --preset")
    add("--set", nargs="+", default=[], metavar="KEY=VALUE", help="ModelConfig overrides, e.g. num_layers=2")
    add("--data", default=d.data, help="'shakespeare' (default) or a token file (.npy, or .bin of uint16)")
    add("--out", default=d.out, help="folder for metrics.jsonl and checkpoints (default runs/train)")
    add("--steps", type=int, default=d.steps, help="optimiser steps")
    add("--batch-size", type=int, default=d.batch_size, help="global batch: rows per optimiser step, all ranks")
    add("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per step on each rank")
    add("--block-size", type=int, default=d.block_size, help="tokens per row")
    add("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    add("--lr", type=float, default=d.lr, help="peak learning rate (AdamW; Muon too unless --muon-lr)")
    add("--muon-lr", type=float, default=None, help="Muon's peak learning rate")
    add("--min-lr", type=float, default=None, help="final learning rate (default lr / 10)")
    add("--warmup-steps", type=int, default=None, help="default steps // 10")
    add("--schedule", default=d.schedule, choices=SCHEDULES)
    add("--decay-fraction", type=float, default=d.decay_fraction, help="WSD: fraction of steps spent decaying")
    add("--weight-decay", type=float, default=d.weight_decay)
    add("--grad-clip", type=float, default=d.grad_clip, help="global gradient-norm bound; 0 switches it off")
    add("--z-loss", type=float, default=d.z_loss, help="coefficient of the z-loss on the output logits")
    add("--parallel", default=d.parallel, choices=distributed.PARALLEL, help="under torchrun: ddp or fsdp")
    add("--dtype", default=d.dtype, choices=DTYPES, help="bf16: autocast the forward pass to bfloat16")
    add("--checkpoint-activations", action="store_true", help="recompute each block's activations in backward")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--eval-every", type=int, default=d.eval_every)
    add("--eval-batches", type=int, default=d.eval_batches)
    add("--checkpoint-every", type=int, default=None, help="also write a checkpoint every N steps")
    add("--resume", default=None, help="a checkpoint folder (OUT/step-NNNNNN) to continue from")
    add("--seed", type=int, default=d.seed)
    add("--device", default=d.device, help="auto (CUDA, MPS, CPU), or a device name")
    add("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[RunSettings, set[str]]:
    """(settings, the names of the flags given on the command line)."""
    parser = _parser()
    args = parser.parse_args(argv)
    values = vars(args)
    if values["grad_clip"] == 0:
        values["grad_clip"] = None
    given = {name for name, value in values.items() if value != parser.get_default(name)}
    return RunSettings(**values), given


def main(argv: list[str] | None = None) -> int:
    try:
        settings, given = parse_args(argv)
        history = run(settings, given)
    except (ValueError, FileNotFoundError) as error:
        print(f"olm-edu train: error: {error}", file=sys.stderr)
        return 2
    if history["val_loss"] and os.environ.get("RANK", "0") == "0":
        print(f"step {history['steps'][-1] if history['steps'] else 0}: validation loss {history['val_loss'][-1]:.4f}")
    return 0
