"""`build(cfg)`: a `ModelConfig` becomes a model that reads like the diagram.

    Transformer
      embed        token embedding (vocab_size, embed_dim), times sqrt(embed_dim) for Gemma
      positions    learned or sinusoidal table (GPT-2 family); RoPE / ALiBi live in attention
      layers       Repeat(num_layers):
                     attn = Residual(norm, attention, [post_norm])     x + attention(norm(x))
                     ffn  = Residual(norm, mlp, [post_norm])           x + mlp(norm(x))
      norm         the final norm
      head         logits, tied to `embed` or not, optionally soft-capped

(post-norm puts the norm after each residual add instead, and has no final norm; "post_sublayer"
(OLMo 2/3) keeps the residual stream un-normalised and normalises each sub-layer's output inside
its branch: Residual(attention, post_norm), x + post_norm(attention(x)).)
`attention` is `LatentAttention` when cfg.attention == "mla" (DeepSeek), `CompressedAttention`
when cfg.attention == "compressed" (DeepSeek-V4), `LinearAttention` (the gated delta rule) on the
layers whose layer type is "linear_attention" (Qwen3-Next, Kimi Linear), and `mlp` is an `MoE`
(router + experts) on the layers where cfg.is_moe_layer(index) (all but the first
first_dense_layers when num_experts > 0). Parameter names come out readable:
`layers.3.attn.attention.q_proj.weight`, `layers.3.ffn.mlp.experts.gate_proj`.

Mixture-of-experts models report auxiliary losses for the training loop:

    logits = model(inputs)
    loss = next_token_loss(logits, targets) + model.aux_loss()   # 0 for dense models
    loss.backward(); optimizer.step()
    model.update_router_biases()                                  # DeepSeek-V3's aux-loss-free balance

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
from olm_edu.nn.compressed_attention import CompressedAttention
from olm_edu.nn.hyper_connections import HyperConnection, HyperHead, HyperResidual, widen
from olm_edu.nn.ffn import ClassicFFN, GatedFFN
from olm_edu.nn.head import OutputHead
from olm_edu.nn.linear_attention import LINEAR_IMPLEMENTATIONS, VARIANTS, LinearAttention
from olm_edu.nn.mla import LatentAttention
from olm_edu.nn.moe import MOE_IMPLEMENTATIONS, MoE, Router
from olm_edu.nn.norms import make_norm
from olm_edu.nn.positions import LearnedPositions, SinusoidalPositions

__all__ = [
    "Transformer", "MultiTokenPrediction", "build", "init_weights", "set_attention_implementation",
    "set_moe_implementation", "set_mla_mode", "set_linear_attention_implementation",
]  # fmt: skip


def _norm(cfg: ModelConfig) -> nn.Module:
    return make_norm(cfg.norm, cfg.embed_dim, cfg.norm_eps, bias=cfg.norm_bias)


def _compressed_attention(cfg: ModelConfig, index: int) -> CompressedAttention:
    kind = cfg.layer_type(index)
    rate = {"compressed_sparse_attention": cfg.csa_compress_rate, "heavily_compressed_attention": cfg.hca_compress_rate}
    return CompressedAttention(
        cfg.embed_dim,
        cfg.num_heads,
        cfg.head_size,
        q_latent_dim=cfg.q_latent_dim,
        rope_head_dim=cfg.rope_head_dim,
        o_groups=cfg.o_groups,
        o_latent_dim=cfg.o_latent_dim,
        sliding_window=cfg.sliding_window,
        layer_type=kind,
        compress_rate=rate.get(kind),
        rope_theta=cfg.rope_theta,
        compress_rope_theta=cfg.compress_rope_theta or cfg.rope_theta,
        rope_scaling=cfg.rope_scaling,
        max_seq_len=cfg.max_seq_len,
        norm_eps=cfg.norm_eps,
        attention_sinks=cfg.attention_sinks,
        index_topk=cfg.index_topk,
        index_heads=cfg.index_heads,
        index_head_dim=cfg.index_head_dim,
        layer_index=index,
    )


def _linear_attention(cfg: ModelConfig, index: int) -> LinearAttention:
    return LinearAttention(
        cfg.embed_dim,
        cfg.linear_num_key_heads,
        cfg.linear_num_value_heads,
        cfg.linear_key_head_dim,
        cfg.linear_value_head_dim,
        conv_kernel=cfg.linear_conv_kernel,
        activation=cfg.activation,
        norm_eps=cfg.norm_eps,
        layer_index=index,
        **VARIANTS[cfg.linear_attention],
    )


def _attention(cfg: ModelConfig, index: int) -> Attention | LatentAttention | LinearAttention | CompressedAttention:
    if cfg.layer_type(index) == "linear_attention":
        return _linear_attention(cfg, index)
    if cfg.attention == "compressed":
        return _compressed_attention(cfg, index)
    if cfg.attention == "mla":
        return LatentAttention(
            cfg.embed_dim,
            cfg.num_heads,
            kv_latent_dim=cfg.kv_latent_dim,
            rope_head_dim=cfg.rope_head_dim,
            head_dim=cfg.head_size,
            q_latent_dim=cfg.q_latent_dim,
            value_head_dim=cfg.value_head_size,
            bias=cfg.qkv_bias,
            out_bias=cfg.attn_out_bias,
            causal=cfg.causal,
            rope_theta=cfg.rope_theta,
            rope_scaling=cfg.rope_scaling,
            rope_layout=cfg.rope_layout,
            max_seq_len=cfg.max_seq_len,
            latent_norm_eps=1e-6,  # transformers and DeepSeek's code leave the latent norms at the default
            dropout=cfg.dropout,
            layer_index=index,
            position="rope" if cfg.uses_rope(index) else "none",
            index_topk=cfg.index_topk,
            index_heads=cfg.index_heads,
            index_head_dim=cfg.index_head_dim,
        )
    sliding = cfg.layer_type(index) == "sliding_attention"
    chunked = cfg.layer_type(index) == "chunked_attention"
    rotates = cfg.uses_rope(index)
    temperature = (cfg.attn_temperature_floor, cfg.attn_temperature_scale)
    rope_theta, rope_scaling = cfg.rope_of_layer(index)  # Gemma 3, OLMo 3: sliding layers have their own
    return Attention(
        cfg.embed_dim,
        cfg.num_heads,
        cfg.kv_heads,
        cfg.head_size,
        bias=cfg.qkv_bias,
        out_bias=cfg.attn_out_bias,
        causal=cfg.causal,
        position="none" if cfg.position == "rope" and not rotates else cfg.position,  # a NoPE layer
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        rope_layout=cfg.rope_layout,
        partial_rotary_factor=cfg.partial_rotary_factor,
        max_seq_len=cfg.max_seq_len,
        qk_norm=cfg.qk_norm,
        qk_l2_norm=cfg.qk_l2_norm and rotates,  # Llama 4 leaves its NoPE layers unnormalised
        output_gate=cfg.attn_output_gate,
        norm_eps=cfg.norm_eps,
        logit_softcap=cfg.attn_logit_softcap,
        scale=None if cfg.query_pre_attn_scalar is None else cfg.query_pre_attn_scalar**-0.5,
        sliding_window=cfg.sliding_window if sliding else None,
        chunk_size=cfg.attention_chunk_size if chunked else None,
        temperature_tuning=temperature if cfg.attn_temperature_tuning and not rotates else None,  # NoPE layers only
        dropout=cfg.dropout,
        layer_index=index,
        qk_norm_scope=cfg.qk_norm_scope,
        norm_convention="gemma" if cfg.norm == "rmsnorm_gemma" else "llama",
        sinks=cfg.attention_sinks,
    )


def _ffn(cfg: ModelConfig, index: int) -> nn.Module:
    if cfg.is_moe_layer(index):
        return MoE(
            cfg.embed_dim,
            cfg.num_experts,
            cfg.experts_per_token,
            cfg.expert_width,
            num_shared_experts=cfg.num_shared_experts,
            activation=cfg.activation,
            gated=cfg.ffn == "glu",
            shared_bias=cfg.ffn_bias,
            scoring=cfg.router_scoring,
            renormalize=cfg.router_renormalize,
            num_groups=cfg.expert_groups,
            groups_per_token=cfg.groups_per_token,
            group_score=cfg.router_group_score,
            selection_bias=cfg.router_selection_bias and index not in cfg.hash_routed_layers,
            scaling_factor=cfg.routed_scaling_factor,
            weighting=cfg.router_weighting,
            router_bias=cfg.router_bias,
            expert_bias=cfg.expert_bias,
            swiglu_limit=cfg.swiglu_limit,
            swiglu_alpha=cfg.swiglu_alpha,
            shared_hidden_dim=cfg.shared_expert_hidden_dim,
            shared_gate=cfg.shared_expert_gate,
            hash_vocab_size=cfg.vocab_size if index in cfg.hash_routed_layers else None,
        )
    kind = ClassicFFN if cfg.ffn == "classic" else GatedFFN
    return kind(cfg.embed_dim, cfg.hidden_dim, activation=cfg.activation, bias=cfg.ffn_bias)


def _layer(cfg: ModelConfig, index: int) -> Block:
    """One transformer layer: an attention sub-layer and a feed-forward sub-layer."""
    dropout = (lambda: nn.Dropout(cfg.dropout)) if cfg.dropout else (lambda: None)
    if cfg.norm_placement == "post":  # the 2017 layout: norm(x + sublayer(x))
        return Block(
            attn=Residual(attention=_attention(cfg, index), dropout=dropout()),
            attn_norm=_norm(cfg),
            ffn=Residual(mlp=_ffn(cfg, index), dropout=dropout()),
            ffn_norm=_norm(cfg),
        )
    if cfg.hc_streams > 1:  # hyper-connections: each sub-layer reads and writes n streams

        def connection() -> HyperConnection:
            return HyperConnection(
                cfg.embed_dim, cfg.hc_streams, sinkhorn_iters=cfg.hc_sinkhorn_iters, eps=cfg.hc_eps, norm_eps=cfg.norm_eps
            )

        return Block(
            attn=HyperResidual(connection=connection(), norm=_norm(cfg), attention=_attention(cfg, index), dropout=dropout()),
            ffn=HyperResidual(connection=connection(), norm=_norm(cfg), mlp=_ffn(cfg, index), dropout=dropout()),
        )
    if cfg.norm_placement == "post_sublayer":  # OLMo 2/3: x + norm(sublayer(x))
        return Block(
            attn=Residual(attention=_attention(cfg, index), post_norm=_norm(cfg), dropout=dropout()),
            ffn=Residual(mlp=_ffn(cfg, index), post_norm=_norm(cfg), dropout=dropout()),
        )
    sandwich = cfg.norm_placement == "sandwich"
    return Block(
        attn=Residual(
            norm=_norm(cfg), attention=_attention(cfg, index), post_norm=_norm(cfg) if sandwich else None, dropout=dropout()
        ),
        ffn=Residual(norm=_norm(cfg), mlp=_ffn(cfg, index), post_norm=_norm(cfg) if sandwich else None, dropout=dropout()),
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
        self.hc_head = None
        if cfg.hc_streams > 1:
            self.hc_head = HyperHead(cfg.embed_dim, cfg.hc_streams, eps=cfg.hc_eps, norm_eps=cfg.norm_eps)
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
        return self.head(self.hidden_states(ids, cache))

    def hidden_states(self, ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Token ids (B, T) -> the last layer's output after the final norm (B, T, embed_dim):
        what the head turns into logits (and what a `MultiTokenPrediction` module reads)."""
        self._check_ids(ids)
        start = cache.seen_tokens if cache is not None else 0
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        h = self.embed(ids)  # (B, T, d)
        if self.config.scale_embeddings:  # Gemma: the normaliser is rounded to the activations' dtype
            h = h * torch.tensor(self.config.embed_dim**0.5, dtype=h.dtype)
        if self.positions is not None:
            h = h + self.positions(positions)
        h = self.dropout(h)
        if self.hc_head is not None:
            h = widen(h, self.config.hc_streams)  # (B, T, n, d)
        h = self.layers(h, Context(positions, cache, ids))
        if self.hc_head is not None:
            h = self.hc_head(h)  # (B, T, d)
        if cache is not None:
            cache.seen_tokens = start + ids.shape[1]
        return h if self.norm is None else self.norm(h)

    def _check_ids(self, ids: torch.Tensor) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"ids must be an integer tensor of shape (batch, length), got {shape}")
        if torch.compiler.is_compiling():  # a data-dependent test would split the compiled graph
            return
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.config.vocab_size)][0].item()
            raise ValueError(f"token id {bad} is out of range: vocab_size={self.config.vocab_size} (ids 0..{self.config.vocab_size - 1})")

    def num_parameters(self) -> int:
        """Parameters held (a tied head counted once)."""
        return sum(p.numel() for p in self.parameters())

    # -- mixture of experts: what the routers did, and the losses that balance them -------------
    def moe_layers(self) -> list[MoE]:
        """The MoE feed-forwards, first layer first (empty for a dense model)."""
        return [module for module in self.modules() if isinstance(module, MoE)]

    def aux_loss(self) -> torch.Tensor:
        """The auxiliary loss the training loop adds to the language-modelling loss.

        load_balance_coef * mean over MoE layers of the Switch load-balancing loss
        + router_z_loss_coef * mean over MoE layers of the router z-loss,
        both read from what each layer's router did in the last forward (so call it after the
        forward, before the next one). A 0-d tensor; exactly 0 for a dense model or when both
        coefficients are 0. Averaging over layers keeps a coefficient meaning the same at any depth.
        """
        cfg, layers = self.config, self.moe_layers()
        loss = self.embed.weight.new_zeros(())
        if not layers:
            return loss
        if cfg.load_balance_coef:
            loss = loss + cfg.load_balance_coef * torch.stack([m.load_balancing_loss() for m in layers]).mean()
        if cfg.router_z_loss_coef:
            loss = loss + cfg.router_z_loss_coef * torch.stack([m.z_loss() for m in layers]).mean()
        return loss

    def update_router_biases(self, rate: float | None = None) -> None:
        """DeepSeek-V3's aux-loss-free balance, once per optimiser step: every router with a
        selection bias moves it by rate * sign(mean load - load) over the tokens routed (in
        training mode) since the previous update. rate defaults to cfg.router_bias_update_rate;
        a no-op for routers without selection bias or when the rate is 0."""
        rate = self.config.router_bias_update_rate if rate is None else rate
        for layer in self.moe_layers():
            if layer.router.selection_bias is not None and rate:
                layer.update_bias(rate)

    def expert_load(self) -> torch.Tensor:
        """(MoE layers, num_experts): the fraction of each layer's routed choices that each expert
        received in the last forward (rows sum to 1); for expert-utilisation plots."""
        layers = self.moe_layers()
        if not layers:
            raise ValueError("expert_load needs a mixture-of-experts model (num_experts > 0)")
        return torch.stack([layer.expert_load() for layer in layers])


class MultiTokenPrediction(nn.Module):
    """DeepSeek-V3's multi-token-prediction (MTP) module, one depth: it predicts the token after next.

    Given the main model's final hidden state h_i at position i (after the final norm, as
    transformers passes it) and the embedding of the next token t_{i+1}:

        h'_i = eh_proj([enorm(embed(t_{i+1})), hnorm(h_i)])      (2 d -> d)
        h''  = one transformer layer (with MoE, as the main model's) over h'
        logits = head(norm(h''))                                  predicts t_{i+2}

    It shares the embedding and output head with the main model (`model` is passed in) and is
    not part of it: DeepSeek-V3's 671B excludes it; it densifies the training signal and can
    draft tokens for speculative decoding. Parameter names follow transformers' MtpLayer
    (enorm, hnorm, eh_proj, post_norm), the layer under `layer`.

    Shapes: hidden (B, T, d), next_ids (B, T) -> logits (B, T, vocab_size)
    """

    def __init__(self, cfg: ModelConfig, depth: int = 0):
        super().__init__()
        mtp_cfg = cfg.replace(first_dense_layers=0)  # an MTP layer always has the experts
        self.enorm, self.hnorm = _norm(cfg), _norm(cfg)
        self.eh_proj = nn.Linear(2 * cfg.embed_dim, cfg.embed_dim, bias=False)
        self.layer = _layer(mtp_cfg, depth)
        self.post_norm = _norm(cfg)

    def forward(
        self, hidden: torch.Tensor, next_ids: torch.Tensor, model: Transformer, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        embedded = model.embed(next_ids)  # (B, T, d)
        h = self.eh_proj(torch.cat([self.enorm(embedded), self.hnorm(hidden)], dim=-1))
        if positions is None:
            positions = torch.arange(next_ids.shape[1], device=next_ids.device)
        h = self.layer(h, Context(positions))
        return model.head(self.post_norm(h))


def init_weights(model: Transformer) -> Transformer:
    """GPT-2's initialisation: N(0, init_std) for matrices and embeddings, zero biases, norms
    at their neutral value, and the projections that write into the residual stream (o_proj,
    down_proj) scaled by 1/sqrt(2 * num_layers) so the stream's variance does not grow with depth."""
    cfg = model.config
    residual_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    for name, module in model.named_modules():
        if isinstance(module, Router):
            nn.init.normal_(module.weight, 0.0, cfg.init_std)
            if module.selection_bias is not None:
                nn.init.zeros_(module.selection_bias)
            if module.token_to_experts is not None:  # hash routing: k distinct random experts per token id
                table = torch.rand(module.token_to_experts.shape[0], module.num_experts).argsort(dim=-1)
                module.token_to_experts.copy_(table[:, : module.experts_per_token])
        elif isinstance(module, MoE):  # the experts' 3-D weights; down_proj writes into the stream
            for weight_name in ("gate_proj", "up_proj", "down_proj"):
                weight = getattr(module.experts, weight_name)
                if weight is not None:
                    nn.init.normal_(weight, 0.0, residual_std if weight_name == "down_proj" else cfg.init_std)
        elif isinstance(module, nn.Linear):
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
    """Switch every attention layer (standard or latent) to "explicit" or "sdpa"."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r} is not one of {IMPLEMENTATIONS}")
    for module in model.modules():
        if isinstance(module, (Attention, LatentAttention)):
            module.implementation = implementation  # (CompressedAttention computes its sinks explicitly)
    return model


def set_moe_implementation(model: nn.Module, implementation: str) -> nn.Module:
    """Run every MoE layer's experts one by one ("loop") or all at once ("batched")."""
    if implementation not in MOE_IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r} is not one of {MOE_IMPLEMENTATIONS}")
    for module in model.modules():
        if isinstance(module, MoE):
            module.implementation = implementation
    return model


def set_linear_attention_implementation(model: nn.Module, implementation: str) -> nn.Module:
    """Compute every linear-attention layer "chunked" (training, prefill) or "recurrent" (one
    token at a time); they agree to float32 rounding (see olm_edu.nn.linear_attention)."""
    if implementation not in LINEAR_IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r} is not one of {LINEAR_IMPLEMENTATIONS}")
    for module in model.modules():
        if isinstance(module, LinearAttention):
            module.implementation = implementation
    return model


def set_mla_mode(model: nn.Module, mode: str) -> nn.Module:
    """Compute every latent-attention layer "naive" (expand the cached latents), "absorbed"
    (attend over the latents) or "expanded" (cache expanded keys and values); see olm_edu.nn.mla."""
    for module in model.modules():
        if isinstance(module, LatentAttention):
            module.mode = mode  # validated by the setter
    return model
