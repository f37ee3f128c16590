"""Checks for lesson 08 — Real GPT-2 weights (the Hugging Face layout).

References are written here from the layout itself: a Conv1D computes x @ W + b with W stored
(in_features, out_features); GPT-2's c_attn holds q, k and v side by side, as three consecutive
blocks of n_embd output columns; the head is tied to `transformer.wte.weight` and absent from the
files. Conversions only move numbers, so tensors are compared exactly; when one is wrong the
check looks for the tensor you gave among the likely mix-ups (not transposed, reshaped instead of
transposed, interleaved q/k/v, another block) and names it. The end-to-end check loads your
conversion into the lesson's model and compares its logits with `transformers` at atol=1e-5.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from olm_edu.grading import Check, exercise

QKV = ("q", "k", "v")


# -- Exercise 1: Conv1D -> nn.Linear ---------------------------------------------------------------

def reference_conv1d_to_linear(weight: torch.Tensor) -> torch.Tensor:
    """Conv1D's (in, out) weight as nn.Linear's (out, in), a new tensor."""
    return weight.t().contiguous()


@exercise("Exercise 1 — Conv1D weight to nn.Linear", reference=reference_conv1d_to_linear)
def conv1d_to_linear(check: Check, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    cases = [((4, 6), torch.float32), ((6, 4), torch.float32), ((5, 5), torch.float32), ((48, 144), torch.float32)]
    if check.hidden:
        cases += [((1, 7), torch.float32), ((96, 384), torch.float32), ((384, 96), torch.float32),
                  ((3, 5), torch.float64)]
    for (fan_in, fan_out), dtype in cases:
        weight = check.randn(fan_in, fan_out, dtype=dtype)
        original = weight.clone()
        call = f"conv1d_to_linear(a Conv1D weight of shape ({fan_in}, {fan_out}))"
        got = check.call(fn, weight, what=call)
        check.expect(torch.equal(weight, original), f"{call} changed the weight it was given; return a new tensor")
        if not isinstance(got, torch.Tensor):
            check.fail(f"{call} should return a tensor, got {type(got).__name__}")
        if tuple(got.shape) != (fan_out, fan_in):
            hint = ("you returned it in the Conv1D layout (in, out); nn.Linear stores (out_features, in_features): "
                    "transpose it" if tuple(got.shape) == (fan_in, fan_out) else "nn.Linear stores (out_features, "
                    "in_features)")
            check.fail(f"{call}: expected shape ({fan_out}, {fan_in}), got {tuple(got.shape)}. Hint: {hint}")
        # A conversion only moves numbers: the values must be exactly the transpose (any memory layout).
        if not torch.equal(got, original.t()):
            if torch.equal(got, original):
                check.fail(f"{call}: you returned the weight unchanged. It is square, so the shape looks right, but "
                           "nn.Linear computes x @ W.T: the numbers must be transposed (weight.t()). A missing "
                           "transpose on a square matrix loads without any error and silently computes nonsense")
            if torch.equal(got, original.reshape(fan_out, fan_in)):
                check.fail(f"{call}: you reshaped the weight. reshape/view keeps the numbers in memory order and "
                           "re-cuts them into rows of a new length, which mixes up rows and columns; transposing "
                           "swaps the axes. Hint: weight.t() (or weight.T)")
            check.fail(f"{call}: your weight should hold the Conv1D weight's numbers transposed, so that "
                       "F.linear(x, your_weight) equals x @ weight. Hint: the nn.Linear weight is the transpose of the "
                       "Conv1D weight")
        check.passed += 1


# -- Exercise 2: split the fused q/k/v --------------------------------------------------------------

def _reference_split(weight: torch.Tensor, bias: torch.Tensor, n_embd: int):
    return tuple((weight[:, i * n_embd:(i + 1) * n_embd].t(), bias[i * n_embd:(i + 1) * n_embd]) for i in range(3))


def _qkv_candidates(weight: torch.Tensor, bias: torch.Tensor, n_embd: int) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """Likely mix-ups for each of the weight and the bias, named for the message."""
    interleaved_w = weight.reshape(n_embd, n_embd, 3)
    interleaved_b = bias.reshape(n_embd, 3)
    weights, biases = [], []
    for i, name in enumerate(QKV):
        block = weight[:, i * n_embd:(i + 1) * n_embd]
        weights += [
            (f"the {name} block in the Conv1D layout, not transposed", block),
            (f"the {name} block (columns {i * n_embd}..{(i + 1) * n_embd - 1}) transposed", block.t()),
            (f"an interleaved split (every third column, starting at column {i})", interleaved_w[..., i].t()),
            ("an interleaved split, not transposed", interleaved_w[..., i]),
        ]
        biases += [(f"the {name} block of the bias", bias[i * n_embd:(i + 1) * n_embd]),
                   (f"an interleaved split of the bias (every third entry from entry {i})", interleaved_b[:, i])]
    return {"weight": weights, "bias": biases}


def reference_split_qkv(c_attn_weight: torch.Tensor, c_attn_bias: torch.Tensor, n_embd: int):
    """Exercise 2: ((q_weight, q_bias), (k_weight, k_bias), (v_weight, v_bias)) in nn.Linear's layout."""
    return tuple((w.contiguous(), b.clone()) for w, b in _reference_split(c_attn_weight, c_attn_bias, n_embd))


@exercise("Exercise 2 — split the fused q/k/v matrix", reference=reference_split_qkv)
def split_qkv(check: Check, fn: Callable) -> None:
    sizes = [6, 4, 48] + ([12, 1, 96] if check.hidden else [])
    for n_embd in sizes:
        weight = check.randn(n_embd, 3 * n_embd)
        bias = check.randn(3 * n_embd)
        originals = weight.clone(), bias.clone()
        call = f"split_qkv(c_attn weight ({n_embd}, {3 * n_embd}), bias ({3 * n_embd},), n_embd={n_embd})"
        got = check.call(fn, weight, bias, n_embd, what=call)
        check.expect(torch.equal(weight, originals[0]) and torch.equal(bias, originals[1]),
                     f"{call} changed the tensors it was given; return new ones")
        if not (isinstance(got, (tuple, list)) and len(got) == 3
                and all(isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in got)):
            check.fail(f"{call} should return three (weight, bias) pairs: ((q_weight, q_bias), (k_weight, k_bias), "
                       f"(v_weight, v_bias)); got {type(got).__name__}")
        expected = _reference_split(*originals, n_embd)
        candidates = _qkv_candidates(*originals, n_embd)
        for name, (got_weight, got_bias), (want_weight, want_bias) in zip(QKV, got, expected):
            for kind, have, want in (("weight", got_weight, want_weight), ("bias", got_bias, want_bias)):
                what = f"{call}: the {name} {kind}"
                if not isinstance(have, torch.Tensor):
                    check.fail(f"{what} should be a tensor, got {type(have).__name__}")
                if tuple(have.shape) != tuple(want.shape):
                    hint = ("q, k and v sit side by side along the *output* axis, dim 1 of the Conv1D weight "
                            "(each n_embd columns wide); split along dim 1, then transpose each block"
                            if kind == "weight" else "the bias holds q, k, v one after another, n_embd entries each")
                    check.fail(f"{what} has shape {tuple(have.shape)}, expected {tuple(want.shape)}. Hint: {hint}")
                if not torch.equal(have, want):
                    mixup = next((label for label, tensor in candidates[kind]
                                  if tensor.shape == have.shape and torch.equal(tensor, have)), None)
                    found = f" You gave {mixup}." if mixup else ""
                    check.fail(f"{what} is wrong.{found} Hint: q, k, v are the three consecutive blocks of n_embd "
                               "columns of the Conv1D weight (q = columns 0..n_embd-1, then k, then v), and each "
                               "block must be transposed into nn.Linear's (out, in) layout")
                check.passed += 1


# -- Exercise 3: the whole state dict ---------------------------------------------------------------

def _hf_state_dict(check: Check, n_layer: int, n_embd: int, vocab_size: int, n_positions: int) -> dict:
    """Random tensors with the names and shapes of a GPT-2 checkpoint as transformers writes it."""
    shapes = {"transformer.wte.weight": (vocab_size, n_embd), "transformer.wpe.weight": (n_positions, n_embd),
              "transformer.ln_f.weight": (n_embd,), "transformer.ln_f.bias": (n_embd,)}
    for i in range(n_layer):
        prefix = f"transformer.h.{i}."
        shapes.update({
            prefix + "ln_1.weight": (n_embd,), prefix + "ln_1.bias": (n_embd,),
            prefix + "attn.c_attn.weight": (n_embd, 3 * n_embd), prefix + "attn.c_attn.bias": (3 * n_embd,),
            prefix + "attn.c_proj.weight": (n_embd, n_embd), prefix + "attn.c_proj.bias": (n_embd,),
            prefix + "ln_2.weight": (n_embd,), prefix + "ln_2.bias": (n_embd,),
            prefix + "mlp.c_fc.weight": (n_embd, 4 * n_embd), prefix + "mlp.c_fc.bias": (4 * n_embd,),
            prefix + "mlp.c_proj.weight": (4 * n_embd, n_embd), prefix + "mlp.c_proj.bias": (n_embd,),
        })
    return {name: check.randn(*shape) for name, shape in shapes.items()}


def _reference_convert(hf: dict, n_layer: int) -> dict[str, tuple[torch.Tensor, str]]:
    """Our name -> (tensor, where it comes from)."""
    n_embd = hf["transformer.wte.weight"].shape[1]
    ours = {
        "token_embedding.weight": (hf["transformer.wte.weight"], "transformer.wte.weight"),
        "position_embedding.weight": (hf["transformer.wpe.weight"], "transformer.wpe.weight"),
        "final_norm.weight": (hf["transformer.ln_f.weight"], "transformer.ln_f.weight"),
        "final_norm.bias": (hf["transformer.ln_f.bias"], "transformer.ln_f.bias"),
        "lm_head.weight": (hf["transformer.wte.weight"], "transformer.wte.weight (the tied head)"),
    }
    for i in range(n_layer):
        theirs, mine = f"transformer.h.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            ours[mine + f"norm1.{kind}"] = (hf[theirs + f"ln_1.{kind}"], theirs + f"ln_1.{kind}")
            ours[mine + f"norm2.{kind}"] = (hf[theirs + f"ln_2.{kind}"], theirs + f"ln_2.{kind}")
        parts = _reference_split(hf[theirs + "attn.c_attn.weight"], hf[theirs + "attn.c_attn.bias"], n_embd)
        for name, (weight, bias) in zip(QKV, parts):
            ours[mine + f"attn.{name}_proj.weight"] = (weight, theirs + f"attn.c_attn.weight, its {name} block, transposed")
            ours[mine + f"attn.{name}_proj.bias"] = (bias, theirs + f"attn.c_attn.bias, its {name} block")
        for hf_name, my_name in (("attn.c_proj", "attn.out_proj"), ("mlp.c_fc", "mlp.up_proj"),
                                 ("mlp.c_proj", "mlp.down_proj")):
            ours[mine + f"{my_name}.weight"] = (hf[theirs + f"{hf_name}.weight"].t(), theirs + f"{hf_name}.weight, transposed")
            ours[mine + f"{my_name}.bias"] = (hf[theirs + f"{hf_name}.bias"], theirs + f"{hf_name}.bias")
    return ours


def _find_source(tensor: torch.Tensor, hf: dict) -> str | None:
    """Name the checkpoint tensor (or transposed / sliced version) that `tensor` equals."""
    n_embd = hf["transformer.wte.weight"].shape[1]
    for name, source in hf.items():
        options = [(name, source)]
        if source.dim() == 2:
            options.append((f"{name} transposed", source.t()))
        if name.endswith("c_attn.weight"):
            for i, part in enumerate(QKV):
                block = source[:, i * n_embd:(i + 1) * n_embd]
                options += [(f"{name}, its {part} block, not transposed", block)]
                options += [(f"{name} split into interleaved columns (every third column from {i}), transposed",
                             source.reshape(n_embd, n_embd, 3)[..., i].t())]
        if name.endswith("c_attn.bias"):
            for i, part in enumerate(QKV):
                options += [(f"{name}, its {part} block", source[i * n_embd:(i + 1) * n_embd])]
        for label, option in options:
            if option.shape == tensor.shape and torch.equal(option, tensor):
                return label
    return None


def _conversion_hint(source: str | None, expected_source: str) -> str:
    if source is None:
        return f"it should be {expected_source}"
    if expected_source == f"{source}, transposed":
        return (f"you gave {source} as stored; Conv1D keeps its weight as (in, out), nn.Linear as (out, in). "
                "Hint: transpose it with conv1d_to_linear")
    if "interleaved" in source:
        return f"you gave {source}; q, k, v are three consecutive blocks of n_embd columns. Hint: use split_qkv"
    if "not transposed" in source:
        return f"you gave {source}; it must be transposed into nn.Linear's layout. Hint: use split_qkv"
    return f"you gave {source}, but it should be {expected_source}"


def _expected_config(n_layer: int) -> dict:
    return dict(vocab_size=37, max_seq_len=16, embed_dim=24, num_layers=n_layer, num_heads=4)


def reference_convert_gpt2_state_dict(hf_state_dict: dict, n_layer: int) -> dict[str, torch.Tensor]:
    """Exercise 3's conversion: transformers' GPT-2 names and layouts -> the lesson's GPT2."""
    return {name: tensor.contiguous() for name, (tensor, _) in _reference_convert(hf_state_dict, n_layer).items()}


@exercise("Exercise 3 — convert a GPT-2 state dict", reference=reference_convert_gpt2_state_dict)
def convert_state_dict(check: Check, fn: Callable, model_class: type | None = None) -> None:
    settings = [(2, 12, 23, 10, False)] + ([(3, 24, 41, 12, True), (1, 6, 5, 4, False)] if check.hidden else [])
    for n_layer, n_embd, vocab_size, n_positions, with_head in settings:
        hf = _hf_state_dict(check, n_layer, n_embd, vocab_size, n_positions)
        if with_head:  # transformers' own state_dict() repeats the tied head; the files leave it out
            hf["lm_head.weight"] = hf["transformer.wte.weight"]
        originals = {name: tensor.clone() for name, tensor in hf.items()}
        call = f"convert_gpt2_state_dict(a {n_layer}-layer checkpoint with n_embd={n_embd}, n_layer={n_layer})"
        got = check.call(fn, hf, n_layer, what=call,
                         hint="the names are transformers' in-memory names with the 'transformer.' prefix, e.g. "
                              "'transformer.h.0.attn.c_attn.weight'; layers are numbered 0..n_layer-1")
        check.expect(sorted(hf) == sorted(originals) and all(torch.equal(hf[n], originals[n]) for n in originals),
                     f"{call} changed the dict it was given; build and return a new dict")
        if not isinstance(got, dict):
            check.fail(f"{call} should return a dict {{name: tensor}}, got {type(got).__name__}")
        expected = _reference_convert(originals, n_layer)
        missing = [name for name in expected if name not in got]
        unexpected = sorted(name for name in got if name not in expected)
        if "lm_head.weight" in missing:
            check.fail(f"{call}: lm_head.weight is missing. GPT-2's files have no lm_head because the output head is "
                       "tied to the token embedding. Hint: set it to transformer.wte.weight")
        if missing:
            check.fail(f"{call}: {len(missing)} names missing, e.g. {missing[:4]}. Hint: produce every name of the "
                       "lesson's model (GPT2(...).state_dict().keys()), for every layer 0..n_layer-1")
        if unexpected:
            check.fail(f"{call}: unexpected names {unexpected[:4]}. Hint: return only the lesson model's names "
                       "(token_embedding, position_embedding, blocks.i...., final_norm, lm_head), not the file's")
        for name, (want, source) in expected.items():
            have = got[name]
            if not isinstance(have, torch.Tensor):
                check.fail(f"{call}: {name} should be a tensor, got {type(have).__name__}")
            if tuple(have.shape) != tuple(want.shape):
                transposed = tuple(have.shape) == tuple(want.shape[::-1])
                if transposed:
                    hint = "it looks transposed: Conv1D stores (in, out), nn.Linear wants (out, in)"
                elif any(f"attn.{part}_proj." in name for part in QKV):
                    hint = (f"q/k/v split along the wrong axis? It should be {source}: q, k, v sit side by side "
                            "along the output axis (dim 1 of c_attn.weight), n_embd columns each. Hint: use split_qkv")
                else:
                    hint = f"it should be {source}"
                check.fail(f"{call}: {name} has shape {tuple(have.shape)}, expected {tuple(want.shape)}; {hint}")
            if not torch.equal(have, want):
                check.fail(f"{call}: {name} is wrong: " + _conversion_hint(_find_source(have, originals), source))
            check.passed += 1
    if model_class is not None:
        _logits_match_transformers(check, fn, model_class)


def _logits_match_transformers(check: Check, fn: Callable, model_class: type) -> None:
    """Load a perturbed transformers GPT-2 through `fn` into `model_class`; compare logits."""
    from transformers import GPT2Config, GPT2LMHeadModel

    settings = _expected_config(2)
    config = GPT2Config(vocab_size=settings["vocab_size"], n_positions=settings["max_seq_len"],
                        n_embd=settings["embed_dim"], n_layer=2, n_head=settings["num_heads"],
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng(devices=[]):  # leave the notebook's random state alone
        reference = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            noise = check.randn(*parameter.shape)
            if ".ln_" in name and name.endswith("weight"):
                parameter.copy_(1.0 + 0.2 * noise)  # norms away from 1
            else:
                parameter.copy_((0.2 if name.endswith("bias") else 0.1) * noise)  # biases away from 0
    hf = {name: tensor for name, tensor in reference.state_dict().items() if name != "lm_head.weight"}
    converted = check.call(fn, hf, 2, what="the state dict of a transformers GPT2LMHeadModel")
    model = check.call(model_class, what="building the lesson's GPT2", **settings)
    try:
        model.load_state_dict(converted, strict=True)
    except Exception as error:  # noqa: BLE001 - the learner's dict, reported
        check.fail(f"loading your converted dict into the lesson's GPT2 failed: {error}")
    ids = check.randint(0, settings["vocab_size"], 2, settings["max_seq_len"])
    with torch.no_grad():
        expected = reference(ids).logits
        got = model.eval()(ids)
    check.close(got, expected, what="logits of the lesson's GPT2 loaded with your conversion vs transformers",
                atol=1e-5, rtol=1e-5, hint="every tensor must land under the right name and in the right layout")
