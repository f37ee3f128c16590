"""`build(cfg)`: a `ModelConfig` becomes a model that reads like the diagram.

    Transformer
      embed        token embedding (vocab_size, embed_dim), times sqrt(embed_dim) for Gemma
      positions    learned or sinusoidal table (GPT-2 family); RoPE / ALiBi live in attention
      layers       Repeat(num_layers):
                     attn = Residual(norm, attention, [post_norm])     x + attention(norm(x))
                     ffn  = Residual(norm, mlp, [post_norm])           x + mlp(norm(x))
      norm         the final norm
      head         logits, tied to `embed` or not, optionally soft-capped

(post-norm puts the norm after each residual add instead, and has no final norm.)
Parameter names come out readable: `layers.3.attn.attention.q_proj.weight`.

Shapes: token ids (B, T) -> logits (B, T, vocab_size)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from olm_edu.models.config import ModelConfig
from olm_edu.nn.attention import IMPLEMENTATIONS, Attention
from olm_edu.nn.blocks import Block, Context, Repeat, Residual
from olm_edu.nn.cache import KVCache
from olm_edu.nn.ffn import ClassicFFN, GatedFFN
from olm_edu.nn.head import OutputHead
from olm_edu.nn.norms import make_norm
from olm_edu.nn.positions import LearnedPositions, SinusoidalPositions

__all__ = ["Transformer", "build", "init_weights", "set_attention_implementation"]


def _norm(cfg: ModelConfig) -> nn.Module:
    return make_norm(cfg.norm, cfg.embed_dim, cfg.norm_eps, bias=cfg.norm_bias)


def _attention(cfg: ModelConfig, index: int) -> Attention:
    sliding = cfg.layer_type(index) == "sliding_attention"
    return Attention(
        cfg.embed_dim,
        cfg.num_heads,
        cfg.kv_heads,
        cfg.head_size,
        bias=cfg.qkv_bias,
        out_bias=cfg.attn_out_bias,
        causal=cfg.causal,
        position=cfg.position,
        rope_theta=cfg.rope_theta,
        rope_scaling=cfg.rope_scaling,
        rope_layout=cfg.rope_layout,
        partial_rotary_factor=cfg.partial_rotary_factor,
        max_seq_len=cfg.max_seq_len,
        qk_norm=cfg.qk_norm,
        norm_eps=cfg.norm_eps,
        logit_softcap=cfg.attn_logit_softcap,
        scale=None if cfg.query_pre_attn_scalar is None else cfg.query_pre_attn_scalar**-0.5,
        sliding_window=cfg.sliding_window if sliding else None,
        dropout=cfg.dropout,
        layer_index=index,
    )


def _ffn(cfg: ModelConfig) -> nn.Module:
    kind = ClassicFFN if cfg.ffn == "classic" else GatedFFN
    return kind(cfg.embed_dim, cfg.hidden_dim, activation=cfg.activation, bias=cfg.ffn_bias)


def _layer(cfg: ModelConfig, index: int) -> Block:
    """One transformer layer: an attention sub-layer and a feed-forward sub-layer."""
    dropout = (lambda: nn.Dropout(cfg.dropout)) if cfg.dropout else (lambda: None)
    if cfg.norm_placement == "post":  # the 2017 layout: norm(x + sublayer(x))
        return Block(
            attn=Residual(attention=_attention(cfg, index), dropout=dropout()),
            attn_norm=_norm(cfg),
            ffn=Residual(mlp=_ffn(cfg), dropout=dropout()),
            ffn_norm=_norm(cfg),
        )
    sandwich = cfg.norm_placement == "sandwich"
    return Block(
        attn=Residual(
            norm=_norm(cfg), attention=_attention(cfg, index), post_norm=_norm(cfg) if sandwich else None, dropout=dropout()
        ),
        ffn=Residual(norm=_norm(cfg), mlp=_ffn(cfg), post_norm=_norm(cfg) if sandwich else None, dropout=dropout()),
    )


class Transformer(nn.Module):
    """A decoder-only transformer built from a `ModelConfig`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.positions = None
        if cfg.position == "learned":
            self.positions = LearnedPositions(cfg.max_seq_len, cfg.embed_dim)
        elif cfg.position == "sinusoidal":
            self.positions = SinusoidalPositions(cfg.max_seq_len, cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = Repeat(cfg.num_layers, lambda index: _layer(cfg, index))
        self.norm = None if cfg.norm_placement == "post" else _norm(cfg)
        self.head = OutputHead(
            cfg.embed_dim,
            cfg.vocab_size,
            tied_to=self.embed if cfg.tie_embeddings else None,
            bias=cfg.lm_head_bias,
            softcap=cfg.final_logit_softcap,
        )

    def new_cache(self) -> KVCache:
        """An empty KV cache for incremental decoding with this model."""
        return KVCache(self.config.num_layers)

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, vocab_size).

        With a `cache`, `ids` continue the tokens the cache has seen: their positions start
        at `cache.seen_tokens`, and the cache is extended in place.
        """
        self._check_ids(ids)
        start = cache.seen_tokens if cache is not None else 0
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        h = self.embed(ids)  # (B, T, d)
        if self.config.scale_embeddings:  # Gemma: the normaliser is rounded to the activations' dtype
            h = h * torch.tensor(self.config.embed_dim**0.5, dtype=h.dtype)
        if self.positions is not None:
            h = h + self.positions(positions)
        h = self.dropout(h)
        h = self.layers(h, Context(positions, cache))
        if cache is not None:
            cache.seen_tokens = start + ids.shape[1]
        if self.norm is not None:
            h = self.norm(h)
        return self.head(h)

    def _check_ids(self, ids: torch.Tensor) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"ids must be an integer tensor of shape (batch, length), got {shape}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.config.vocab_size)][0].item()
            raise ValueError(f"token id {bad} is out of range: vocab_size={self.config.vocab_size} (ids 0..{self.config.vocab_size - 1})")

    def num_parameters(self) -> int:
        """Parameters held (a tied head counted once)."""
        return sum(p.numel() for p in self.parameters())


def init_weights(model: Transformer) -> Transformer:
    """GPT-2's initialisation: N(0, init_std) for matrices and embeddings, zero biases, norms
    at their neutral value, and the projections that write into the residual stream (o_proj,
    down_proj) scaled by 1/sqrt(2 * num_layers) so the stream's variance does not grow with depth."""
    cfg = model.config
    residual_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = residual_std if name.endswith(("o_proj", "down_proj")) else cfg.init_std
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Embedding, LearnedPositions)):
            nn.init.normal_(module.weight, 0.0, cfg.init_std)
        elif isinstance(module, OutputHead):
            if module.weight is not None:
                nn.init.normal_(module.weight, 0.0, cfg.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def build(cfg: ModelConfig, *, implementation: str = "sdpa") -> Transformer:
    """The model a config describes, initialised as GPT-2 initialises (see `init_weights`).

    Build on the meta device to inspect a large model without allocating it:
    `with torch.device("meta"): model = build(preset("Llama-3.1-8B"))`.
    """
    model = Transformer(cfg)
    set_attention_implementation(model, implementation)
    if not any(p.is_meta for p in model.parameters()):
        init_weights(model)
    return model


def set_attention_implementation(model: nn.Module, implementation: str) -> nn.Module:
    """Switch every attention layer to "explicit" or "sdpa"."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r} is not one of {IMPLEMENTATIONS}")
    for module in model.modules():
        if isinstance(module, Attention):
            module.implementation = implementation
    return model
