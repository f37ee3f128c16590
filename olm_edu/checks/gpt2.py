"""Checks for lesson 05 — GPT-2 (the assembled model, its initialisation, its parameter count).

The model check copies the weights of `olm_edu.models.build(cfg)` (randomised away from their
defaults) into the learner's `GPT2` by the attribute names the exercise gives, and compares the
logits; when they differ it computes the logits of the usual mistakes (no positions, no final
norm, a softmax at the end, ...) and names the one the learner's output matches. The
initialisation check fills a model of the exercise's layout with a marker value, runs the
learner's `init_gpt2_`, and tests each parameter's mean and standard deviation within a
statistical tolerance. The counting check compares with `olm_edu.analysis.count_params`.

Tolerances: logits atol=1e-5, rtol=1e-4 (float32, a few layers deep). Standard deviations: a
relative error of max(5%, 6 / sqrt(2n)) for a tensor of n entries (the sample standard
deviation of n normal draws has a relative standard error of about 1 / sqrt(2n)).
"""

from __future__ import annotations

import math
import re
from typing import Callable

import torch
from torch import nn

from olm_edu import analysis
from olm_edu.grading import Check, CheckFailed, exercise, shared_module
from olm_edu.models import ModelConfig, build
from olm_edu.nn import Attention, ClassicFFN, LayerNorm

INIT_STD = 0.02
MARKER = 3.0  # what the init check fills every parameter with before calling the learner's code

# olm_edu.models.build's parameter names -> the names Exercise 1 asks for
_RENAMES = (
    (r"embed\.weight$", "token_embedding.weight"),
    (r"positions\.weight$", "position_embedding.weight"),
    (r"layers\.(\d+)\.attn\.norm\.", r"blocks.\1.ln1."),
    (r"layers\.(\d+)\.attn\.attention\.", r"blocks.\1.attn."),
    (r"layers\.(\d+)\.ffn\.norm\.", r"blocks.\1.ln2."),
    (r"layers\.(\d+)\.ffn\.mlp\.", r"blocks.\1.mlp."),
    (r"norm\.", "final_norm."),
)
NAMES_HINT = ("the names the check needs: token_embedding, position_embedding, blocks (an nn.ModuleList of "
              "GPT2Block), final_norm, lm_head")


def exercise_name(library_name: str) -> str:
    """The name a parameter of `build(cfg)` has in the exercise's GPT2 ('layers.0.attn.norm.weight' -> 'blocks.0.ln1.weight')."""
    for pattern, replacement in _RENAMES:
        renamed, count = re.subn("^" + pattern, replacement, library_name)
        if count:
            return renamed
    raise KeyError(library_name)


def _config(vocab_size: int, max_seq_len: int, embed_dim: int, num_layers: int, num_heads: int = 1) -> ModelConfig:
    """GPT-2's knobs at the given sizes (hidden width 4 * embed_dim)."""
    return ModelConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, embed_dim=embed_dim, num_layers=num_layers,
                       num_heads=num_heads, hidden_dim=4 * embed_dim, name="check")


# -- Exercise 1: the model ----------------------------------------------------------------------

class ReferenceGPT2(nn.Module):
    """GPT-2 from the library's parts under the exercise's names (what later cells use until the
    check passes): the same model as build(cfg), laid out as Exercise 1 asks.
    Shapes: ids (B, T) -> logits (B, T, vocab_size)."""

    def __init__(self, vocab_size: int, max_seq_len: int, embed_dim: int, num_layers: int, num_heads: int):
        super().__init__()
        from olm_edu.checks.block import ReferencePreNormBlock  # GPT2Block of the lesson

        self.token_embedding = nn.Embedding(vocab_size, embed_dim)
        self.position_embedding = nn.Embedding(max_seq_len, embed_dim)
        self.blocks = nn.ModuleList(ReferencePreNormBlock(embed_dim, num_heads) for _ in range(num_layers))
        self.final_norm = LayerNorm(embed_dim)
        self.lm_head = nn.Linear(embed_dim, vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # tied

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.token_embedding(ids) + self.position_embedding(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.final_norm(h))


def reference_init_gpt2_(model: nn.Module) -> None:
    """olm_edu.models.build.init_weights's rule on the exercise's layout: N(0, 0.02) everywhere, the
    residual projections (o_proj, down_proj) at 0.02 / sqrt(2 * num_layers), zero biases, unit norms."""
    residual_std = 0.02 / math.sqrt(2 * len(model.blocks))
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, residual_std if name.endswith(("o_proj", "down_proj")) else 0.02)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, 0.02)
            elif isinstance(module, LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


def reference_gpt2_params(vocab_size: int, max_seq_len: int, embed_dim: int, num_layers: int) -> int:
    """olm_edu.analysis.count_params of GPT-2's knobs at these sizes."""
    return analysis.count_params(_config(vocab_size, max_seq_len, embed_dim, num_layers)).total


def _check_structure(check: Check, model: object, cfg: ModelConfig, call: str) -> None:
    __tracebackhide__ = True
    if not isinstance(model, nn.Module):
        check.fail(f"{call} should make an nn.Module, got {type(model).__name__}")
    tables = (("token_embedding", cfg.vocab_size, "vocab_size"), ("position_embedding", cfg.max_seq_len, "max_seq_len"))
    for name, rows, rows_name in tables:
        table = getattr(model, name, None)
        check.expect(isinstance(table, nn.Embedding) and tuple(table.weight.shape) == (rows, cfg.embed_dim),
                     f"{call}.{name} should be nn.Embedding({rows_name}, embed_dim), a ({rows}, {cfg.embed_dim}) table")
    blocks = getattr(model, "blocks", None)
    check.expect(isinstance(blocks, nn.ModuleList) and len(blocks) == cfg.num_layers,
                 f"{call}.blocks should be an nn.ModuleList of num_layers={cfg.num_layers} GPT2Block")
    check.expect(isinstance(getattr(model, "final_norm", None), nn.Module),
                 f"{call}.final_norm should be the final LayerNorm(embed_dim)")
    head = getattr(model, "lm_head", None)
    check.expect(isinstance(head, nn.Module) and isinstance(getattr(head, "weight", None), torch.Tensor),
                 f"{call}.lm_head should be nn.Linear(embed_dim, vocab_size, bias=False)")
    check.expect(head.weight is model.token_embedding.weight,
                 f"{call}.lm_head.weight is not token_embedding.weight: the head must be tied to the embedding, the "
                 "same Parameter and not a copy. Hint: self.lm_head.weight = self.token_embedding.weight")
    check.expect(getattr(head, "bias", None) is None, f"{call}.lm_head should have no bias (bias=False), as GPT-2's")
    held = sum(p.numel() for p in model.parameters())
    expected = analysis.count_params(cfg).total
    check.expect(held == expected, f"{call} holds {held:,} parameters; GPT-2 at these sizes has {expected:,} "
                 f"(difference {held - expected:+,}). Hint: {NAMES_HINT}, and nothing else")


def _randomise_model(model: nn.Module, generator: torch.Generator) -> None:
    """Matrices N(0, 1/fan_in), norm gains 1 + N(0, 0.3^2), biases N(0, 0.3^2): far from build's defaults."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.dim() == 2:
                parameter.copy_(noise / parameter.shape[1] ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                parameter.copy_(1.0 + 0.3 * noise)
            else:
                parameter.copy_(0.3 * noise)


def _load_into(check: Check, learner: nn.Module, reference: nn.Module, call: str) -> None:
    __tracebackhide__ = True
    with torch.no_grad():
        for library_name, tensor in reference.state_dict().items():
            name = exercise_name(library_name)
            try:
                target = learner.get_parameter(name)
            except AttributeError:
                check.fail(f"{call} has no parameter {name} (the check copies the library's {library_name} into it). "
                           f"Hint: {NAMES_HINT}; the blocks are GPT2Block(embed_dim, num_heads)")
            if tuple(target.shape) != tuple(tensor.shape):
                check.fail(f"{call}.{name} has shape {tuple(target.shape)}, expected {tuple(tensor.shape)}")
            target.copy_(tensor)
    check.passed += 1


def _logits(reference: nn.Module, ids: torch.Tensor, *, positions: bool = True, final_norm: bool = True,
            scale: float = 1.0) -> torch.Tensor:
    """build(cfg)'s forward pass step by step, with switches for the usual mistakes."""
    h = reference.embed(ids) * scale  # (B, T, d)
    if positions:
        h = h + reference.positions(torch.arange(ids.shape[1]))
    h = reference.layers(h)
    if final_norm:
        h = reference.norm(h)
    return reference.head(h)  # (B, T, V)


@exercise("Exercise 1 — assemble GPT-2", reference=ReferenceGPT2)
def gpt2(check: Check, gpt2_class: Callable[..., nn.Module]) -> None:
    sizes = [(101, 16, 32, 2, 4)] + ([(67, 24, 48, 3, 6), (50, 8, 16, 1, 1)] if check.hidden else [])
    for vocab_size, max_seq_len, embed_dim, num_layers, num_heads in sizes:
        cfg = _config(vocab_size, max_seq_len, embed_dim, num_layers, num_heads)
        call = f"GPT2({vocab_size}, {max_seq_len}, {embed_dim}, {num_layers}, {num_heads})"
        model = check.call(gpt2_class, vocab_size, max_seq_len, embed_dim, num_layers, num_heads, what=call)
        _check_structure(check, model, cfg, call)
        reference = build(cfg, implementation="explicit")
        _randomise_model(reference, check.generator)
        _load_into(check, model, reference, call)
        model.eval()
        for batch, length in ((2, max_seq_len), (3, 5), (1, 1)):
            ids = check.randint(0, vocab_size, batch, length)
            with torch.no_grad():
                expected = _logits(reference, ids)
                mistakes = {
                    "your logits do not depend on the position table: add self.position_embedding(positions), "
                    "positions = torch.arange(T), to the token embeddings": _logits(reference, ids, positions=False),
                    "the final LayerNorm is missing: apply self.final_norm to the output of the last block, before "
                    "the head": _logits(reference, ids, final_norm=False),
                    "you scaled the token embeddings by sqrt(embed_dim) (the 2017 transformer does; GPT-2 does not)":
                        _logits(reference, ids, scale=embed_dim**0.5),
                    "you returned probabilities; return the logits, with no softmax at the end": expected.softmax(-1),
                }
            what = f"{call} on token ids of shape ({batch}, {length})"
            got = check.call(model, ids, what=what,
                             hint="the positions of T tokens are torch.arange(T), with T = ids.shape[1] (which may be "
                                  "smaller than max_seq_len)")
            check.close_or_diagnose(got, expected, mistakes, what=f"logits of {what}", atol=1e-5, rtol=1e-4,
                      hint="token embeddings + position embeddings, then every block in order, then final_norm, then "
                           "lm_head")


# -- Exercise 2: the initialisation -------------------------------------------------------------

class _Block(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.ln1 = LayerNorm(embed_dim)
        self.attn = Attention(embed_dim, num_heads, bias=True)
        self.ln2 = LayerNorm(embed_dim)
        self.mlp = ClassicFFN(embed_dim, 4 * embed_dim, activation="gelu_tanh")


class _Layout(nn.Module):
    """The parameter layout of Exercise 1's GPT2 (no forward: the init check only needs the parameters)."""

    def __init__(self, vocab_size: int, max_seq_len: int, embed_dim: int, num_layers: int, num_heads: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, embed_dim)
        self.position_embedding = nn.Embedding(max_seq_len, embed_dim)
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads) for _ in range(num_layers))
        self.final_norm = LayerNorm(embed_dim)
        self.lm_head = nn.Linear(embed_dim, vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight


RESIDUAL_PROJECTIONS = ("attn.o_proj.weight", "mlp.down_proj.weight")


def _within(measured: float, expected: float, count: int) -> bool:
    return abs(measured - expected) <= max(0.05, 6 / math.sqrt(2 * count)) * expected


def _check_initialised(check: Check, name: str, parameter: torch.Tensor, num_layers: int) -> None:
    __tracebackhide__ = True
    values = parameter.detach().double()
    is_norm = any(part in ("ln1", "ln2", "final_norm") for part in name.split("."))
    if bool((values == MARKER).all()):
        if is_norm:
            kind = "olm_edu.nn.LayerNorm is not an nn.Linear: set its weight to 1 and its bias to 0 separately"
        elif name.endswith("bias"):
            kind = "GPT-2 starts every bias at 0: nn.init.zeros_(module.bias)"
        else:
            kind = "draw every nn.Linear and nn.Embedding weight with nn.init.normal_(weight, mean=0.0, std=...)"
        check.fail(f"{name} was not initialised: it still holds {MARKER}, the value the check filled in. Hint: {kind}")
    if is_norm:
        start = 1.0 if name.endswith("weight") else 0.0
        check.expect(bool((values == start).all()),
                     f"{name} should be {start:g} everywhere: a new LayerNorm has gain 1 and bias 0")
        return
    if name.endswith("bias"):
        check.expect(bool((values == 0).all()), f"{name} should be zero: GPT-2 starts every bias at 0")
        return
    residual_std = INIT_STD / math.sqrt(2 * num_layers)
    is_residual = name.endswith(RESIDUAL_PROJECTIONS)
    expected = residual_std if is_residual else INIT_STD
    measured, count = values.std().item(), values.numel()
    if not _within(measured, expected, count):
        if is_residual and _within(measured, INIT_STD, count):
            check.fail(f"{name} has standard deviation {measured:.4g}, the plain {INIT_STD}: the projections that write "
                       f"into the residual stream get 0.02 / sqrt(2 * num_layers) = {residual_std:.4g} "
                       f"(num_layers = {num_layers})")
        if is_residual and _within(measured, INIT_STD / math.sqrt(num_layers), count):
            check.fail(f"{name} has standard deviation {measured:.4g} = 0.02 / sqrt(num_layers); each block has two "
                       f"residual layers (attention and MLP), so divide by sqrt(2 * num_layers): {residual_std:.4g}")
        if not is_residual and _within(measured, residual_std, count):
            check.fail(f"{name} has standard deviation {measured:.4g}, the scaled one; only the projections into the "
                       "residual stream (attn.o_proj and mlp.down_proj) are scaled, every other weight keeps 0.02")
        check.fail(f"{name} has standard deviation {measured:.4g}, expected {expected:.4g}"
                   + (f" = 0.02 / sqrt(2 * {num_layers})" if is_residual else "")
                   + ". Hint: nn.init.normal_(weight, mean=0.0, std=...)")
    check.expect(abs(values.mean().item()) <= 6 * expected / math.sqrt(count),
                 f"{name} has mean {values.mean().item():.3g}; the weights should be drawn with mean 0")


@exercise("Exercise 2 — GPT-2's initialisation", reference=reference_init_gpt2_)
def init(check: Check, init_fn: Callable[[nn.Module], None]) -> None:
    sizes = [(97, 32, 64, 4, 4)] + ([(211, 64, 96, 12, 6), (97, 32, 64, 1, 2)] if check.hidden else [])
    for vocab_size, max_seq_len, embed_dim, num_layers, num_heads in sizes:
        model = shared_module(_Layout, vocab_size, max_seq_len, embed_dim, num_layers, num_heads)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(MARKER)
        what = f"init_gpt2_ on a GPT2({vocab_size}, {max_seq_len}, {embed_dim}, {num_layers}, {num_heads})"
        with torch.random.fork_rng(devices=[]):  # the learner draws from the global generator; leave it as it was
            torch.manual_seed(check.seed)
            check.call(init_fn, model, what=what)
        check.expect(model.lm_head.weight is model.token_embedding.weight,
                     f"after {what}, lm_head.weight is no longer token_embedding.weight: initialise the tensors in "
                     "place (nn.init.normal_), do not assign new Parameters")
        for name, parameter in model.named_parameters():
            _check_initialised(check, name, parameter, num_layers)


# -- Exercise 3: the parameter count ------------------------------------------------------------

def _count_mistakes(vocab_size: int, max_seq_len: int, d: int, num_layers: int) -> dict[int, str]:
    """got - expected for the usual mistakes -> what to say."""
    return {
        vocab_size * d: "you counted the output head, but it is tied to the token embedding: the same matrix, so it "
                        "adds no parameters",
        -2 * d: "the final LayerNorm is missing (a gain and a bias: 2 * d)",
        -max_seq_len * d: "the learned position table is missing (max_seq_len * d)",
        -9 * d * num_layers: "the biases of the linear layers are missing (per block: 3d for q, k, v, d for the "
                             "attention output, 4d for up_proj, d for down_proj)",
        -(2 * num_layers + 1) * d: "each LayerNorm has a bias as well as a gain: 2 * d parameters, not d",
        -2 * d * num_layers: "each block has two LayerNorms (ln1 and ln2), 4 * d parameters in all",
        -4 * d * num_layers: "the two LayerNorms of each block are missing (4 * d parameters a block)",
    }


@exercise("Exercise 3 — count GPT-2's parameters", reference=reference_gpt2_params)
def param_count(check: Check, fn: Callable[[int, int, int, int], int]) -> None:
    check.forbid("olm_edu.analysis.count_params", reason="Exercise 3 asks you to write the formula")
    sizes = [(50257, 1024, 768, 12), (50257, 1024, 1600, 48), (101, 16, 32, 2), (1000, 64, 48, 5)]
    draws = 4 if not check.hidden else 12
    for _ in range(draws):
        sizes.append((int(check.randint(100, 60_000).item()), int(check.randint(8, 4097).item()),
                      8 * int(check.randint(1, 200).item()), int(check.randint(1, 61).item())))
    if check.hidden:
        sizes += [(2, 1, 8, 1), (128_256, 8192, 4096, 32)]
    for vocab_size, max_seq_len, d, num_layers in sizes:
        call = f"gpt2_params({vocab_size}, {max_seq_len}, {d}, {num_layers})"
        expected = analysis.count_params(_config(vocab_size, max_seq_len, d, num_layers)).total
        got = check.call(fn, vocab_size, max_seq_len, d, num_layers, what=call)
        if isinstance(got, float) and got == expected:
            check.fail(f"{call} returned the float {got!r}; return an int (use // rather than /, and int arithmetic)")
        check.expect(isinstance(got, int) and not isinstance(got, bool),
                     f"{call} should return an int, got {type(got).__name__}")
        if got != expected:
            mistake = _count_mistakes(vocab_size, max_seq_len, d, num_layers).get(got - expected)
            if mistake:
                check.fail(f"{call} should be {expected:,}, yours is {got:,}: {mistake}")
            check.fail(f"{call} should be {expected:,}, yours is {got:,} (off by {got - expected:+,}). Hint: add the "
                       "token table (vocab_size * d), the position table (max_seq_len * d), per block the attention "
                       "(four d x d matrices, four biases of d), the MLP (d x 4d and 4d x d, biases of 4d and d) and "
                       "two LayerNorms (a gain and a bias of d each), and the final LayerNorm; the tied head adds nothing")
        check.passed += 1
