"""olm_edu.nn: the building blocks, one concept per module.

    norms         LayerNorm, RMSNorm (Llama and Gemma conventions)
    activations   GELU (exact, tanh), SiLU, ReLU by name; the GLU family
    ffn           ClassicFFN, GatedFFN (SwiGLUFFN, GeGLUFFN), gated_hidden_dim
    positions     learned, sinusoidal, RoPE (both layouts, all scalings), ALiBi
    attention     Attention: MHA/GQA/MQA, RoPE, ALiBi, QK-norm, soft-cap, sliding window; attend
    linear_attention  LinearAttention: the gated delta rule (Gated DeltaNet, Kimi Delta Attention)
    mla           LatentAttention: multi-head latent attention (DeepSeek), latent KV cache
    indexer       LightningIndexer: top-k key selection for sparse attention (DeepSeek-V3.2)
    moe           Router, Experts, MoE (mixture of experts), load_balancing_loss, router_z_loss
    blocks        Block, Residual, Repeat, Context
    head          OutputHead (tied or not, soft-cap)
    cache         KVCache

The OLM library's class names are kept as thin aliases (`MultiHeadAttentionwithRoPE`,
`GroupedQueryAttention`, ...): each returns an `Attention` with the matching options; likewise
`SwiGLUMoEFFN`, `GeGLUMoEFFN`, `ClassicMoEFFN` return an `MoE`, and `MoERouter` is `Router`.
Importing this package does not import transformers.
"""

from olm_edu.nn.activations import ACTIVATIONS, GLU_VARIANTS, get_activation, glu
from olm_edu.nn.attention import Attention, attend, attention_mask, repeat_kv, softcap
from olm_edu.nn.blocks import Block, Context, Repeat, Residual
from olm_edu.nn.cache import KVCache
from olm_edu.nn.ffn import ClassicFFN, GatedFFN, GeGLUFFN, SwiGLUFFN, gated_hidden_dim
from olm_edu.nn.head import OutputHead
from olm_edu.nn.indexer import LightningIndexer, top_k_mask
from olm_edu.nn.linear_attention import GatedRMSNorm, LinearAttention
from olm_edu.nn.mla import LatentAttention, mla_softmax_scale
from olm_edu.nn.moe import Experts, MoE, Router, Routing, load_balancing_loss, router_z_loss
from olm_edu.nn.norms import LayerNorm, RMSNorm, make_norm
from olm_edu.nn.positions import (
    LearnedPositions,
    RotaryEmbedding,
    SinusoidalPositions,
    alibi_bias,
    alibi_slopes,
    apply_rotary,
)


def MultiHeadAttention(embed_dim: int, num_heads: int, **options) -> Attention:
    """Standard multi-head attention (every head has its own keys and values)."""
    return Attention(embed_dim, num_heads, **options)


def MultiHeadAttentionwithRoPE(embed_dim: int, num_heads: int, **options) -> Attention:
    """Multi-head attention with rotary position embeddings."""
    return Attention(embed_dim, num_heads, position="rope", **options)


def GroupedQueryAttention(embed_dim: int, num_heads: int, num_kv_heads: int, **options) -> Attention:
    """Grouped-query attention: num_heads query heads share num_kv_heads key/value heads."""
    options.setdefault("position", "rope")
    return Attention(embed_dim, num_heads, num_kv_heads, **options)


def MultiQueryAttention(embed_dim: int, num_heads: int, **options) -> Attention:
    """Multi-query attention: one key/value head shared by every query head."""
    options.setdefault("position", "rope")
    return Attention(embed_dim, num_heads, 1, **options)


def FlashAttention(embed_dim: int, num_heads: int, **options) -> Attention:
    """Attention computed by PyTorch's fused kernel (flash attention where the hardware has it)."""
    return Attention(embed_dim, num_heads, implementation="sdpa", **options)


MoERouter = Router


def SwiGLUMoEFFN(embed_dim: int, num_experts: int = 8, top_k: int = 2, hidden_dim: int | None = None, **options) -> MoE:
    """A mixture of SwiGLU experts (Mixtral's FFN); hidden_dim defaults to the 8/3 rule."""
    hidden_dim = gated_hidden_dim(embed_dim) if hidden_dim is None else hidden_dim
    return MoE(embed_dim, num_experts, top_k, hidden_dim, activation="silu", **options)


def GeGLUMoEFFN(embed_dim: int, num_experts: int = 8, top_k: int = 2, hidden_dim: int | None = None, **options) -> MoE:
    """A mixture of GeGLU experts (tanh GELU on the gate)."""
    hidden_dim = gated_hidden_dim(embed_dim) if hidden_dim is None else hidden_dim
    return MoE(embed_dim, num_experts, top_k, hidden_dim, activation="gelu_tanh", **options)


def ClassicMoEFFN(embed_dim: int, num_experts: int = 8, top_k: int = 2, hidden_dim: int | None = None, **options) -> MoE:
    """A mixture of classic two-matrix MLP experts (GELU, no gate)."""
    hidden_dim = 4 * embed_dim if hidden_dim is None else hidden_dim
    options.setdefault("activation", "gelu_tanh")
    return MoE(embed_dim, num_experts, top_k, hidden_dim, gated=False, **options)


__all__ = [
    "ACTIVATIONS", "GLU_VARIANTS", "get_activation", "glu",
    "Attention", "attend", "attention_mask", "repeat_kv", "softcap", "LatentAttention", "mla_softmax_scale",
    "LinearAttention", "GatedRMSNorm",
    "LightningIndexer", "top_k_mask",
    "Router", "Routing", "Experts", "MoE", "load_balancing_loss", "router_z_loss",
    "MoERouter", "SwiGLUMoEFFN", "GeGLUMoEFFN", "ClassicMoEFFN",
    "MultiHeadAttention", "MultiHeadAttentionwithRoPE", "GroupedQueryAttention", "MultiQueryAttention",
    "FlashAttention",
    "Block", "Context", "Repeat", "Residual", "KVCache",
    "ClassicFFN", "GatedFFN", "GeGLUFFN", "SwiGLUFFN", "gated_hidden_dim",
    "OutputHead", "LayerNorm", "RMSNorm", "make_norm",
    "LearnedPositions", "RotaryEmbedding", "SinusoidalPositions", "alibi_bias", "alibi_slopes", "apply_rotary",
]
