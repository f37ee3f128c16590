"""The knob diff: which knobs differ between two configs, and how.

The course's signature picture is `print(render_diff(preset("gpt2"), preset("Llama-3.1-8B")))`:
GPT-2 and Llama 3 differ in a handful of knobs and nowhere else. In Jupyter, `diff_table(a, b)`
shows the same rows as an HTML table.

Compared: every `ModelConfig` field except `name` and `notes` (labels, not architecture) and
`family` (which transformers class to map to; two configs that differ only in family build the
same model). The family is shown in the table header instead. The tables show "-" for a knob
that does nothing in its model: a RoPE knob of a model without RoPE (GPT-2 carries a default
rope_theta that it never uses), a router knob of a dense model, a latent-attention knob of a
model with standard attention. So `render_diff(preset("Llama-3.1-8B"), preset("DeepSeek-V3"))`
lists the MLA and MoE knobs DeepSeek turns, with "-" on the Llama side.
"""

from __future__ import annotations

import dataclasses
import html
import textwrap
from itertools import groupby
from typing import Any, NamedTuple

from olm_edu.models.config import ModelConfig

IGNORED = ("name", "notes", "family")
ROPE_KNOBS = ("rope_theta", "rope_scaling", "rope_layout", "partial_rotary_factor", "nope_layers")
ROPE_KNOBS += ("rope_theta_local", "rope_scaling_local")  # the sliding layers' own RoPE (Gemma 3, OLMo 3)
MOE_KNOBS = (
    "experts_per_token", "expert_hidden_dim", "num_shared_experts", "first_dense_layers", "router_scoring",
    "router_renormalize", "expert_groups", "groups_per_token", "router_group_score", "router_selection_bias",
    "routed_scaling_factor", "load_balance_coef", "router_z_loss_coef", "router_bias_update_rate",
    "router_bias", "expert_bias", "swiglu_limit", "swiglu_alpha",
    "router_weighting",
)  # fmt: skip
MLA_KNOBS = ("q_latent_dim", "kv_latent_dim", "rope_head_dim", "value_head_dim")
COMPRESSED_KNOBS = ("q_latent_dim", "rope_head_dim")  # the MLA knobs DeepSeek-V4's compressed attention uses too
TEMPERATURE_KNOBS = ("attn_temperature_floor", "attn_temperature_scale")
LINEAR_KNOBS = (
    "linear_attention", "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
    "linear_value_head_dim", "linear_conv_kernel",
)  # fmt: skip
MAX_CELL_WIDTH = 44  # longer values (a rope_scaling dict) wrap onto more lines in the text table


class KnobChange(NamedTuple):
    knob: str
    before: Any
    after: Any


def diff(cfg_a: ModelConfig, cfg_b: ModelConfig) -> list[KnobChange]:
    """The knobs whose values differ, in `ModelConfig` field order."""
    changes = []
    for f in dataclasses.fields(ModelConfig):
        before, after = getattr(cfg_a, f.name), getattr(cfg_b, f.name)
        if f.name not in IGNORED and before != after:
            changes.append(KnobChange(f.name, before, after))
    return changes


def _runs(kinds: list[str]) -> str:
    return ", ".join(f"{kind} x {len(list(run))}" for kind, run in groupby(kinds))


def _pattern(kinds: list[str]) -> str:
    """A repeating unit (or its partial tail): runs when it repeats a kind, else the kinds listed."""
    repeats_a_kind = any(a == b for a, b in zip(kinds, kinds[1:]))
    return _runs(kinds) if repeats_a_kind else ", ".join(kinds)


def _format_layer_types(types: tuple[str, ...]) -> str:
    """A short form: "[sliding, full] x 21" for a repeating pattern; a pattern after a short head
    and before a partial repeat, "[sliding x 5, full x 1] x 10, sliding x 2" (Gemma 3's 62 layers),
    "sliding x 2, [compressed_sparse, heavily_compressed] x 20, compressed_sparse" (DeepSeek-V4);
    else runs "full x 20, sliding x 8"."""
    short = [kind.removesuffix("_attention") for kind in types]
    for period in range(1, 5):
        if len(short) % period == 0 and short == short[:period] * (len(short) // period):
            return f"[{', '.join(short[:period])}] x {len(short) // period}"
    for start in range(4):  # a head of up to 3 layers, then a repeated unit, then its partial tail
        body = short[start:]
        for period in range(2, 9):
            repeats, tail = divmod(len(body), period)
            enough = repeats >= (2 if start == 0 else 4)
            if enough and body == (body[:period] * (repeats + 1))[: len(body)]:
                unit = body[:period]
                parts = [_runs(short[:start])] if start else []
                parts.append(f"[{_pattern(unit)}] x {repeats}")
                parts += [_pattern(unit[:tail])] if tail else []
                return ", ".join(parts)
    return _runs(short)


def format_value(value: Any) -> str:
    """A knob's value as the table shows it."""
    if isinstance(value, dict):
        items = dict(value)
        head = items.pop("rope_type", None)
        body = ", ".join(f"{key}={val}" for key, val in items.items())
        return f"{head}({body})" if head else "{" + body + "}"
    if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
        return _format_layer_types(value)
    return str(value)


def _column_titles(cfg_a: ModelConfig, cfg_b: ModelConfig) -> tuple[str, str]:
    title_a, title_b = f"{cfg_a.name} ({cfg_a.family})", f"{cfg_b.name} ({cfg_b.family})"
    if title_a == title_b:
        title_a, title_b = f"{title_a} [a]", f"{title_b} [b]"
    return title_a, title_b


def _cell(cfg: ModelConfig, knob: str, value: Any) -> str:
    # knobs that do nothing in this model (GPT-2's rope_theta, a dense model's router): "-"
    if knob in ROPE_KNOBS and cfg.position != "rope":
        return "-"
    if knob in MOE_KNOBS and cfg.num_experts == 0:
        return "-"
    used_by_compressed = cfg.attention == "compressed" and knob in COMPRESSED_KNOBS
    if knob in MLA_KNOBS and cfg.attention != "mla" and not used_by_compressed:
        return "-"
    if knob in TEMPERATURE_KNOBS and not cfg.attn_temperature_tuning:
        return "-"
    if knob in LINEAR_KNOBS and not cfg.has_linear_attention:
        return "-"
    return format_value(value)


class KnobDiff:
    """The diff of two configs: prints as a text table, shows as an HTML table in Jupyter."""

    def __init__(self, cfg_a: ModelConfig, cfg_b: ModelConfig) -> None:
        self.cfg_a, self.cfg_b = cfg_a, cfg_b
        self.changes = diff(cfg_a, cfg_b)
        self.titles = _column_titles(cfg_a, cfg_b)

    def rows(self) -> list[tuple[str, str, str]]:
        """(knob, shown value in a, shown value in b) for each change."""
        return [(c.knob, _cell(self.cfg_a, c.knob, c.before), _cell(self.cfg_b, c.knob, c.after)) for c in self.changes]

    def __str__(self) -> str:
        header = ("knob", *self.titles)
        rows = self.rows() or [("(no knob differs)", "", "")]
        wrapped = [[textwrap.wrap(cell, MAX_CELL_WIDTH, break_long_words=False) or [""] for cell in row] for row in rows]
        widths = [max(len(text) for text in (header[i], *(line for row in wrapped for line in row[i]))) for i in range(3)]

        def line(cells: tuple[str, ...]) -> str:
            return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

        lines = [line(header), "  ".join("-" * width for width in widths)]
        for row in wrapped:
            height = max(len(cell) for cell in row)
            for k in range(height):
                lines.append(line(tuple(cell[k] if k < len(cell) else "" for cell in row)))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        def cells(tag: str, row: tuple[str, ...]) -> str:
            return "".join(f"<{tag}>{html.escape(cell)}</{tag}>" for cell in row)

        body = "".join(f"<tr>{cells('td', row)}</tr>" for row in self.rows())
        if not body:
            body = '<tr><td colspan="3">(no knob differs)</td></tr>'
        return f"<table><thead><tr>{cells('th', ('knob', *self.titles))}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        return str(self)


def diff_table(cfg_a: ModelConfig, cfg_b: ModelConfig) -> KnobDiff:
    """The diff as an object Jupyter shows as an HTML table (and `print` as text)."""
    return KnobDiff(cfg_a, cfg_b)


def render_diff(cfg_a: ModelConfig, cfg_b: ModelConfig) -> str:
    """The diff as a plain-text table: knob, value in a, value in b; names in the header."""
    return str(KnobDiff(cfg_a, cfg_b))
