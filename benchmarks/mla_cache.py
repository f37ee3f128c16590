"""Benchmark multi-head latent attention's KV cache: bytes per token and decode speed.

The model: DeepSeek-V2-Lite's attention shrunk to 4 layers, 512 wide, 8 heads (content 64 +
rotated 32 dims for queries and keys, values 64), a latent of 128, no query latent, a dense
SwiGLU feed-forward of 1,408, vocabulary 4,096; float32, random weights (seed 0). Its latent
attention runs three ways (`LatentAttention.mode`), which compute the same function:

    latent cache, naive     caches c and k^R (128 + 32 numbers a token and layer); expands every
                            cached latent into keys and values at each step (transformers' way)
    latent cache, absorbed  caches the same; folds W_UK into the query and W_UV into the output,
                            attending over the latents directly (DeepSeek's inference way)
    expanded cache          caches every head's key (96) and value (64): 8 * 160 = 1,280 numbers
                            a token and layer, what standard multi-head attention would keep

For each context length it prefills a prompt of random tokens, then decodes new tokens one at a
time, greedily; it reports the cache bytes per token (measured: KVCache.nbytes() / tokens, and
as `kv_cache_bytes` computes them), the prefill time, and the median milliseconds per decoded
token. The three modes must produce identical tokens (exit status 1 if not). The first table
also gives the arithmetic for the published DeepSeek models.

Run: python benchmarks/mla_cache.py                          (about a minute on 2 CPU cores)
     python benchmarks/mla_cache.py --quick                  (short contexts, a smoke run)
     python benchmarks/mla_cache.py --contexts 512 4096 --new-tokens 64 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from olm_edu.analysis import kv_cache_bytes
from olm_edu.models import ModelConfig, build, preset
from olm_edu.models.build import set_mla_mode

MODES = {"latent cache, naive": "naive", "latent cache, absorbed": "absorbed", "expanded cache": "expanded"}


def bench_config(max_seq_len: int) -> ModelConfig:
    lite = preset("DeepSeek-V2-Lite")
    return lite.replace(
        name="mla-4L-512", vocab_size=4096, max_seq_len=max(max_seq_len, 64), embed_dim=512, num_layers=4,
        num_heads=8, head_dim=64, rope_head_dim=32, value_head_dim=None, kv_latent_dim=128, q_latent_dim=None,
        hidden_dim=1408, num_experts=0, experts_per_token=None, expert_hidden_dim=None, num_shared_experts=0,
        first_dense_layers=0, rope_scaling=None,
    )  # fmt: skip


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def decode(model, prompt: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float, list[float], int]:
    """(new tokens (1, new_tokens), prefill seconds, seconds of each decode step, cache bytes)."""
    device = prompt.device
    cache = model.new_cache()
    synchronize(device)
    start = time.perf_counter()
    token = model(prompt, cache=cache)[:, -1].argmax(-1, keepdim=True)
    synchronize(device)
    prefill = time.perf_counter() - start
    tokens, steps = [token], []
    for _ in range(new_tokens - 1):
        start = time.perf_counter()
        token = model(token, cache=cache)[:, -1].argmax(-1, keepdim=True)
        synchronize(device)
        steps.append(time.perf_counter() - start)
        tokens.append(token)
    return torch.cat(tokens, dim=1), prefill, steps, cache.nbytes()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 2048], help="prompt lengths")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens decoded after each prompt (default 32)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help=f"torch threads (default torch's: {torch.get_num_threads()})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--quick", action="store_true", help="smoke run: contexts 64 and 256, 8 new tokens")
    args = parser.parse_args()
    if args.quick:
        args.contexts, args.new_tokens = [64, 256], 8
    if args.new_tokens < 2 or min(args.contexts) < 1 or args.threads < 1:
        parser.error("--new-tokens must be at least 2, --contexts and --threads at least 1")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = bench_config(max(args.contexts) + args.new_tokens)
    model = build(cfg).to(device).eval()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, float32, {where}")
    print(f"config {cfg.name}: {model.num_parameters() / 1e6:.1f}M parameters, {cfg.num_layers} layers, "
          f"{cfg.num_heads} heads of {cfg.head_size} + {cfg.rope_head_dim} (values {cfg.value_head_size}), "
          f"latent {cfg.kv_latent_dim}; batch 1, greedy\n")

    print("KV-cache bytes per token (all layers)\n")
    print(f"| {'model':<22} | {'dtype':<5} | {'latent cache':>12} | {'expanded cache':>14} | {'ratio':>6} |")
    print(f"|{'-' * 24}|{'-' * 7}|{'-' * 14}|{'-' * 16}|{'-' * 8}|")
    published = [(preset(name), torch.bfloat16, "bf16") for name in ("DeepSeek-V2-Lite", "DeepSeek-V3")]
    rows = [(cfg, torch.float32, "fp32")] + published
    for config, dtype, label in rows:
        latent = kv_cache_bytes(config, 1, dtype)
        expanded = config.num_layers * config.num_heads * (config.qk_head_size + config.value_head_size) * dtype.itemsize
        print(f"| {config.name:<22} | {label:<5} | {latent:>12,} | {expanded:>14,} | {expanded / latent:>5.1f}x |")

    results = {}
    for context in args.contexts:
        prompt = torch.randint(0, cfg.vocab_size, (1, context), generator=torch.Generator().manual_seed(context)).to(device)
        for mode in MODES.values():  # warm-up: first calls allocate and pick kernels
            decode(set_mla_mode(model, mode), prompt[:, :16], 4)
        for label, mode in MODES.items():
            tokens, prefill, steps, nbytes = decode(set_mla_mode(model, mode), prompt, args.new_tokens)
            results[context, label] = (tokens, prefill, statistics.median(steps), nbytes / (context + args.new_tokens - 1))

    print(f"\ndecoding {args.new_tokens} tokens after a prompt of N tokens: cache bytes per token (measured), "
          "prefill seconds, median ms per decoded token\n")
    print(f"| {'N':>5} | {'mode':<22} | {'bytes/token':>11} | {'prefill (s)':>11} | {'ms/token':>8} | {'vs expanded':>11} |")
    print(f"|{'-' * 7}|{'-' * 24}|{'-' * 13}|{'-' * 13}|{'-' * 10}|{'-' * 13}|")
    identical = True
    for context in args.contexts:
        reference = results[context, "expanded cache"]
        for label in MODES:
            tokens, prefill, step, per_token = results[context, label]
            identical &= torch.equal(tokens, reference[0])
            print(f"| {context:>5} | {label:<22} | {per_token:>11,.0f} | {prefill:>11.3f} | {1000 * step:>8.2f} | "
                  f"{reference[2] / step:>10.2f}x |")
    print(f"\nidentical tokens in all three modes: {identical}")
    print("\nreproduce: python benchmarks/mla_cache.py", *sys.argv[1:])
    if not identical:
        raise SystemExit("the three ways of computing latent attention disagree")


if __name__ == "__main__":
    main()
