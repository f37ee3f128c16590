"""The KV cache: keys and values of past tokens, kept so each new token costs one step.

Without a cache, generating token t re-computes the keys and values of all t - 1 earlier
tokens. They never change (a causal model's past does not depend on the future), so we keep
them: each layer appends the new tokens' keys and values and attends over everything kept.

Each layer also keeps the absolute position of every cached key, so the attention mask is
built from positions rather than indices. That makes the sliding-window layers simple: they
evict keys that have fallen out of the window (a rolling cache holding at most
`sliding_window` entries), and the mask still knows where every remaining key sits.

Multi-head latent attention (olm_edu.nn.mla) keeps less: per token, the compressed latent
c_kv and the one rotated key shared by all heads, instead of every head's key and value
(`update_latent`; they sit in the keys and values slots, as single-head tensors).

Linear-attention layers (olm_edu.nn.linear_attention) keep no keys at all: a state whose size
does not depend on the context, the last kernel - 1 inputs of their short convolution and the
recurrent matrix state (`get_state` / `set_state`). A hybrid model's cache holds both kinds.

Shapes: keys and values (B, num_kv_heads, T_cached, head_dim); positions (T_cached,).
    MLA: latent (B, 1, T_cached, kv_latent_dim), rotated key (B, 1, T_cached, rope_head_dim).
Layers may keep more per token than keys and values (DeepSeek-V3.2's indexer keeps its own
key per token): `update_extra` appends such tensors by name, along the token axis (dim -2).

Shapes: keys and values (B, num_kv_heads, T_cached, head_dim); positions (T_cached,).
    MLA: latent (B, 1, T_cached, kv_latent_dim), rotated key (B, 1, T_cached, rope_head_dim).
    Linear attention: conv state (B, channels, kernel - 1), recurrent state (B, H, d_k, d_v).
    extras: (..., T_cached, width), e.g. the indexer's keys (B, T_cached, index_head_dim).
"""

from __future__ import annotations

import torch

__all__ = ["KVCache"]


class KVCache:
    """Per-layer cached keys, values and their positions."""

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.positions: list[torch.Tensor | None] = [None] * num_layers
        self.states: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers  # linear attention
        self.extras: list[dict[str, torch.Tensor]] = [{} for _ in range(num_layers)]
        self.seen_tokens = 0  # how many positions the model has consumed so far

    def update(
        self,
        layer: int,
        keys: torch.Tensor,
        values: torch.Tensor,
        positions: torch.Tensor,
        window: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append this step's keys/values; return everything this step may attend to.

        With `window`, the returned tensors still include the keys the earliest new query
        needs, but the cache keeps only the last `window` positions for later steps.
        """
        if self.keys[layer] is not None:
            keys = torch.cat([self.keys[layer], keys], dim=2)
            values = torch.cat([self.values[layer], values], dim=2)
            positions = torch.cat([self.positions[layer], positions])
        keep = slice(-window, None) if window is not None else slice(None)
        self.keys[layer], self.values[layer] = keys[:, :, keep], values[:, :, keep]
        self.positions[layer] = positions[keep]
        return keys, values, positions

    def update_latent(
        self, layer: int, latent: torch.Tensor, rope_keys: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MLA: append this step's latent (B, 1, T, kv_latent_dim) and shared rotated key
        (B, 1, T, rope_head_dim); return all of them and their positions."""
        return self.update(layer, latent, rope_keys, positions)

    def get_state(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """A linear-attention layer's (conv state, recurrent state); (None, None) before its first step."""
        return self.states[layer] if self.states[layer] is not None else (None, None)

    def set_state(self, layer: int, conv_state: torch.Tensor, recurrent_state: torch.Tensor) -> None:
        """Replace a linear-attention layer's state (its size never grows with the context)."""
        self.states[layer] = (conv_state, recurrent_state)
    def update_extra(self, layer: int, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Append this step's `name` tensor (..., T, width) to layer `layer`'s; return all of it."""
        kept = self.extras[layer].get(name)
        if kept is not None:
            tensor = torch.cat([kept, tensor], dim=-2)
        self.extras[layer][name] = tensor
        return tensor

    def cached_length(self, layer: int) -> int:
        """How many keys layer `layer` holds (at most the window for sliding layers)."""
        return 0 if self.keys[layer] is None else self.keys[layer].shape[2]

    def nbytes(self) -> int:
        """Bytes held by the cached keys and values (or MLA latents and rotated keys), the
        linear-attention states and the extras."""
        tensors = [t for t in self.keys + self.values if t is not None]
        tensors += [t for state in self.states if state is not None for t in state]
        tensors += [t for extras in self.extras for t in extras.values()]
        return sum(t.numel() * t.element_size() for t in tensors)
