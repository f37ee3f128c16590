"""Benchmark one training step of olm_edu's GPT-2 against transformers' `GPT2LMHeadModel`.

The model: GPT-2 shrunk to 6 layers, 384 wide, 6 heads of 64, hidden 1,536, vocabulary 50,257,
float32, no dropout. One step = forward, cross-entropy loss, backward, AdamW step, timed with
time.perf_counter (per phase too). Both models compute the same loss outside the model
(`F.cross_entropy` on the logits), so only the models' own code differs.

Fairness checks before any timing: the transformers model is built from `to_hf_config(cfg)` and
loaded with `to_hf_state_dict(olm_edu_model)`, so the weights are identical; the first loss
(same batch) must agree to 1e-5, and the script prints the largest loss difference over all
timed steps too (both see the same batches and take the same AdamW steps).

The models take turns after warm-up steps, so a busy machine slows both alike, and the order
turns each round (A B, B A, A B, ...) so that neither always runs first. The table reports
each one's median; on a busy machine the range column widens and the medians mean little.
Extra rows on request (--extra):
  eager        transformers with attn_implementation="eager" (attention written out);
  fused-gelu   transformers sdpa with activation "gelu_pytorch_tanh" (one fused kernel, as
               olm_edu uses) instead of GPT-2's "gelu_new" (a formula of five element-wise ops);
  explicit     olm_edu with implementation="explicit" (the course's line-by-line attention).
--nanogpt PATH adds nanoGPT's `model.py` from a checkout the user provides (it is imported from
there, never copied into this repository), built with the same config (bias=True, dropout 0)
and loaded with the same weights (its Linear layers hold the transposes of GPT-2's Conv1D
weights); its logits come from its own modules (embeddings, blocks, ln_f, lm_head), since its
forward without targets returns the last position only.
--compile adds a torch.compile'd row for every model (compiled once, warm-up excluded).

Run: python benchmarks/train_step.py                 (about 2-3 minutes on 2 cores)
     python benchmarks/train_step.py --quick         (a smoke run, under a minute)
     python benchmarks/train_step.py --extra eager fused-gelu --threads 2
     python benchmarks/train_step.py --nanogpt ~/src/nanoGPT --compile
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import transformers
from torch import nn
from torch.nn import functional as F

from olm_edu.hf import to_hf_state_dict
from olm_edu.models import ModelConfig, build, preset, render_diff, to_hf_config

LOSS_TOLERANCE = 1e-5
EXTRAS = ("eager", "fused-gelu", "explicit")


@dataclass
class Contender:
    """One row of the table: a model, how to get its logits, its optimiser and its timings."""

    name: str
    model: nn.Module
    logits_of: Callable[[torch.Tensor], torch.Tensor]  # ids (B, T) -> logits (B, T, V)
    optimizer: torch.optim.Optimizer
    losses: list[float] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=lambda: {"forward": [], "backward": [], "optimizer": []})

    def step(self, ids: torch.Tensor, targets: torch.Tensor, record: bool) -> float:
        """One training step; returns the loss (timed per phase when `record`)."""
        start = time.perf_counter()
        logits = self.logits_of(ids)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        after_forward = time.perf_counter()
        loss.backward()
        after_backward = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        if record:
            self.phases["forward"].append(after_forward - start)
            self.phases["backward"].append(after_backward - after_forward)
            self.phases["optimizer"].append(end - after_backward)
            self.losses.append(loss.item())
        return loss.item()

    def step_times(self) -> list[float]:
        return [sum(parts) for parts in zip(*self.phases.values())]


def bench_config(seq_len: int) -> ModelConfig:
    """GPT-2's architecture at 6 layers / 384 wide (head_dim 64), no dropout."""
    gpt2 = preset("gpt2")
    return gpt2.replace(name="gpt2-6L-384", num_layers=6, embed_dim=384, num_heads=6, hidden_dim=1536,
                        max_seq_len=max(gpt2.max_seq_len, seq_len), dropout=0.0)


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    """PyTorch's AdamW with its defaults, as a learner would write it (on CPU: one tensor at a time)."""
    return torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)


def olm_edu_contender(cfg: ModelConfig, weights: dict[str, torch.Tensor], implementation: str) -> Contender:
    model = build(cfg, implementation=implementation)
    model.load_state_dict(weights)
    model.train()
    return Contender(f"olm_edu ({implementation})", model, model, adamw(model))


def transformers_contender(cfg: ModelConfig, hf_weights: dict[str, torch.Tensor], attention: str,
                           activation: str | None = None) -> Contender:
    hf_dict = to_hf_config(cfg)
    if activation is not None:
        hf_dict["activation_function"] = activation
    hf_config = transformers.AutoConfig.for_model(**hf_dict)
    model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation=attention,
                                                          dtype=torch.float32)
    incompatible = model.load_state_dict(hf_weights, strict=False)
    if incompatible.unexpected_keys or set(incompatible.missing_keys) - {"lm_head.weight"}:
        raise SystemExit(f"weights do not fit GPT2LMHeadModel: {incompatible}")
    if model.lm_head.weight is not model.transformer.wte.weight:
        raise SystemExit("GPT2LMHeadModel's head is not tied to its embedding; the models would differ")
    model.train()
    name = f"transformers ({attention}{', ' + activation if activation else ''})"
    return Contender(name, model, lambda ids: model(input_ids=ids).logits, adamw(model))


def nanogpt_contender(path: str, cfg: ModelConfig, hf_weights: dict[str, torch.Tensor]) -> Contender:
    """nanoGPT's GPT from PATH/model.py (the user's checkout), with the same weights as the others."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", f"{path}/model.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"--nanogpt {path}: no model.py there")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # torch.compile imports the model's module by name
    spec.loader.exec_module(module)
    config = module.GPTConfig(block_size=cfg.max_seq_len, vocab_size=cfg.vocab_size, n_layer=cfg.num_layers,
                              n_head=cfg.num_heads, n_embd=cfg.embed_dim, dropout=0.0, bias=True)
    model = module.GPT(config)
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    weights = {name: tensor.t() if name.endswith(conv1d) else tensor for name, tensor in hf_weights.items()}
    incompatible = model.load_state_dict(weights, strict=False)
    if incompatible.unexpected_keys or set(incompatible.missing_keys) - {"lm_head.weight"}:
        raise SystemExit(f"weights do not fit nanoGPT's GPT: {incompatible}")
    model.train()
    return Contender("nanoGPT (model.py)", model, _nanogpt_logits(model), adamw(model))


def _nanogpt_logits(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """ids (B, T) -> logits (B, T, V) through nanoGPT's own modules (its forward keeps only the last
    position when no targets are given)."""
    parts = model.transformer

    def logits_of(ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        h = parts.drop(parts.wte(ids) + parts.wpe(positions))
        for block in parts.h:
            h = block(h)
        return model.lm_head(parts.ln_f(h))

    return logits_of


def compiled(contender: Contender) -> Contender:
    """The same model (a deep copy), its logits function under torch.compile, a fresh AdamW."""
    twin = copy.deepcopy(contender)
    model = twin.model
    if contender.name.startswith("olm_edu"):
        logits_of = torch.compile(model)
    elif contender.name.startswith("transformers"):
        forward = torch.compile(model)
        logits_of = lambda ids: forward(input_ids=ids).logits  # noqa: E731
    else:
        logits_of = torch.compile(_nanogpt_logits(model))
    return Contender(contender.name + ", compiled", model, logits_of, adamw(model))


def make_batches(count: int, batch: int, seq_len: int, vocab_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` random (ids, targets) pairs, targets = ids shifted by one. Speed does not depend on the text."""
    generator = torch.Generator().manual_seed(1234)
    tokens = torch.randint(0, vocab_size, (count, batch, seq_len + 1), generator=generator)
    return [(t[:, :-1], t[:, 1:]) for t in tokens]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first (default 1)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help=f"torch threads (default torch's: {torch.get_num_threads()})")
    parser.add_argument("--extra", nargs="*", default=[], choices=EXTRAS, help="extra rows (see the docstring)")
    parser.add_argument("--nanogpt", metavar="PATH", help="a nanoGPT checkout: adds its model.py (not copied)")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row for every model")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 4, seq 128, 3 steps")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.seq, args.steps = 4, 128, 3
    for name in ("steps", "batch", "seq", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)} must be at least 1")
    return args


def print_table(contenders: list[Contender], tokens_per_step: int) -> None:
    reference = statistics.median(contenders[0].step_times())
    print(f"| {'model':<38} | {'forward':>7} | {'backward':>8} | {'AdamW':>6} | {'step (s)':>8} "
          f"| {'range (s)':>11} | {'tokens/s':>8} | {'olm_edu / this':>14} |")
    print(f"|{'-' * 40}|{'-' * 9}|{'-' * 10}|{'-' * 8}|{'-' * 10}|{'-' * 13}|{'-' * 10}|{'-' * 16}|")
    for c in contenders:
        forward, backward, optimizer = (statistics.median(c.phases[p]) for p in ("forward", "backward", "optimizer"))
        times = c.step_times()
        step = statistics.median(times)
        print(f"| {c.name:<38} | {forward:>7.3f} | {backward:>8.3f} | {optimizer:>6.3f} | {step:>8.3f} "
              f"| {min(times):>5.2f}-{max(times):<5.2f} | {tokens_per_step / step:>8.0f} | {step / reference:>13.2f}x |")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = bench_config(args.seq)
    ours = build(cfg)
    weights = {name: tensor.clone() for name, tensor in ours.state_dict().items()}
    hf_weights = to_hf_state_dict(ours)

    contenders = [olm_edu_contender(cfg, weights, "sdpa"), transformers_contender(cfg, hf_weights, "sdpa")]
    if "eager" in args.extra:
        contenders.append(transformers_contender(cfg, hf_weights, "eager"))
    if "fused-gelu" in args.extra:
        contenders.append(transformers_contender(cfg, hf_weights, "sdpa", activation="gelu_pytorch_tanh"))
    if "explicit" in args.extra:
        contenders.append(olm_edu_contender(cfg, weights, "explicit"))
    if args.nanogpt:
        contenders.append(nanogpt_contender(args.nanogpt, cfg, hf_weights))
    if args.compile:
        contenders += [compiled(c) for c in list(contenders)]

    tokens_per_step = args.batch * args.seq
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads, float32, CPU")
    print(f"config {cfg.name}: {ours.num_parameters() / 1e6:.1f}M parameters (tied head), "
          f"activation {cfg.activation}, max_seq_len {cfg.max_seq_len}; the knobs changed from GPT-2:")
    print(render_diff(preset("gpt2"), cfg))
    print(f"batch {args.batch} x seq {args.seq} = {tokens_per_step:,} tokens per step; "
          f"{args.warmup} warm-up + {args.steps} timed steps per model, taking turns in a rotating order; AdamW lr 3e-4\n")

    batches = make_batches(args.warmup + args.steps, args.batch, args.seq, cfg.vocab_size)
    with torch.no_grad():
        ids, targets = batches[0]
        first = [F.cross_entropy(c.logits_of(ids).flatten(0, 1), targets.flatten()).item() for c in contenders]
    worst = max(abs(loss - first[0]) for loss in first)
    print(f"first loss (same weights, same batch): {first[0]:.6f}; largest difference {worst:.1e} "
          f"-> matches to {LOSS_TOLERANCE:g}: {worst <= LOSS_TOLERANCE}")
    if worst > LOSS_TOLERANCE:
        raise SystemExit("the models disagree before training: the timings would compare different models")

    for index, (ids, targets) in enumerate(batches):
        turn = index % len(contenders)  # rotate the order so no model always goes first
        for c in contenders[turn:] + contenders[:turn]:
            c.step(ids, targets, record=index >= args.warmup)
    drift = max(abs(a - b) for c in contenders[1:] for a, b in zip(c.losses, contenders[0].losses))
    print(f"losses over the {args.steps} timed steps agree to {drift:.1e} (both models trained the same way)\n")

    print_table(contenders, tokens_per_step)
    print("\nforward, backward, AdamW, step: median seconds per step (forward includes the loss).")
    print("range: fastest-slowest step. olm_edu / this: olm_edu's tokens/s over this row's "
          "(above 1: olm_edu is faster).")
    print("reproduce: python benchmarks/train_step.py", *sys.argv[1:])


if __name__ == "__main__":
    main()
