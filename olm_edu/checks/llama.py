"""Checks for lesson 13 — Llama 3 assembled.

The references are the library's: `olm_edu.models.build(cfg)` for the decoder layer and the
model (its weights randomised away from their defaults, then copied into yours by the names the
exercises give), `olm_edu.analysis.count_params(from_hf_config(config))` for the count, and a
`transformers.LlamaForCausalLM` for the weight-name conversion (its logits, loaded through
your conversion into the lesson's model).

When an answer is wrong, each check looks for the usual mistakes and names the one it matches:
- the layer and the model: K/V projections sized with num_heads (no GQA), a 4 * embed_dim
  feed-forward, biases Llama does not have, a LayerNorm, a classic two-matrix MLP; in the
  output: no RoPE scaling, the default rope_theta, no RoPE, one norm used twice, a missing
  residual, post-norm, no final norm, a tied head where Llama 3 8B's is untied (or the reverse);
- the count: the same mistakes as differences of parameters (a head counted or not, num_heads
  for K/V, no final norm, biases, 4d, a position table, head_dim ignored);
- the conversion: post_attention_layernorm taken for the attention's norm, gate/up swapped,
  GPT-2's transposes, the embedding used as an untied head, missing tensors.

Tolerances: layer outputs and logits atol=1e-5, rtol=1e-4 (float32, a few layers deep; any
equivalent formulation, SDPA or explicit attention, passes). Counts and tensors: exact.
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterator

import torch
from torch import nn

from olm_edu import analysis
from olm_edu.grading import Check, CheckFailed, exercise
from olm_edu.models import ModelConfig, build, from_hf_config
from olm_edu.nn import Attention, RMSNorm, SwiGLUFFN

ATOL, RTOL = 1e-5, 1e-4
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8}  # a short original length, so the scaling bites
LAYER_NAMES_HINT = ("the names the check needs: attn_norm (RMSNorm), attn (olm_edu.nn.Attention, with q_proj, "
                    "k_proj, v_proj, o_proj), mlp_norm (RMSNorm), mlp (SwiGLU, with gate_proj, up_proj, down_proj)")
MODEL_NAMES_HINT = ("the names the check needs: token_embedding, layers (an nn.ModuleList of LlamaDecoderLayer), "
                    "final_norm, lm_head")


def llama_config(vocab_size: int = 97, max_seq_len: int = 32, embed_dim: int = 32, num_layers: int = 2,
                 num_heads: int = 4, num_kv_heads: int | None = 2, hidden_dim: int = 96, **knobs) -> ModelConfig:
    """A small config with every Llama 3 knob: RMSNorm, RoPE with Llama 3 scaling, SwiGLU, GQA, no biases."""
    settings = dict(norm="rmsnorm", norm_bias=False, norm_eps=1e-5, position="rope", rope_theta=500_000.0,
                    rope_scaling=dict(LLAMA3_SCALING), ffn="glu", activation="silu", ffn_bias=False, qkv_bias=False,
                    attn_out_bias=False, tie_embeddings=False, family="llama", name="check-llama")
    settings.update(knobs)
    return ModelConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, embed_dim=embed_dim, num_layers=num_layers,
                       num_heads=num_heads, num_kv_heads=num_kv_heads, hidden_dim=hidden_dim, **settings)


def _describe(cfg: ModelConfig, model: bool = False) -> str:
    """The config's sizes, for messages: "[cfg: embed_dim=32, num_heads=4, ...]"."""
    sizes = (f"embed_dim={cfg.embed_dim}, num_heads={cfg.num_heads}, num_kv_heads={cfg.num_kv_heads}, "
             f"head_dim={cfg.head_size}, hidden_dim={cfg.hidden_dim}")
    if model:
        sizes = (f"vocab_size={cfg.vocab_size}, num_layers={cfg.num_layers}, {sizes}, "
                 f"tie_embeddings={cfg.tie_embeddings}")
    return f"[cfg: {sizes}]"


# -- names: the library's layer -> the lesson's --------------------------------------------------

_LAYER_RENAMES = ((r"^attn\.norm\.", "attn_norm."), (r"^attn\.attention\.", "attn."), (r"^ffn\.norm\.", "mlp_norm."),
                  (r"^ffn\.mlp\.", "mlp."))


def _layer_name(library_name: str) -> str:
    """A library layer's parameter name -> the lesson's ('attn.attention.q_proj.weight' -> 'attn.q_proj.weight')."""
    for pattern, replacement in _LAYER_RENAMES:
        library_name = re.sub(pattern, replacement, library_name)
    return library_name


def _layer_parameters(layer: nn.Module) -> dict[str, nn.Parameter]:
    """A library layer's parameters under the lesson's names."""
    return {_layer_name(name): parameter for name, parameter in layer.named_parameters()}


def model_name(library_name: str) -> str:
    """The lesson's name of a parameter of build(cfg): 'layers.0.attn.norm.weight' -> 'layers.0.attn_norm.weight'."""
    for pattern, replacement in ((r"^embed\.", "token_embedding."), (r"^norm\.", "final_norm."), (r"^head\.", "lm_head.")):
        if re.match(pattern, library_name):
            return re.sub(pattern, replacement, library_name)
    match = re.match(r"^layers\.(\d+)\.(.*)$", library_name)
    if match is None:
        raise KeyError(library_name)
    return f"layers.{match[1]}.{_layer_name(match[2])}"


def _random_weights(check: Check, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Matrices N(0, 1/fan_in), norm gains 1 + N(0, 0.3^2): far from any initialisation."""
    weights = {}
    for name, shape in shapes.items():
        noise = check.randn(*shape)
        weights[name] = noise / shape[1] ** 0.5 if len(shape) == 2 else 1.0 + 0.3 * noise
    return weights


def _library_layer(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, nn.Module]:
    """The four parts of build(cfg)'s first layer, holding `weights` (lesson names)."""
    with torch.random.fork_rng(devices=[]):  # leave the notebook's random state alone
        layer = build(cfg.replace(num_layers=1), implementation="explicit").layers[0]
    params = _layer_parameters(layer)
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    return dict(attn_norm=layer.attn.norm, attn=layer.attn.attention, mlp_norm=layer.ffn.norm, mlp=layer.ffn.mlp)


def _layer_forward(parts: dict[str, nn.Module], x: torch.Tensor, variant: str | None = None) -> torch.Tensor:
    """A pre-norm Llama layer, or one of the usual mistakes (`variant`)."""
    attn_norm, attn, mlp_norm, mlp = parts["attn_norm"], parts["attn"], parts["mlp_norm"], parts["mlp"]
    if variant == "post":
        h = attn_norm(x + attn(x))
        return mlp_norm(h + mlp(h))
    h = attn(attn_norm(x)) if variant == "no_attn_residual" else x + attn(attn_norm(x))
    second_norm = attn_norm if variant == "shared_norm" else mlp_norm
    out = mlp(h) if variant == "no_mlp_norm" else mlp(second_norm(h))
    return out if variant == "no_mlp_residual" else h + out


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, q_width, kv_width, f = cfg.embed_dim, cfg.num_heads * cfg.head_size, cfg.kv_heads * cfg.head_size, cfg.hidden_dim
    return {
        "attn_norm.weight": (d,), "attn.q_proj.weight": (q_width, d), "attn.k_proj.weight": (kv_width, d),
        "attn.v_proj.weight": (kv_width, d), "attn.o_proj.weight": (d, q_width), "mlp_norm.weight": (d,),
        "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f),
    }


def _check_layer_parameters(check: Check, layer: object, cfg: ModelConfig, call: str, prefix: str = "") -> None:
    """Every parameter of a Llama layer, with the right shape, and nothing else; name the usual mistakes."""
    __tracebackhide__ = True
    if not isinstance(layer, nn.Module):
        check.fail(f"{call} should make an nn.Module, got {type(layer).__name__}")
    got = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    expected = _expected_shapes(cfg)
    d, heads, kv_heads, head_dim = cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.head_size
    for name in sorted(got):
        if name in expected:
            continue
        if name in ("attn_norm.bias", "mlp_norm.bias"):
            check.fail(f"{call} has a parameter {prefix}{name}: a LayerNorm. Llama normalises with RMSNorm, which has "
                       "a weight and no bias. Hint: olm_edu.nn.RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)")
        if name.endswith(".bias"):
            check.fail(f"{call} has a parameter {prefix}{name}: Llama 3 has no biases (attention_bias and mlp_bias "
                       "are false in its config.json). Hint: pass bias=False")
        check.fail(f"{call} has an unexpected parameter {prefix}{name}. Hint: {LAYER_NAMES_HINT}")
    missing = [name for name in expected if name not in got]
    if "mlp.gate_proj.weight" in missing and "mlp.up_proj.weight" in got:
        check.fail(f"{call}: {prefix}mlp has no gate_proj: Llama's feed-forward is SwiGLU, three matrices, "
                   "down(silu(gate(x)) * up(x)), not GPT-2's two-matrix MLP. Hint: olm_edu.nn.SwiGLUFFN("
                   "cfg.embed_dim, cfg.hidden_dim)")
    if missing:
        check.fail(f"{call} has no parameter {prefix}{missing[0]}. Hint: {LAYER_NAMES_HINT}")
    for name, shape in expected.items():
        have = got[name]
        if have == shape:
            continue
        where = f"{call}: {prefix}{name} has shape {have}, expected {shape}"
        if name in ("attn.k_proj.weight", "attn.v_proj.weight") and have == (heads * head_dim, d):
            check.fail(f"{where}. You sized the keys and values with num_heads={heads}; Llama 3 uses grouped-query "
                       f"attention: num_kv_heads={kv_heads} key/value heads shared by the {heads} query heads. Hint: "
                       "pass num_kv_heads=cfg.num_kv_heads to Attention")
        if name.startswith("mlp.") and 4 * d in have and cfg.hidden_dim != 4 * d:
            check.fail(f"{where}. You made the feed-forward 4 * embed_dim = {4 * d} wide, GPT-2's width; Llama's is "
                       f"its own knob, hidden_dim={cfg.hidden_dim} (intermediate_size in config.json). Hint: "
                       "SwiGLUFFN(cfg.embed_dim, cfg.hidden_dim)")
        if name.startswith("attn.") and head_dim * heads != d:
            check.fail(f"{where}. This config sets head_dim={head_dim}, not embed_dim // num_heads = {d // heads}. "
                       "Hint: pass head_dim=cfg.head_dim to Attention")
        check.fail(f"{where}. Hint: {LAYER_NAMES_HINT}")
    check.passed += 1


def _load(check: Check, module: nn.Module, weights: dict[str, torch.Tensor], call: str) -> None:
    __tracebackhide__ = True
    with torch.no_grad():
        for name, tensor in weights.items():
            try:
                module.get_parameter(name).copy_(tensor)
            except (AttributeError, RuntimeError) as error:
                check.fail(f"copying the reference's {name} into {call} failed: {error}")


def _layer_mistakes(cfg: ModelConfig, weights: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the usual mistakes would output on x."""
    variant_configs = {
        "RoPE is not scaled: Llama 3 stretches RoPE's low frequencies with rope_scaling (rope_type 'llama3'). "
        "Hint: pass rope_scaling=cfg.rope_scaling to Attention": cfg.replace(rope_scaling=None),
        "RoPE uses the default base 10000; Llama 3's is rope_theta=500000. Hint: pass rope_theta=cfg.rope_theta "
        "to Attention": cfg.replace(rope_theta=10_000.0),
        "RoPE uses the default base 10000 and no scaling. Hint: pass rope_theta=cfg.rope_theta and "
        "rope_scaling=cfg.rope_scaling to Attention": cfg.replace(rope_theta=10_000.0, rope_scaling=None),
        "no rotary position embedding: the attention does not know where the tokens are. Hint: Attention(..., "
        "position='rope', rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling)":
            cfg.replace(position="none", rope_scaling=None),
        "you normalised with LayerNorm (centring each vector); Llama's RMSNorm divides by the root mean square and "
        "subtracts nothing. Hint: olm_edu.nn.RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)":
            cfg.replace(norm="layernorm", norm_bias=False),
        "the gate uses GELU (GeGLU, Gemma's); Llama's SwiGLU uses SiLU. Hint: SwiGLUFFN": cfg.replace(activation="gelu_tanh"),
    }
    if cfg.rope_theta != 500_000.0:
        variant_configs["RoPE uses Llama 3's base 500000, but this config's rope_theta is "
                        f"{cfg.rope_theta:g}. Hint: pass rope_theta=cfg.rope_theta to Attention"] = cfg.replace(
            rope_theta=500_000.0)
    if cfg.norm_eps != 1e-6:
        variant_configs["the norms use eps=1e-6 (RMSNorm's default); this config's is cfg.norm_eps="
                        f"{cfg.norm_eps:g}. Hint: RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)"] = cfg.replace(norm_eps=1e-6)
    mistakes = {}
    with torch.no_grad():
        for message, variant in variant_configs.items():
            mistakes[message] = _layer_forward(_library_layer(variant, weights), x)
        parts = _library_layer(cfg, weights)
        for message, variant in (
            ("you normalised the feed-forward's input with attn_norm; each sub-layer has its own norm: "
             "h + mlp(mlp_norm(h))", "shared_norm"),
            ("the feed-forward's input is not normalised: h + mlp(mlp_norm(h))", "no_mlp_norm"),
            ("the attention's residual connection is missing: h = x + attn(attn_norm(x))", "no_attn_residual"),
            ("the feed-forward's residual connection is missing: return h + mlp(mlp_norm(h))", "no_mlp_residual"),
            ("you applied each norm after the residual add (post-norm, the 2017 layout); Llama is pre-norm: "
             "h = x + attn(attn_norm(x)), then h + mlp(mlp_norm(h))", "post"),
        ):
            mistakes[message] = _layer_forward(parts, x, variant)
    return mistakes


# -- the library's versions, with the exercises' signatures ------------------------------------
# What the cells after an unfinished exercise use until its check passes
# (`check.<exercise>.yours_or_reference(yours)`): the learner's notebook runs to the end either way.

class ReferenceLlamaDecoderLayer(nn.Module):
    """Exercise 1 built from the library's parts (RMSNorm, Attention, SwiGLUFFN), the lesson's names."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, bias=False,
                              position="rope", rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling,
                              max_seq_len=cfg.max_seq_len)
        self.mlp_norm = RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = SwiGLUFFN(cfg.embed_dim, cfg.hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attn(self.attn_norm(x))  # (B, T, d)
        return h + self.mlp(self.mlp_norm(h))


class ReferenceLlama(nn.Module):
    """Exercise 2 from the library's parts: ids (B, T) -> logits (B, T, vocab_size)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.layers = nn.ModuleList(ReferenceLlamaDecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.final_norm = RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.token_embedding(ids)
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(self.final_norm(h))


def reference_llama_params(config: dict) -> int:
    """Llama's parameter count from config.json's numbers (the check compares it with
    olm_edu.analysis.count_params, which the exercise may not call)."""
    d, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or d // config["num_attention_heads"]
    q_width, kv_width = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    attention = d * (q_width + 2 * kv_width) + q_width * d
    if config.get("attention_bias", False):
        attention += q_width + 2 * kv_width + d
    mlp = 3 * d * f + (2 * f + d if config.get("mlp_bias", False) else 0)
    embeddings = config["vocab_size"] * d * (1 if config.get("tie_word_embeddings", False) else 2)
    return embeddings + layers * (attention + mlp + 2 * d) + d  # two norms per layer, one final norm


def reference_convert_llama_state_dict(hf_state_dict: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """transformers' Llama names -> the lesson's (the tied head, when there is no lm_head.weight)."""
    return {name: tensor for name, (tensor, _) in _reference_convert(hf_state_dict, num_layers).items()}


# -- Exercise 1: the decoder layer --------------------------------------------------------------

def _layer_configs(check: Check) -> list[ModelConfig]:
    # The exercise says every size and RoPE setting must come from cfg: the visible configs differ
    # from Llama 3.1 8B in each (head_dim, norm_eps, num_kv_heads, rope_theta, rope_scaling).
    configs = [
        llama_config(embed_dim=32, num_heads=4, num_kv_heads=2, hidden_dim=96),
        llama_config(embed_dim=48, num_heads=4, num_kv_heads=1, head_dim=16, hidden_dim=128, norm_eps=0.05),
        llama_config(embed_dim=32, num_heads=2, num_kv_heads=None, hidden_dim=64, rope_scaling=None,
                     rope_theta=10_000.0),
    ]
    if check.hidden:
        configs += [
            llama_config(embed_dim=64, num_heads=8, num_kv_heads=4, hidden_dim=160, max_seq_len=16),
            llama_config(embed_dim=40, num_heads=5, num_kv_heads=1, head_dim=12, hidden_dim=72, norm_eps=1e-3,
                         rope_theta=50_000.0),
        ]
    return configs


@exercise("Exercise 1 — Llama's decoder layer", reference=ReferenceLlamaDecoderLayer)
def decoder_layer(check: Check, layer_class: Callable[[ModelConfig], nn.Module]) -> None:
    for cfg in _layer_configs(check):
        call = f"LlamaDecoderLayer(cfg) {_describe(cfg)}"
        layer = check.call(layer_class, cfg, what=call)
        _check_layer_parameters(check, layer, cfg, call)
        weights = _random_weights(check, _expected_shapes(cfg))
        _load(check, layer, weights, call)
        layer.eval()
        for batch, length in ((2, cfg.max_seq_len), (1, 5)):
            x = check.randn(batch, length, cfg.embed_dim)
            with torch.no_grad():
                expected = _layer_forward(_library_layer(cfg, weights), x)
                mistakes = _layer_mistakes(cfg, weights, x)
            what = f"{call}, on x of shape ({batch}, {length}, {cfg.embed_dim})"
            got = check.call(layer, x, what=what)
            check.close_or_diagnose(got, expected, mistakes, what=f"the output of {what}", atol=ATOL, rtol=RTOL,
                                    hint="h = x + attn(attn_norm(x)); return h + mlp(mlp_norm(h)), with RoPE "
                                         "(cfg.rope_theta, cfg.rope_scaling) inside attn")


# -- Exercise 2: the model ----------------------------------------------------------------------

def _model_configs(check: Check) -> list[ModelConfig]:
    configs = [llama_config(vocab_size=97, num_layers=2),
               llama_config(vocab_size=41, num_layers=1, tie_embeddings=True, max_seq_len=16)]  # as Llama 3.2 1B
    if check.hidden:
        configs += [
            llama_config(vocab_size=61, num_layers=3, tie_embeddings=True, embed_dim=48, num_heads=4, num_kv_heads=1,
                         head_dim=16, hidden_dim=128),
            llama_config(vocab_size=50, num_layers=1, num_kv_heads=None, max_seq_len=16),
        ]
    return configs


def _check_model_structure(check: Check, model: object, cfg: ModelConfig, call: str) -> None:
    __tracebackhide__ = True
    if not isinstance(model, nn.Module):
        check.fail(f"{call} should make an nn.Module, got {type(model).__name__}")
    if isinstance(getattr(model, "position_embedding", None), nn.Module):
        check.fail(f"{call} has a position_embedding: Llama has no position table; RoPE, inside the attention, "
                   "gives the positions (and has no parameters)")
    table = getattr(model, "token_embedding", None)
    check.expect(isinstance(table, nn.Embedding) and tuple(table.weight.shape) == (cfg.vocab_size, cfg.embed_dim),
                 f"{call}: token_embedding should be nn.Embedding(cfg.vocab_size, cfg.embed_dim), a "
                 f"({cfg.vocab_size}, {cfg.embed_dim}) table")
    layers = getattr(model, "layers", None)
    check.expect(isinstance(layers, nn.ModuleList) and len(layers) == cfg.num_layers,
                 f"{call}: layers should be an nn.ModuleList of cfg.num_layers={cfg.num_layers} LlamaDecoderLayer")
    for index, layer in enumerate(layers):
        _check_layer_parameters(check, layer, cfg, call, prefix=f"layers.{index}.")
    norm = getattr(model, "final_norm", None)
    if not isinstance(norm, nn.Module):
        check.fail(f"{call} has no final_norm: the final RMSNorm is missing. Pre-norm layers never normalise the "
                   "residual stream itself, so Llama normalises it once more before the head (model.norm in "
                   "transformers). Hint: self.final_norm = RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)")
    check.expect(tuple(p.shape for p in norm.parameters()) == ((cfg.embed_dim,),),
                 f"{call}: final_norm should be an RMSNorm(cfg.embed_dim): one weight of shape ({cfg.embed_dim},), no bias")
    head = getattr(model, "lm_head", None)
    check.expect(isinstance(head, nn.Module) and isinstance(getattr(head, "weight", None), torch.Tensor)
                 and tuple(head.weight.shape) == (cfg.vocab_size, cfg.embed_dim),
                 f"{call}: lm_head should be nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False)")
    check.expect(getattr(head, "bias", None) is None,
                 f"{call}: lm_head has a bias: Llama's head has none. Hint: bias=False")
    tied = head.weight is table.weight
    if tied and not cfg.tie_embeddings:
        check.fail(f"{call}: lm_head.weight is token_embedding.weight, but this config has tie_embeddings=False "
                   "(tie_word_embeddings false, as Llama 3.1 8B): the head is a matrix of its own. Tie only when "
                   "cfg.tie_embeddings is True")
    if not tied and cfg.tie_embeddings:
        check.fail(f"{call}: lm_head has a matrix of its own, but this config has tie_embeddings=True (as Llama 3.2 "
                   "1B): the head must be the token embedding itself. Hint: self.lm_head.weight = "
                   "self.token_embedding.weight when cfg.tie_embeddings")
    held = sum(p.numel() for p in model.parameters())
    expected = analysis.count_params(cfg).total
    check.expect(held == expected, f"{call} holds {held:,} parameters; this Llama has {expected:,} "
                 f"(difference {held - expected:+,}). Hint: {MODEL_NAMES_HINT}, and nothing else")


def _model_logits(reference: nn.Module, ids: torch.Tensor, *, final_norm: bool = True, scale: float = 1.0) -> torch.Tensor:
    """build(cfg)'s forward pass step by step, with switches for the usual mistakes."""
    h = reference.embed(ids) * scale  # (B, T, d)
    h = reference.layers(h)
    if final_norm:
        h = reference.norm(h)
    return reference.head(h)  # (B, T, V)


@exercise("Exercise 2 — assemble Llama", reference=ReferenceLlama)
def llama(check: Check, model_class: Callable[[ModelConfig], nn.Module]) -> None:
    for cfg in _model_configs(check):
        call = f"Llama(cfg) {_describe(cfg, model=True)}"
        model = check.call(model_class, cfg, what=call)
        _check_model_structure(check, model, cfg, call)
        with torch.random.fork_rng(devices=[]):
            reference = build(cfg, implementation="explicit").eval()
        weights = _random_weights(check, {name: tuple(p.shape) for name, p in reference.named_parameters()})
        with torch.no_grad():
            for name, parameter in reference.named_parameters():
                parameter.copy_(weights[name])
        _load(check, model, {model_name(name): tensor for name, tensor in weights.items()}, call)
        model.eval()
        for batch, length in ((2, cfg.max_seq_len), (1, 3)):
            ids = check.randint(0, cfg.vocab_size, batch, length)
            with torch.no_grad():
                expected = _model_logits(reference, ids)
                mistakes = {
                    "the final RMSNorm is not applied: run self.final_norm on the last layer's output, before the "
                    "head": _model_logits(reference, ids, final_norm=False),
                    "you scaled the token embeddings by sqrt(embed_dim) (Gemma does; Llama does not)":
                        _model_logits(reference, ids, scale=cfg.embed_dim**0.5),
                    "you returned probabilities; return the logits, with no softmax at the end": expected.softmax(-1),
                }
            what = f"{call} on token ids of shape ({batch}, {length})"
            got = check.call(model, ids, what=what)
            check.close_or_diagnose(got, expected, mistakes, what=f"logits of {what}", atol=ATOL, rtol=RTOL,
                                    hint="token_embedding, then every layer in order, then final_norm, then lm_head")


# -- Exercise 3: the parameter count from config.json --------------------------------------------

@contextlib.contextmanager
def _counting_by_hand() -> Iterator[None]:
    """While the learner's formula runs, the library's counter and model building refuse to work."""

    def refuse_count(*args: object, **kwargs: object) -> None:
        raise CheckFailed("your code calls olm_edu.analysis's counters (count_params), which is not allowed here: "
                          "Exercise 3 asks you to write the formula")

    def refuse_module(*args: object, **kwargs: object) -> None:
        raise CheckFailed("your code builds a model (an nn.Module), which is not allowed here: Exercise 3 asks you to "
                          "write the formula from the config's numbers")

    saved = [(analysis, "count_params"), (analysis, "_attention_params"), (nn.Module, "__init__")]
    originals = [getattr(owner, name) for owner, name in saved]
    analysis.count_params = analysis._attention_params = refuse_count
    nn.Module.__init__ = refuse_module
    try:
        yield
    finally:
        for (owner, name), original in zip(saved, originals):
            setattr(owner, name, original)


def _count_mistakes(cfg: ModelConfig) -> dict[int, str]:
    """got - expected for the usual mistakes -> what to say."""
    d, layers, vocab, f = cfg.embed_dim, cfg.num_layers, cfg.vocab_size, cfg.hidden_dim
    heads, kv_heads, head_dim = cfg.num_heads, cfg.kv_heads, cfg.head_size
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    attention_biases = layers * (q_width + 2 * kv_width + d)
    mlp_biases = layers * (2 * f + d)
    mistakes: dict[int, list[str]] = {}

    def add(delta: int, message: str) -> None:
        if delta != 0:
            mistakes.setdefault(delta, []).append(message)

    if cfg.tie_embeddings:
        add(vocab * d, "tie_word_embeddings is true (as in Llama 3.2 1B): the head is the embedding matrix itself, "
                       "so count it once")
    else:
        add(-vocab * d, "tie_word_embeddings is false (as in Llama 3.1 8B): the head is a vocab_size x hidden_size "
                        "matrix of its own; count it")
    add(layers * 2 * d * (q_width - kv_width),
        "you sized k_proj and v_proj with num_attention_heads; Llama 3 uses grouped-query attention: each maps "
        "hidden_size to num_key_value_heads * head_dim")
    add(-d, "the final norm is missing (model.norm: hidden_size weights)")
    add(-2 * d * layers, "the two RMSNorms of each layer are missing (2 * hidden_size per layer)")
    add(d * (2 * layers + 1), "you gave the norms a bias; RMSNorm has a weight only")
    add(attention_biases, "you counted biases on q, k, v and o; Llama has none (attention_bias is false)")
    add(mlp_biases, "you counted biases in the feed-forward; Llama has none (mlp_bias is false)")
    add(attention_biases + mlp_biases, "you counted biases; Llama has none (attention_bias and mlp_bias are false)")
    add(attention_biases + mlp_biases + d * (2 * layers + 1),
        "you counted biases, in the linear layers and the norms; Llama has none")
    add(layers * 3 * d * (4 * d - f), "you used 4 * hidden_size for the feed-forward width (GPT-2's); Llama's is "
                                      "intermediate_size")
    add(-layers * d * f, "the feed-forward has three matrices (gate_proj, up_proj: hidden_size x intermediate_size; "
                         "down_proj: intermediate_size x hidden_size), not two")
    add(layers * (8 * d * d - 3 * d * f), "you counted GPT-2's MLP (two matrices, 4 * hidden_size wide); Llama's is "
                                          "SwiGLU: three matrices, intermediate_size wide")
    add(cfg.max_seq_len * d, "you counted a position table (max_position_embeddings x hidden_size); Llama has none: "
                             "RoPE has no parameters")
    plain_head_dim = d // heads
    add(layers * 2 * d * (heads + kv_heads) * (plain_head_dim - head_dim),
        f"you took head_dim = hidden_size // num_attention_heads = {plain_head_dim}, but this config.json gives "
        f"head_dim = {head_dim}: use config['head_dim'] when the key is there")
    # Different mistakes can give the same difference (in Llama 3.1 8B, num_heads for K/V and a 4d
    # feed-forward both add 805,306,368): name every one that fits.
    return {delta: messages[0] if len(messages) == 1 else
            "one of these mistakes, which give the same difference here: " + "; or ".join(messages)
            for delta, messages in mistakes.items()}


def _random_config(check: Check, with_head_dim: bool) -> dict:
    def pick(options: list) -> object:
        return options[int(check.randint(0, len(options)).item())]

    heads = pick([4, 8, 12, 16, 24, 32, 64])
    kv_heads = pick([k for k in (1, 2, 4, 8, 16) if heads % k == 0 and k < heads])
    head_dim = pick([32, 64, 128])
    hidden = heads * head_dim
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "attention_bias": False, "mlp_bias": False,
        "hidden_act": "silu", "hidden_size": hidden,
        "intermediate_size": 256 * int(check.randint(1, 4 * hidden // 256 + 8).item()),
        "max_position_embeddings": pick([2048, 8192, 131072]), "num_attention_heads": heads,
        "num_hidden_layers": int(check.randint(1, 81).item()), "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": bool(check.randint(0, 2).item()),
        "vocab_size": int(check.randint(1000, 200_000).item()),
    }
    if with_head_dim:  # a head_dim that is not hidden_size // num_attention_heads
        config["head_dim"] = head_dim * 2 if head_dim < 128 else head_dim // 2
    return config


def _preset_json(name: str) -> dict:
    import json
    from olm_edu.models.presets import CONFIG_DIR

    return json.loads((CONFIG_DIR / f"{name}.json").read_text(encoding="utf-8"))


@exercise("Exercise 3 — count Llama's parameters from config.json", reference=reference_llama_params)
def param_count(check: Check, fn: Callable[[dict], int]) -> None:
    configs = [(name, _preset_json(name)) for name in ("Llama-3.1-8B", "Llama-3.2-1B")]
    configs += [("a random Llama config", _random_config(check, False)) for _ in range(4 if not check.hidden else 10)]
    # the exercise asks to read head_dim when the key is present: one such config in view, more when grading
    configs += [("a random Llama config with its own head_dim", _random_config(check, True))
                for _ in range(1 if not check.hidden else 4)]
    if check.hidden:
        configs += [(name, _preset_json(name)) for name in ("Llama-3.1-70B", "Llama-3.1-405B")]
    wrong = []  # (call, expected, got, the mistakes that fit)
    for label, config in configs:
        cfg = from_hf_config(config)
        sizes = {key: config[key] for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                              "num_key_value_heads", "intermediate_size", "vocab_size",
                                              "tie_word_embeddings", "head_dim") if key in config}
        call = f"llama_params(config) for {label} ({sizes})"
        expected = analysis.count_params(cfg).total
        given = dict(config)
        with _counting_by_hand():
            got = check.call(fn, given, what=call)
        check.expect(given == config, f"{call} changed the config dict it was given; only read it")
        if isinstance(got, float) and got == expected:
            check.fail(f"{call} returned the float {got!r}; return an int (use // rather than /)")
        check.expect(isinstance(got, int) and not isinstance(got, bool),
                     f"{call} should return an int, got {type(got).__name__}")
        if got != expected:
            wrong.append((call, expected, got, _count_mistakes(cfg).get(got - expected)))
        else:
            check.passed += 1
    if wrong:
        # Report a config where the difference names one mistake; another may fit two at once.
        named = [case for case in wrong if case[3] and not case[3].startswith("one of these")]
        call, expected, got, mistake = (named or [case for case in wrong if case[3]] or wrong)[0]
        if mistake:
            check.fail(f"{call} should be {expected:,}, yours is {got:,}: {mistake}")
        check.fail(f"{call} should be {expected:,}, yours is {got:,} (off by {got - expected:+,}). Hint: the token "
                   "table, then per layer q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj and two "
                   "RMSNorms, then the final RMSNorm and (untied only) the head")


# -- Exercise 4: transformers' names -> the lesson's ---------------------------------------------

_PROJECTIONS = (("self_attn.q_proj", "attn.q_proj"), ("self_attn.k_proj", "attn.k_proj"),
                ("self_attn.v_proj", "attn.v_proj"), ("self_attn.o_proj", "attn.o_proj"),
                ("mlp.gate_proj", "mlp.gate_proj"), ("mlp.up_proj", "mlp.up_proj"), ("mlp.down_proj", "mlp.down_proj"))


def _hf_shapes(cfg: ModelConfig, with_head: bool) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.embed_dim)}
    layer_shapes = _expected_shapes(cfg)
    for i in range(cfg.num_layers):
        prefix = f"model.layers.{i}."
        shapes[prefix + "input_layernorm.weight"] = (cfg.embed_dim,)
        for theirs, ours in _PROJECTIONS:
            shapes[prefix + theirs + ".weight"] = layer_shapes[ours + ".weight"]
        shapes[prefix + "post_attention_layernorm.weight"] = (cfg.embed_dim,)
    shapes["model.norm.weight"] = (cfg.embed_dim,)
    if with_head:
        shapes["lm_head.weight"] = (cfg.vocab_size, cfg.embed_dim)
    return shapes


def _reference_convert(hf: dict[str, torch.Tensor], num_layers: int) -> dict[str, tuple[torch.Tensor, str]]:
    """The lesson's name -> (tensor, the checkpoint name it comes from)."""
    ours = {"token_embedding.weight": (hf["model.embed_tokens.weight"], "model.embed_tokens.weight"),
            "final_norm.weight": (hf["model.norm.weight"], "model.norm.weight")}
    if "lm_head.weight" in hf:
        ours["lm_head.weight"] = (hf["lm_head.weight"], "lm_head.weight")
    else:
        ours["lm_head.weight"] = (hf["model.embed_tokens.weight"], "model.embed_tokens.weight (the tied head)")
    for i in range(num_layers):
        theirs, mine = f"model.layers.{i}.", f"layers.{i}."
        ours[mine + "attn_norm.weight"] = (hf[theirs + "input_layernorm.weight"], theirs + "input_layernorm.weight")
        ours[mine + "mlp_norm.weight"] = (hf[theirs + "post_attention_layernorm.weight"],
                                          theirs + "post_attention_layernorm.weight")
        for hf_name, my_name in _PROJECTIONS:
            ours[mine + my_name + ".weight"] = (hf[theirs + hf_name + ".weight"], theirs + hf_name + ".weight")
    return ours


def _find_source(tensor: torch.Tensor, hf: dict[str, torch.Tensor]) -> str | None:
    for name, source in hf.items():
        if source.shape == tensor.shape and torch.equal(source, tensor):
            return name
    for name, source in hf.items():
        if source.dim() == 2 and source.t().shape == tensor.shape and torch.equal(source.t(), tensor):
            return f"{name} transposed"
    return None


def _conversion_hint(name: str, source: str | None, expected_source: str) -> str:
    if source is None:
        return f"it should be {expected_source}"
    if source.endswith(" transposed"):
        return (f"you gave {source}. Llama's checkpoints store every matrix in nn.Linear's own (out, in) layout: copy "
                "it as it is (GPT-2's Conv1D transposes of lesson 08 do not apply here)")
    if source.endswith("post_attention_layernorm.weight") and expected_source.endswith("input_layernorm.weight"):
        return (f"you gave {source}. Despite its name, post_attention_layernorm is the norm *before* the "
                "feed-forward (it comes after the attention sub-layer): it belongs to mlp_norm; input_layernorm, "
                "the norm before the attention, belongs to attn_norm")
    if source.endswith("input_layernorm.weight") and expected_source.endswith("post_attention_layernorm.weight"):
        return (f"you gave {source}. input_layernorm is the norm before the attention (attn_norm); the norm before "
                "the feed-forward is post_attention_layernorm, named for coming after the attention sub-layer")
    if {source.rsplit(".", 2)[-2], expected_source.rsplit(".", 2)[-2]} == {"gate_proj", "up_proj"}:
        return (f"you gave {source}: gate_proj and up_proj are swapped. SwiGLU is down(silu(gate(x)) * up(x)); the "
                "activation goes on gate_proj, so the names must map one to one")
    if name == "lm_head.weight" and source == "model.embed_tokens.weight":
        return ("you gave model.embed_tokens.weight, but this checkpoint has its own lm_head.weight: its head is "
                "untied (tie_word_embeddings false, as Llama 3.1 8B). Use the embedding only when the checkpoint "
                "has no lm_head.weight")
    return f"you gave {source}, but it should be {expected_source}"


def _convert_cases(check: Check) -> list[tuple[ModelConfig, bool]]:
    cases = [(llama_config(vocab_size=23, num_layers=2, embed_dim=16, num_heads=4, num_kv_heads=2, hidden_dim=40), True),
             (llama_config(vocab_size=29, num_layers=3, embed_dim=16, num_heads=2, num_kv_heads=1, hidden_dim=48,
                           tie_embeddings=True), False)]
    if check.hidden:
        cases += [(llama_config(vocab_size=31, num_layers=1, embed_dim=24, num_heads=3, num_kv_heads=None,
                                hidden_dim=64), True),
                  (llama_config(vocab_size=37, num_layers=4, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=12,
                                hidden_dim=80, tie_embeddings=True), False)]
    return cases


@exercise("Exercise 4 — transformers' Llama names to the lesson's", reference=reference_convert_llama_state_dict)
def convert_state_dict(check: Check, fn: Callable, model_class: type | None = None) -> None:
    for cfg, with_head in _convert_cases(check):
        hf = {name: check.randn(*shape) for name, shape in _hf_shapes(cfg, with_head).items()}
        originals = {name: tensor.clone() for name, tensor in hf.items()}
        head = "an untied head (lm_head.weight in the dict)" if with_head else "a tied head (no lm_head.weight)"
        call = f"convert_llama_state_dict(a {cfg.num_layers}-layer checkpoint with {head}, num_layers={cfg.num_layers})"
        hint = ("the names are transformers' own, e.g. 'model.layers.0.self_attn.q_proj.weight'; layers are "
                "numbered 0..num_layers-1")
        if not with_head:
            hint = ("this checkpoint's head is tied, so the dict has no 'lm_head.weight': when it is absent, the head "
                    "is 'model.embed_tokens.weight'; " + hint)
        got = check.call(fn, hf, cfg.num_layers, what=call, hint=hint)
        check.expect(sorted(hf) == sorted(originals) and all(torch.equal(hf[n], originals[n]) for n in originals),
                     f"{call} changed the dict it was given; build and return a new dict")
        if not isinstance(got, dict):
            check.fail(f"{call} should return a dict {{name: tensor}}, got {type(got).__name__}")
        expected = _reference_convert(originals, cfg.num_layers)
        missing = [name for name in expected if name not in got]
        if "lm_head.weight" in missing and not with_head:
            check.fail(f"{call}: lm_head.weight is missing. A checkpoint with a tied head (tie_word_embeddings true, "
                       "as Llama 3.2 1B) stores no lm_head.weight: the head is the embedding. Hint: when the dict has "
                       "no 'lm_head.weight', use 'model.embed_tokens.weight'")
        if "final_norm.weight" in missing:
            check.fail(f"{call}: final_norm.weight is missing. Hint: it is model.norm.weight, the final RMSNorm")
        if missing:
            check.fail(f"{call}: {len(missing)} names missing, e.g. {missing[:4]}. Hint: produce every parameter name "
                       "of the lesson's Llama (Llama(cfg).state_dict().keys()), for every layer 0..num_layers-1")
        unexpected = sorted(name for name in got if name not in expected)
        if unexpected:
            check.fail(f"{call}: unexpected names {unexpected[:4]}. Hint: return only the lesson model's names "
                       "(token_embedding, layers.i.attn_norm / attn / mlp_norm / mlp, final_norm, lm_head)")
        for name, (want, source) in expected.items():
            have = got[name]
            if not isinstance(have, torch.Tensor):
                check.fail(f"{call}: {name} should be a tensor, got {type(have).__name__}")
            if not (have.shape == want.shape and torch.equal(have, want)):
                found = _find_source(have, originals)
                shape_note = "" if have.shape == want.shape else f" (shape {tuple(have.shape)}, expected {tuple(want.shape)})"
                check.fail(f"{call}: {name} is wrong{shape_note}: " + _conversion_hint(name, found, source))
            check.passed += 1
    if model_class is not None:
        _logits_match_transformers(check, fn, model_class)


def _logits_match_transformers(check: Check, fn: Callable, model_class: type) -> None:
    """Load a perturbed transformers Llama through `fn` into `model_class`; compare the logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(vocab_size=53, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                            rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=dict(LLAMA3_SCALING),
                            tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    with torch.random.fork_rng(devices=[]):
        reference = LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            noise = check.randn(*parameter.shape)
            parameter.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.1 * noise)
    converted = check.call(fn, dict(reference.state_dict()), 2, what="the state dict of a transformers LlamaForCausalLM")
    cfg = from_hf_config(hf_config)
    model = check.call(model_class, cfg, what="building the lesson's Llama")
    try:
        model.load_state_dict(converted, strict=True)
    except Exception as error:  # noqa: BLE001 - the learner's dict, reported
        check.fail(f"loading your converted dict into the lesson's Llama failed: {error}")
    ids = check.randint(0, cfg.vocab_size, 2, cfg.max_seq_len)
    with torch.no_grad():
        expected = reference(ids).logits
        got = model.eval()(ids)
    check.close(got, expected, what="logits of the lesson's Llama loaded with your conversion vs transformers",
                atol=ATOL, rtol=RTOL, hint="every tensor must land under the right name")
