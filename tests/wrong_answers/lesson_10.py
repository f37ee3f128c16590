"""Wrong answers for lesson 10 (RoPE)."""

# Pieces of correct answers, to build wrong ones from.

_ROTATE_HALF = (
    "def rotate_half(x):\n"
    "    first, second = x.chunk(2, dim=-1)\n"
    "    return torch.cat((-second, first), dim=-1)\n\n\n"
)


def _apply_half(angles: str = "positions[:, None].float() * inv_freq.float()",
                repeat: str = "torch.cat((angles, angles), dim=-1)",
                formula: str = "x * angles.cos() + rotate_half(x) * angles.sin()") -> str:
    return (
        _ROTATE_HALF
        + "def apply_rope(x, positions, inv_freq):\n"
        f"    angles = {angles}\n"
        f"    angles = {repeat}\n"
        f"    return ({formula}).type_as(x)\n"
    )


def _apply_interleaved(angles: str = "positions[:, None].float() * inv_freq.float()",
                       turn: str = "torch.polar(torch.ones_like(angles), angles)",
                       pairs: str = "torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))",
                       out: str = "torch.view_as_real(pairs * turn).flatten(-2)") -> str:
    return (
        "def apply_rope_interleaved(x, positions, inv_freq):\n"
        f"    angles = {angles}\n"
        f"    turn = {turn}\n"
        f"    pairs = {pairs}\n"
        f"    return ({out}).type_as(x)\n"
    )


def _llama3(long_value: str = "inv_freq / factor",
            blend: str = "(1 - smooth) * inv_freq / factor + smooth * inv_freq",
            wavelength: str = "2 * math.pi / inv_freq") -> str:
    return (
        "def llama3_frequencies(inv_freq, factor, low_freq_factor, high_freq_factor, original_max_len):\n"
        f"    wavelength = {wavelength}\n"
        "    smooth = (original_max_len / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)\n"
        f"    blended = {blend}\n"
        f"    scaled = torch.where(wavelength > original_max_len / low_freq_factor, {long_value}, blended)\n"
        "    return torch.where(wavelength < original_max_len / high_freq_factor, inv_freq, scaled)\n"
    )


def _permutation(order: str) -> str:
    return (
        "def interleaved_to_half(weight, num_heads):\n"
        "    rows, embed_dim = weight.shape\n"
        "    head_dim = rows // num_heads\n"
        f"    order = {order}\n"
        "    return weight.view(num_heads, head_dim, embed_dim)[:, order].reshape(rows, embed_dim)\n"
    )


WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "10_rope.ipynb": {
        "rope_frequencies": [
            ("def rope_frequencies(head_dim, base=10000.0):\n"
             "    return 1.0 / base ** (torch.arange(head_dim // 2, dtype=torch.float32) / head_dim)\n",
             "your exponent is i/d; it must be 2i/d"),
            ("def rope_frequencies(head_dim, base=10000.0):\n"
             "    return base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)\n",
             "your exponent is positive"),
            ("def rope_frequencies(head_dim, base=10000.0):\n"
             "    return 1.0 / base ** (torch.arange(head_dim, dtype=torch.float32) / head_dim)\n",
             "one frequency per *pair* of dimensions"),
            ("def rope_frequencies(head_dim, base=10000.0):\n"
             "    return base ** -torch.linspace(0, 1, head_dim // 2)\n",
             "runs from 0 to -1 exactly (linspace)"),
            ("import olm_edu.nn.positions as olm_positions\n\n"
             "def rope_frequencies(head_dim, base=10000.0):\n"
             "    return olm_positions.rope_parameters(head_dim, base, None, 2048)[0]\n",
             "calls olm_edu.nn.positions.rope_parameters, which is not allowed"),
        ],
        "apply_rope": [
            # the interleaved layout where rotate_half is expected (named)
            (_apply_half(repeat="angles.repeat_interleave(2, dim=-1)",
                         formula="x * angles.cos() + torch.stack((-x[..., 1::2], x[..., 0::2]), -1).flatten(-2) "
                                 "* angles.sin()"),
             "you applied the interleaved layout"),
            (_apply_half(formula="x * angles.cos() - rotate_half(x) * angles.sin()"), "you rotate the wrong way"),
            ("def rotate_half(x):\n    first, second = x.chunk(2, dim=-1)\n    return torch.cat((second, -first), dim=-1)\n\n\n"
             + _apply_half()[len(_ROTATE_HALF):],
             "you returned [x2, -x1]"),
            (_apply_half(angles="torch.arange(x.shape[-2])[:, None].float() * inv_freq.float()"),
             "you ignored `positions`"),
            (_apply_half(angles="(positions + 1)[:, None].float() * inv_freq.float()"), "your positions start at 1"),
            (_apply_half(repeat="angles"), "cos and sin need d entries per position"),
            (_apply_half(repeat="angles.repeat_interleave(2, dim=-1)"), "you mixed the layouts"),
            (_ROTATE_HALF
             + "def apply_rope(x, positions, inv_freq):\n"
               "    angles = positions[:, None].float() * inv_freq.float()\n"
               "    first, second = x.chunk(2, dim=-1)\n"
               "    return torch.cat((first * angles.cos() - second * angles.sin(), second), dim=-1)\n",
             "you rotated only the first half"),
            (_apply_half(angles="positions[:, None].float() * rope_frequencies(x.shape[-1])"),
             "you recomputed the frequencies with base 10000"),
        ],
        "apply_rope_interleaved": [
            # the rotate_half layout where interleaved is expected (named)
            ("def apply_rope_interleaved(x, positions, inv_freq):\n"
             "    angles = positions[:, None].float() * inv_freq.float()\n"
             "    angles = torch.cat((angles, angles), dim=-1)\n"
             "    first, second = x.chunk(2, dim=-1)\n"
             "    return x * angles.cos() + torch.cat((-second, first), dim=-1) * angles.sin()\n",
             "you applied the rotate_half layout"),
            (_apply_interleaved(turn="torch.polar(torch.ones_like(angles), -angles)"), "you rotate the wrong way"),
            (_apply_interleaved(out="torch.cat(((pairs * turn).real, (pairs * turn).imag), dim=-1)"),
             "[real parts, imaginary parts]"),
            (_apply_interleaved(pairs="torch.complex(*x.float().chunk(2, dim=-1))"),
             "you read the pairs as (x[i], x[i + d/2])"),
            (_apply_interleaved(angles="torch.arange(x.shape[-2])[:, None].float() * inv_freq.float()"),
             "you ignored `positions`"),
            (_apply_interleaved(angles="positions[:, None].float() * rope_frequencies(x.shape[-1])"),
             "you recomputed the frequencies with base 10000"),
            ("def apply_rope_interleaved(x, positions, inv_freq):\n"
             "    cos, sin = olm_positions.RotaryEmbedding(x.shape[-1], layout='interleaved')(positions)\n"
             "    return olm_positions.apply_rotary(x, cos, sin, 'interleaved')\n",
             "which is not allowed here"),
        ],
        "interleaved_to_half": [
            (_permutation("torch.stack((torch.arange(head_dim // 2), torch.arange(head_dim // 2, head_dim)), -1).flatten()"),
             "you applied the inverse permutation"),
            ("def interleaved_to_half(weight, num_heads):\n"
             "    order = torch.cat((torch.arange(0, weight.shape[0], 2), torch.arange(1, weight.shape[0], 2)))\n"
             "    return weight[order]\n",
             "as if the matrix were one head"),
            ("def interleaved_to_half(weight, num_heads):\n    return weight.clone()\n",
             "you returned the weight unchanged"),
        ],
        "llama3_frequencies": [
            (_llama3(long_value="inv_freq * factor", blend="(1 - smooth) * inv_freq * factor + smooth * inv_freq"),
             "you multiplied the long-wavelength frequencies by factor"),
            (_llama3(blend="smooth * inv_freq / factor + (1 - smooth) * inv_freq"),
             "your blend in the band runs the wrong way"),
            (_llama3(blend="inv_freq"), "you left the band between the two wavelengths unchanged"),
            (_llama3(wavelength="1 / inv_freq"), "your wavelength is 1 / f"),
            ("def llama3_frequencies(inv_freq, factor, low_freq_factor, high_freq_factor, original_max_len):\n"
             "    return inv_freq / factor\n",
             "that is linear scaling"),
        ],
    },
}
