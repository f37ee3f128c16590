"""Generating text: sampling rules and the decoding loop, with or without a KV cache.

Each step turns the logits of the last position into the next token:
- greedy (temperature 0): the most likely token;
- temperature t: softmax(logits / t); below 1 sharpens, above 1 flattens;
- top-k: keep the k most likely tokens; top-p (nucleus): keep the smallest set of most likely
  tokens whose probabilities add up to at least p. Both renormalise what they keep.

Without a cache every step runs the whole sequence through the model again. With one, the
prompt runs once (the "prefill") and each later step feeds only the newest token; the cache
supplies the keys and values of the past. Both give the same logits (tests check it).
"""

from __future__ import annotations

import torch

from olm_edu.models.build import Transformer

__all__ = ["sample_next", "generate"]


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Logits (B, V) -> next token ids (B, 1)."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k={top_k} must be >= 1")
        kth_largest = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p={top_p} must be in (0, 1]")
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probabilities = sorted_logits.softmax(dim=-1)
        mass_before = probabilities.cumsum(dim=-1) - probabilities  # mass of strictly more likely tokens
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


@torch.no_grad()
def generate(
    model: Transformer,
    ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Prompt ids (B, T) -> (B, T + max_new_tokens), sampling one token per step."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    cfg = model.config
    total = ids.shape[1] + max_new_tokens
    if cfg.position in ("learned", "sinusoidal") and total > cfg.max_seq_len:
        # fail before any work, not half-way through with the tokens generated so far lost
        raise ValueError(
            f"prompt length {ids.shape[1]} + max_new_tokens={max_new_tokens} = {total} is more than "
            f"max_seq_len={cfg.max_seq_len}, the length of the model's {cfg.position} position table"
        )
    cache = model.new_cache() if use_cache else None
    tokens, step_input = ids, ids
    for _ in range(max_new_tokens):
        logits = model(step_input, cache=cache)[:, -1]  # (B, V)
        next_token = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        tokens = torch.cat([tokens, next_token], dim=1)
        step_input = next_token if use_cache else tokens
    return tokens
