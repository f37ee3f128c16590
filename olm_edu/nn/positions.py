"""Where a token is: learned and sinusoidal tables, rotary embeddings (RoPE) and ALiBi.

Attention by itself is blind to order: permute the tokens and every output is permuted the
same way. Each scheme below gives the model the position `t` of a token (0, 1, 2, ...).

Absolute tables (GPT-2, "Attention is all you need")
----------------------------------------------------
A table `P` of shape (max_seq_len, embed_dim) is added to the token embeddings:
`h_t = E[token_t] + P[t]`.

- learned (GPT-2): `P` is a parameter trained with the rest of the model.
- sinusoidal: `P` is fixed. With d = embed_dim and i = 0 .. d/2 - 1,

      P[t, 2i]     = sin(t / 10000^(2i/d))
      P[t, 2i + 1] = cos(t / 10000^(2i/d))

  Each pair of dimensions is a clock turning at its own speed, from one turn every 2*pi
  tokens (i = 0) to one turn every 2*pi*10000 tokens.

A table has max_seq_len rows and nothing beyond, so a longer sequence is an error.

Rotary position embedding (RoPE: Llama, Qwen, Mistral, Gemma)
-------------------------------------------------------------
Instead of adding a vector, RoPE rotates the query and the key of each head. The rotated part
of a head has rotary_dim = d dimensions, cut into d/2 pairs; pair i turns at the frequency

      f_i = theta^(-2i/d)        (theta = 10000 in the paper, 500000 in Llama 3)

and at position t it is rotated by the angle t * f_i:

      (a, b) -> (a cos(t f_i) - b sin(t f_i),  b cos(t f_i) + a sin(t f_i))

Two rotations compose into the rotation by the difference, so the score of a query at
position m with a key at position n, q_m . k_n = q R(m f)^T R(n f) k = q R((n - m) f) k,
depends only on the offset n - m: relative position for free, with no parameter.

Which dimensions form a pair is the *layout*; the maths is the same, the weights are not:

- "half" (transformers, GPT-NeoX): pair i is (x[i], x[i + d/2]).
  With x = [x1, x2] cut in halves, rotate_half(x) = [-x2, x1] and
  `x' = x * cos + rotate_half(x) * sin`, where cos = cos([t f_0 .. t f_{d/2-1}, t f_0 .. t f_{d/2-1}]).
- "interleaved" (Meta's original Llama code, GPT-J, GLM): pair i is (x[2i], x[2i + 1]),
  i.e. the complex number x[2i] + j x[2i+1] multiplied by e^(j t f_i).
  rotate_interleaved maps (x0, x1) -> (-x1, x0) and cos = cos([t f_0, t f_0, t f_1, t f_1, ...]).

Converting a checkpoint from one layout to the other reorders the rows of W_q and W_k inside
each head (see `interleaved_to_half_permutation`): that is what Meta-to-HF Llama conversion does.

Partial rotary (GPT-NeoX, Phi, GLM): only the first rotary_dim = head_dim * partial_rotary_factor
dimensions of each head are rotated; the rest pass through unchanged.

Stretching RoPE to longer contexts (the `scaling` dict of config.json, "rope_scaling")
-----------------------------------------------------------------------------------
Trained on L positions, a model has never seen the angles of positions beyond L. With s the
scaling `factor`:

- "linear" (position interpolation): f_i / s, i.e. position t is read as t / s.
- "dynamic" (dynamic NTK): leave the frequencies alone up to max_seq_len = L; for a sequence
  of length T > L, raise the base instead:
      theta' = theta * (s * T / L - (s - 1)) ^ (d / (d - 2))
  The high frequencies (small i) barely move, the lowest is divided by about s * T / L.
- "yarn": per pair, blend between the original frequency (extrapolate) and f_i / s
  (interpolate) by how many turns the pair makes over the original length L0: pairs that turn
  more than beta_fast times keep f_i, pairs that turn fewer than beta_slow times get f_i / s,
  a linear ramp in between. cos and sin are then multiplied by the attention factor
  0.1 ln(s) + 1 (sharpens the softmax, as temperature 1 / factor^2 on the scores).
- "llama3": by wavelength lambda_i = 2 pi / f_i against the original length L0: short
  wavelengths (lambda < L0 / high_freq_factor) keep f_i, long ones (lambda > L0 / low_freq_factor)
  get f_i / s, and the band in between is interpolated smoothly (no band when the two factors
  are equal, as in Llama 4 Scout).

`rope_parameters` computes these exactly as transformers does (same float32 steps), so a
model built here reproduces the Hugging Face logits.

ALiBi (BLOOM, MPT)
------------------
No embedding at all: head h adds a fixed linear penalty to its attention scores,

      score(i, j) += -m_h * (i - j)       (query position i, key position j <= i)

with geometric slopes m_h = 2^(-8h/n) for n heads (h = 1 .. n). The further back the key,
the larger the penalty; each head forgets at its own rate.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from olm_edu.choices import check_choice

__all__ = [
    "LearnedPositions",
    "sinusoidal_table",
    "SinusoidalPositions",
    "ROPE_TYPES",
    "ROPE_LAYOUTS",
    "validate_rope_scaling",
    "rope_parameters",
    "RotaryEmbedding",
    "rotate_half",
    "rotate_interleaved",
    "apply_rotary",
    "half_to_interleaved_permutation",
    "interleaved_to_half_permutation",
    "alibi_slopes",
    "alibi_bias",
]


# --------------------------------------------------------------------------------------------
# Absolute position tables
# --------------------------------------------------------------------------------------------


def _check_positions(positions: torch.Tensor, max_seq_len: int, table: str) -> None:
    """Refuse positions the table has no row for, with a message that says why."""
    if positions.is_floating_point():
        raise TypeError(f"positions must be integers (a LongTensor), got dtype={positions.dtype}")
    if positions.numel() == 0 or torch.compiler.is_compiling():  # compiled: no data-dependent test (graph break)
        return
    lowest, highest = int(positions.min()), int(positions.max())
    if lowest < 0:
        raise ValueError(f"position {lowest} is negative; positions must be in [0, {max_seq_len})")
    if highest >= max_seq_len:
        raise ValueError(
            f"position {highest} is beyond max_seq_len={max_seq_len} of the {table} (sequence too long)"
        )


class LearnedPositions(nn.Module):
    """A trained position table (GPT-2's `wpe`).

    weight: (max_seq_len, embed_dim), initialised N(0, 0.02) (the model builder may re-initialise).

    Shapes: positions (T,) or (B, T) -> (..., T, embed_dim)
    """

    def __init__(self, max_seq_len: int, embed_dim: int):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.embed_dim = embed_dim
        self.weight = nn.Parameter(torch.empty(max_seq_len, embed_dim))
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        _check_positions(positions, self.max_seq_len, "learned position table")
        return self.weight[positions]  # (..., T, embed_dim)

    def extra_repr(self) -> str:
        return f"max_seq_len={self.max_seq_len}, embed_dim={self.embed_dim}"


def sinusoidal_table(max_seq_len: int, embed_dim: int) -> torch.Tensor:
    """The fixed table of "Attention is all you need", in float32.

    P[t, 2i] = sin(t / 10000^(2i/d)),  P[t, 2i+1] = cos(t / 10000^(2i/d)),  d = embed_dim.

    Shapes: -> (max_seq_len, embed_dim)
    """
    if embed_dim <= 0 or embed_dim % 2:
        raise ValueError(f"embed_dim={embed_dim} must be a positive even number (sin and cos come in pairs)")
    # float64 so that large positions keep their digits; the table is stored in float32
    position = torch.arange(max_seq_len, dtype=torch.float64)[:, None]  # (T, 1)
    frequency = 10000.0 ** (-torch.arange(0, embed_dim, 2, dtype=torch.float64) / embed_dim)  # (d/2,)
    angle = position * frequency  # (T, d/2)
    table = torch.empty(max_seq_len, embed_dim, dtype=torch.float64)
    table[:, 0::2] = angle.sin()
    table[:, 1::2] = angle.cos()
    return table.float()


class SinusoidalPositions(nn.Module):
    """The sinusoidal table as a module (a non-persistent buffer: nothing to load or save).

    Shapes: positions (T,) or (B, T) -> (..., T, embed_dim)
    """

    def __init__(self, max_seq_len: int, embed_dim: int):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.embed_dim = embed_dim
        self.register_buffer("table", sinusoidal_table(max_seq_len, embed_dim), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        _check_positions(positions, self.max_seq_len, "sinusoidal position table")
        return self.table[positions]  # (..., T, embed_dim)

    def extra_repr(self) -> str:
        return f"max_seq_len={self.max_seq_len}, embed_dim={self.embed_dim}"


# --------------------------------------------------------------------------------------------
# RoPE frequencies
# --------------------------------------------------------------------------------------------

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")
ROPE_LAYOUTS = ("half", "interleaved")

# rope_type -> (required keys, optional keys) of the scaling dict, besides the general ones
_ROPE_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "default": (frozenset(), frozenset()),
    "linear": (frozenset({"factor"}), frozenset()),
    "dynamic": (frozenset({"factor"}), frozenset()),
    "yarn": (
        frozenset({"factor"}),
        frozenset(
            {
                "original_max_position_embeddings",
                "attention_factor",
                "beta_fast",
                "beta_slow",
                "mscale",
                "mscale_all_dim",
                "truncate",
            }
        ),
    ),
    "llama3": (
        frozenset({"factor", "low_freq_factor", "high_freq_factor"}),
        frozenset({"original_max_position_embeddings"}),
    ),
}
# Keys any scaling dict may carry. transformers 5 keeps rope_theta and partial_rotary_factor
# in the same dict; here they are the separate arguments `theta` and `rotary_dim`.
_GENERAL_KEYS = frozenset({"rope_type", "type", "rope_theta", "partial_rotary_factor"})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_rope_scaling(scaling: dict[str, Any] | None) -> str:
    """Check a config.json-style scaling dict and return its rope type.

    `scaling` is None (plain RoPE) or e.g. {"rope_type": "llama3", "factor": 8.0,
    "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192};
    the legacy key "type" is accepted for "rope_type". A missing rope type means "default".
    Raises ValueError naming the unknown rope type or the missing/unknown key and the allowed ones.
    """
    if scaling is None:
        return "default"
    if not isinstance(scaling, dict):
        raise ValueError(
            f"scaling must be a dict such as {{'rope_type': 'linear', 'factor': 2.0}} or None, got {scaling!r}"
        )
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if "type" in scaling and "rope_type" in scaling and scaling["type"] != scaling["rope_type"]:
        raise ValueError(
            f"scaling has type={scaling['type']!r} and rope_type={scaling['rope_type']!r}; they must agree"
        )
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unknown rope_type={rope_type!r} in scaling; allowed: {', '.join(ROPE_TYPES)}")

    required, optional = _ROPE_KEYS[rope_type]
    keys = set(scaling)
    missing = required - keys
    if missing:
        raise ValueError(
            f"scaling for rope_type={rope_type!r} is missing key(s) {sorted(missing)}; "
            f"required: {sorted(required)}, optional: {sorted(optional)}"
        )
    unknown = keys - required - optional - _GENERAL_KEYS
    if unknown:
        raise ValueError(
            f"unknown key(s) {sorted(unknown)} in scaling for rope_type={rope_type!r}; "
            f"allowed: {sorted(required | optional | _GENERAL_KEYS)}"
        )

    factor = scaling.get("factor")
    # yarn may leave factor None: it is then max_seq_len / original_max_position_embeddings
    if "factor" in required and not (factor is None and rope_type == "yarn"):
        if not _is_number(factor) or factor <= 0:
            raise ValueError(f"scaling factor={factor!r} for rope_type={rope_type!r} must be a positive number")
    original = scaling.get("original_max_position_embeddings")
    if original is not None and (not isinstance(original, int) or original <= 0):
        raise ValueError(f"original_max_position_embeddings={original!r} must be a positive int")
    if rope_type == "llama3":
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        # equal factors (Llama 4 Scout) leave no band: every wavelength is kept or stretched
        if not (_is_number(low) and _is_number(high) and high >= low):
            raise ValueError(
                f"llama3 scaling needs numbers high_freq_factor >= low_freq_factor, got "
                f"high_freq_factor={high!r}, low_freq_factor={low!r}"
            )
    if rope_type == "yarn":
        for key in ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
            if scaling.get(key) is not None and not _is_number(scaling[key]):
                raise ValueError(f"yarn scaling {key}={scaling[key]!r} must be a number or absent")
        if not isinstance(scaling.get("truncate", True), bool):
            raise ValueError(f"yarn scaling truncate={scaling['truncate']!r} must be True or False")
    return rope_type


def _frequencies(rotary_dim: int, theta: float | torch.Tensor) -> torch.Tensor:
    """f_i = 1 / theta^(2i/d), i = 0 .. d/2 - 1, in float32 (the order of operations of transformers)."""
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim  # (d/2,)
    return 1.0 / (theta**exponent)


def _dynamic_ntk_frequencies(
    rotary_dim: int, theta: float, factor: float, max_seq_len: int, seq_len: int | None
) -> torch.Tensor:
    """Dynamic NTK: theta' = theta * (s * T / L - (s - 1)) ^ (d / (d - 2)) with T = max(seq_len, L)."""
    exponent = rotary_dim / (rotary_dim - 2)
    if seq_len is None or seq_len <= max_seq_len:
        base = theta * (factor * max_seq_len / max_seq_len - (factor - 1)) ** exponent  # = theta
        return _frequencies(rotary_dim, base)
    # At run time transformers computes the new base with float32 tensors; so do we, to agree bit for bit.
    length = torch.tensor(seq_len)
    base = theta * (factor * length / max_seq_len - (factor - 1)) ** exponent  # 0-d float32 tensor
    return _frequencies(rotary_dim, base)


def _yarn_frequencies(
    rotary_dim: int, theta: float, scaling: dict[str, Any], max_seq_len: int
) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023): per-pair blend of f_i and f_i / s, plus the attention factor."""
    original = scaling.get("original_max_position_embeddings", max_seq_len)
    factor = scaling["factor"]
    if factor is None:  # DeepSeek style: the stretch is implied by the two lengths
        factor = max_seq_len / original

    def mscale(scale: float, weight: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * weight * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        weight, weight_all_dims = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if weight and weight_all_dims:  # both must be given and non-zero, else the plain rule
            attention_factor = mscale(factor, weight) / mscale(factor, weight_all_dims)
        else:
            attention_factor = mscale(factor)
    # `or`: a 0 or None beta means the paper's default, as in transformers
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def pair_index(turns: float) -> float:
        """The pair i that makes `turns` full turns over `original` positions:
        original / (2 pi theta^(2i/d)) = turns  <=>  i = d ln(original / (2 pi turns)) / (2 ln theta)."""
        return rotary_dim * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = pair_index(beta_fast), pair_index(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero in the ramp

    wavelength_factor = theta ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)  # theta^(2i/d)
    extrapolated = 1.0 / wavelength_factor  # f_i: pairs that turn often keep it
    interpolated = 1.0 / (factor * wavelength_factor)  # f_i / s: slow pairs are stretched
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # weight of the original frequency, 1 for i <= low, 0 for i >= high
    return interpolated * (1 - keep) + extrapolated * keep, float(attention_factor)


def _llama3_frequencies(rotary_dim: int, theta: float, scaling: dict[str, Any], max_seq_len: int) -> torch.Tensor:
    """Llama 3.1: keep short wavelengths, divide long ones by s, interpolate the band between."""
    factor = scaling["factor"]
    low_freq_factor, high_freq_factor = scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling.get("original_max_position_embeddings", max_seq_len)

    frequency = _frequencies(rotary_dim, theta)
    wavelength = 2 * math.pi / frequency
    long_wavelength = original / low_freq_factor  # beyond it: divide by s
    short_wavelength = original / high_freq_factor  # below it: keep
    stretched = torch.where(wavelength > long_wavelength, frequency / factor, frequency)
    # 0 at the long edge of the band, 1 at the short edge
    smooth = (original / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * frequency / factor + smooth * frequency
    in_band = (wavelength >= short_wavelength) & (wavelength <= long_wavelength)
    return torch.where(in_band, blended, stretched)


def rope_parameters(
    rotary_dim: int,
    theta: float,
    scaling: dict[str, Any] | None,
    max_seq_len: int,
    *,
    seq_len: int | None = None,
) -> tuple[torch.Tensor, float]:
    """The RoPE frequencies f_i and the attention factor for one rope type.

    rotary_dim: the rotated dimensions of a head (head_dim * partial_rotary_factor), even.
    theta: the base ("rope_theta").
    scaling: None or the config.json "rope_scaling" dict (see `validate_rope_scaling`).
    max_seq_len: the model's max_position_embeddings. It is the threshold of "dynamic", and
        the default of original_max_position_embeddings for "yarn" and "llama3" (and yarn's
        factor, if None, is max_seq_len / original_max_position_embeddings).
    seq_len: "dynamic" only: the sequence length to stretch for (None: the initial frequencies).

    Returns (inv_freq of shape (rotary_dim // 2,) in float32, attention_factor), equal to
    transformers' ROPE_INIT_FUNCTIONS[rope_type] (and the models' default rope for "default").
    """
    rope_type = validate_rope_scaling(scaling)
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"rotary_dim={rotary_dim} must be a positive even number (RoPE rotates pairs)")
    if not _is_number(theta) or theta <= 1:
        raise ValueError(f"theta={theta!r} must be a number > 1")
    if scaling is not None and "rope_theta" in scaling and float(scaling["rope_theta"]) != float(theta):
        raise ValueError(f"scaling['rope_theta']={scaling['rope_theta']} disagrees with theta={theta}")

    if rope_type == "default":
        return _frequencies(rotary_dim, theta), 1.0
    if rope_type == "linear":
        return _frequencies(rotary_dim, theta) / scaling["factor"], 1.0
    if rope_type == "dynamic":
        return _dynamic_ntk_frequencies(rotary_dim, theta, scaling["factor"], max_seq_len, seq_len), 1.0
    if rope_type == "yarn":
        return _yarn_frequencies(rotary_dim, theta, scaling, max_seq_len)
    return _llama3_frequencies(rotary_dim, theta, scaling, max_seq_len), 1.0


class RotaryEmbedding(nn.Module):
    """cos and sin of the RoPE angles t * f_i, laid out for `apply_rotary`.

    rotary_dim: rotated dimensions per head; theta: base; scaling: config.json "rope_scaling"
    (or None); max_seq_len: max_position_embeddings; layout: "half" or "interleaved".

    cos and sin are computed in float32, multiplied by the attention factor (yarn), then cast
    to `dtype`. Note that `model.to(torch.bfloat16)` rounds the inv_freq buffer to bfloat16
    (as it does transformers' buffer); pass `dtype` instead to get low-precision cos/sin.

    Dynamic NTK keeps state, as transformers does: when a call sees positions reaching
    max(positions) + 1 = T beyond the longest length stretched for so far, the frequencies are
    recomputed for T and remembered; shorter calls reuse them as long as T >= max_seq_len; a
    call with T < max_seq_len goes back to the original frequencies.

    Shapes: positions (T,) or (B, T) -> cos, sin each (..., T, rotary_dim)
    """

    def __init__(
        self,
        rotary_dim: int,
        theta: float = 10000.0,
        scaling: dict[str, Any] | None = None,
        max_seq_len: int = 2048,
        layout: str = "half",
    ):
        super().__init__()
        check_choice("layout", layout, ROPE_LAYOUTS)
        self.rotary_dim = rotary_dim
        self.theta = theta
        self.scaling = dict(scaling) if scaling is not None else None
        self.max_seq_len = max_seq_len
        self.layout = layout
        self.rope_type = validate_rope_scaling(scaling)
        inv_freq, self.attention_factor = rope_parameters(rotary_dim, theta, self.scaling, max_seq_len)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (rotary_dim/2,)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)
        self.max_seq_len_cached = max_seq_len  # dynamic NTK: the length inv_freq is stretched for

    def _update_dynamic(self, seq_len: int) -> None:
        if seq_len > self.max_seq_len_cached:  # longer than ever: stretch further, and remember
            inv_freq, _ = rope_parameters(
                self.rotary_dim, self.theta, self.scaling, self.max_seq_len, seq_len=seq_len
            )
            self.inv_freq = inv_freq.to(self.inv_freq.device)
            self.max_seq_len_cached = seq_len
        elif seq_len < self.max_seq_len < self.max_seq_len_cached:  # short again: original precision
            self.inv_freq = self.original_inv_freq.clone()
            self.max_seq_len_cached = self.max_seq_len

    @torch.no_grad()
    def forward(self, positions: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rope_type == "dynamic" and positions.numel() > 0:
            self._update_dynamic(int(positions.max()) + 1)
        angle = positions[..., None].float() * self.inv_freq.float()  # (..., T, rotary_dim/2)
        if self.layout == "half":
            angle = torch.cat((angle, angle), dim=-1)  # [a_0 .. a_{n-1}, a_0 .. a_{n-1}]
        else:
            angle = angle.repeat_interleave(2, dim=-1)  # [a_0, a_0, a_1, a_1, ...]
        cos = angle.cos() * self.attention_factor  # (..., T, rotary_dim)
        sin = angle.sin() * self.attention_factor
        return cos.to(dtype), sin.to(dtype)

    def extra_repr(self) -> str:
        return (
            f"rotary_dim={self.rotary_dim}, theta={self.theta}, rope_type={self.rope_type!r}, "
            f"max_seq_len={self.max_seq_len}, layout={self.layout!r}"
        )


# --------------------------------------------------------------------------------------------
# Applying RoPE
# --------------------------------------------------------------------------------------------


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] with x1, x2 the two halves of the last dim (transformers' layout).

    Shapes: (..., d) -> (..., d)
    """
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """Each adjacent pair (x0, x1) -> (-x1, x0): multiplication by j of x0 + j x1.

    Shapes: (..., d) -> (..., d)
    """
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((-odd, even), dim=-1).flatten(-2)


_ROTATE = {"half": rotate_half, "interleaved": rotate_interleaved}


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str = "half") -> torch.Tensor:
    """Rotate queries or keys: x' = x * cos + rotate(x) * sin on the first rotary_dim dims.

    rotary_dim = cos.shape[-1]; when it is smaller than head_dim (partial rotary) the remaining
    dims pass through unchanged. cos and sin come from a `RotaryEmbedding` with the same layout;
    the head dim is added here so one cos/sin serves every head.

    Shapes: x (B, H, T, head_dim), cos/sin (B or 1, T, rotary_dim) or (T, rotary_dim)
        -> (B, H, T, head_dim)
    """
    check_choice("layout", layout, ROPE_LAYOUTS)
    rotary_dim = cos.shape[-1]
    if rotary_dim > x.shape[-1] or rotary_dim % 2:
        raise ValueError(f"rotary_dim={rotary_dim} (cos.shape[-1]) must be even and <= head_dim={x.shape[-1]}")
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # (B or 1, 1, T, rotary_dim)
    if rotary_dim == x.shape[-1]:
        return x * cos + _ROTATE[layout](x) * sin
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    rotated = rotated * cos + _ROTATE[layout](rotated) * sin
    return torch.cat((rotated, passed), dim=-1)


def _rotary_dim(head_dim: int, rotary_dim: int | None) -> int:
    rotary_dim = head_dim if rotary_dim is None else rotary_dim
    if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
        raise ValueError(f"rotary_dim={rotary_dim} must be a positive even number <= head_dim={head_dim}")
    return rotary_dim


def interleaved_to_half_permutation(head_dim: int, rotary_dim: int | None = None) -> torch.Tensor:
    """Row order, within one head, that turns interleaved-layout q/k weights into half-layout ones.

    Interleaved pair i is rows (2i, 2i+1); half-layout pair i is rows (i, i + d/2). So the new
    row order is [0, 2, 4, ..., d-2, 1, 3, ..., d-1] (d = rotary_dim; rows past d stay).
    For W_q of shape (num_heads * head_dim, embed_dim) (and likewise W_k with num_kv_heads,
    and a q/k bias of shape (num_heads * head_dim,)):

        perm = interleaved_to_half_permutation(head_dim)
        W_half = W_interleaved.view(num_heads, head_dim, -1)[:, perm].reshape(num_heads * head_dim, -1)

    This is the permutation of Meta-to-HF Llama conversion. Scores q . k are unchanged, because
    q and k are reordered the same way. W_v and W_o are never permuted.

    Shapes: -> (head_dim,) LongTensor
    """
    rotary_dim = _rotary_dim(head_dim, rotary_dim)
    order = torch.arange(head_dim)
    order[:rotary_dim] = torch.cat((torch.arange(0, rotary_dim, 2), torch.arange(1, rotary_dim, 2)))
    return order


def half_to_interleaved_permutation(head_dim: int, rotary_dim: int | None = None) -> torch.Tensor:
    """The inverse of `interleaved_to_half_permutation`: [0, d/2, 1, d/2 + 1, ...].

    W_interleaved = W_half.view(num_heads, head_dim, -1)[:, perm].reshape(num_heads * head_dim, -1)

    Shapes: -> (head_dim,) LongTensor
    """
    rotary_dim = _rotary_dim(head_dim, rotary_dim)
    half = rotary_dim // 2
    order = torch.arange(head_dim)
    order[:rotary_dim] = torch.stack((torch.arange(half), torch.arange(half, rotary_dim)), dim=-1).flatten()
    return order


# --------------------------------------------------------------------------------------------
# ALiBi
# --------------------------------------------------------------------------------------------


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The ALiBi slope m_h of each head (Press et al. 2022), in float32.

    For n a power of two: m_h = 2^(-8h/n), h = 1 .. n (a geometric sequence from 2^(-8/n)).
    Otherwise, with p the largest power of two below n: the p slopes of p heads, then every
    other slope (1st, 3rd, ...) of 2p heads, up to n in all - the rule of the paper's code,
    which BLOOM uses.

    Shapes: -> (num_heads,)
    """
    if num_heads <= 0:
        raise ValueError(f"num_heads={num_heads} must be positive")

    def geometric(n: int) -> list[float]:
        ratio = 2.0 ** (-8.0 / n)
        return [ratio ** (h + 1) for h in range(n)]

    power = 2 ** math.floor(math.log2(num_heads))
    slopes = geometric(power) + geometric(2 * power)[0::2][: num_heads - power]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """The ALiBi term added to attention scores: bias[h, i, j] = -m_h * (q_pos[i] - k_pos[j]).

    Sign convention: keys in the past (k_pos < q_pos) get a negative bias that grows with the
    distance; the current token gets 0. Keys in the future get a positive bias here, but a
    causal mask removes them anyway. Add it to the scores before the softmax (after scaling).

    Shapes: slopes (H,), query_positions (Tq,), key_positions (Tk,) -> (H, Tq, Tk)
    """
    distance = (query_positions[:, None] - key_positions[None, :]).to(slopes.dtype)  # (Tq, Tk)
    return -slopes[:, None, None] * distance  # (H, Tq, Tk)
