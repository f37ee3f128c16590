"""Checks for lesson 25 — Beyond one device (gradient averaging, gradient accumulation, memory per rank).

average_gradients
    The learner's function runs where it is meant to run: in 2 real processes joined by the gloo
    backend (this module, run as `python -m olm_edu.checks.distributed`, is each rank's program;
    the learner's source is read with `inspect.getsource` and executed there with `torch`,
    `dist` = torch.distributed and `nn` in scope). Each rank builds the same tiny model, takes its
    half of a global batch, runs backward, then calls the learner's function. The reference is
    the gradient of one single-process backward on the whole batch, computed on each rank; the
    usual mistakes are computed too: nothing done (the rank's own gradient), the sum over ranks
    (no division), a division without the all-reduce.

accumulate_gradients
    Reference: one backward of the mean loss on the whole batch (float32; the learner's
    micro-batches sum in another order). Mistakes: losses not divided by the number of
    micro-batches, gradients zeroed between micro-batches, divided by the batch size.

training_bytes
    Reference: `olm_edu.analysis.training_bytes_per_rank` for Llama-3.1-8B and DeepSeek-V3 on 8
    and 64 ranks under every sharding. Mistakes: 16 bytes sharded whatever the stage, the
    optimiser state left unsharded in ZeRO-2, fp32 gradients, no fp32 master copy (8 bytes of
    optimiser state), no ceiling on the shard.

Tolerances: gradients atol=1e-6, rtol=1e-4 (float32, another summation order); bytes exact.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from olm_edu.grading import Check, exercise, shared_module

__all__ = ["accumulate_gradients", "average_gradients", "training_bytes"]

GRAD_TOL = dict(atol=1e-6, rtol=1e-4)
WORLD_SIZE = 2


def _tiny_model(seed: int) -> nn.Module:
    from olm_edu.models import ModelConfig, build

    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=13, max_seq_len=8, embed_dim=16, num_layers=1, num_heads=2, hidden_dim=32)
    return shared_module(build, cfg)


def _batch(seed: int, rows: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, 13, (rows, 9), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


def _loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from olm_edu.train import next_token_loss

    return next_token_loss(model(inputs), targets)


def _gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------------------
# Exercise 1 — average gradients across ranks (runs in 2 processes)
# ---------------------------------------------------------------------------


def _rank_main(source_file: str, name: str, seed: int, out_file: str) -> None:
    """One rank's program: backward on this rank's half, the learner's averaging, the comparison."""
    import torch.distributed as dist

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    result: dict = {"rank": rank}
    try:
        inputs, targets = _batch(seed)
        whole = _tiny_model(seed)
        _loss(whole, inputs, targets).backward()
        reference = _gradients(whole)
        model = _tiny_model(seed)
        half = inputs.shape[0] // world_size
        rows = slice(rank * half, (rank + 1) * half)
        _loss(model, inputs[rows], targets[rows]).backward()
        own = _gradients(model)
        summed = {k: v * world_size for k, v in reference.items()}
        halved = {k: v / world_size for k, v in own.items()}
        namespace = {"torch": torch, "dist": dist, "nn": nn}
        exec(compile(Path(source_file).read_text(), "<your average_gradients>", "exec"), namespace)
        namespace[name](model)
        got = _gradients(model)
        verdicts = {}
        for label, expected in {"reference": reference, "own": own, "sum": summed, "halved": halved}.items():
            verdicts[label] = got.keys() == expected.keys() and all(
                torch.allclose(got[k], expected[k], **GRAD_TOL) for k in expected)
        worst = max(((got[k] - reference[k]).abs().max().item(), k) for k in reference if k in got)
        result.update(verdicts=verdicts, worst=worst, missing=sorted(reference.keys() - got.keys()))
    except Exception as error:  # reported to the learner by the parent process
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        Path(out_file).write_text(json.dumps(result))
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_on_two_ranks(fn: Callable, seed: int) -> list[dict]:
    source = textwrap.dedent(inspect.getsource(fn))
    with tempfile.TemporaryDirectory() as folder:
        source_file = Path(folder) / "learner.py"
        source_file.write_text(source)
        port = _free_port()
        processes = []
        for rank in range(WORLD_SIZE):
            env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(WORLD_SIZE), "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
            command = [sys.executable, "-m", "olm_edu.checks.distributed", str(source_file), fn.__name__, str(seed),
                       str(Path(folder) / f"rank{rank}.json")]
            processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        outputs = []
        for process in processes:
            try:
                outputs.append(process.communicate(timeout=180)[0].decode(errors="replace"))
            except subprocess.TimeoutExpired:
                for other in processes:
                    other.kill()
                return [{"error": "the two processes did not finish in 180 s: does every rank call all_reduce "
                                  "the same number of times, in the same order?"}]
        results = []
        for rank in range(WORLD_SIZE):
            path = Path(folder) / f"rank{rank}.json"
            results.append(json.loads(path.read_text()) if path.exists()
                           else {"error": f"rank {rank} stopped early: {outputs[rank][-500:]}"})
        return results


@exercise("Exercise 1 — average gradients across ranks")
def average_gradients(check: Check, fn: Callable[[nn.Module], None]) -> None:
    """fn(model) averages every parameter's .grad over the ranks in place, with dist.all_reduce."""
    rounds = 2 if check.hidden else 1
    for round_index in range(rounds):
        seed = check.seed + round_index
        for result in _run_on_two_ranks(fn, seed):
            where = f"on rank {result.get('rank', '?')} of 2 (gloo)"
            if result.get("error", "").startswith("NotImplementedError"):
                raise NotImplementedError("average_gradients is still the stub")  # shown as ⏳, not ❌
            if "error" in result:
                check.fail(f"{where} your function raised {result['error']}"
                           + (" (gloo has no ReduceOp.AVG: sum, then divide by dist.get_world_size())"
                              if "AVG" in result["error"] or "avg" in result["error"].lower() else ""))
            verdicts = result["verdicts"]
            if verdicts["reference"]:
                check.passed += 1
                continue
            if result["missing"]:
                check.fail(f"{where} these parameters lost their gradient: {result['missing'][:3]}")
            if verdicts["own"]:
                check.fail(f"{where} the gradients are still this rank's own: all_reduce each parameter's .grad")
            if verdicts["sum"]:
                check.fail(f"{where} the gradients are the sum over the ranks: divide by dist.get_world_size()")
            if verdicts["halved"]:
                check.fail(f"{where} the gradients were divided by the world size but never all-reduced")
            error, name = result["worst"]
            check.fail(f"{where} the gradient of {name} differs from the whole batch's by up to {error:.3g}")


# ---------------------------------------------------------------------------
# Exercise 2 — gradient accumulation
# ---------------------------------------------------------------------------


@exercise("Exercise 2 — gradient accumulation")
def accumulate_gradients(check: Check, fn: Callable[..., None]) -> None:
    """fn(model, inputs, targets, micro_batches) leaves the whole batch's mean-loss gradient in .grad."""
    cases = [(8, 4), (6, 3), (4, 1)] + ([(12, 2), (12, 6)] if check.hidden else [])
    for rows, micro_batches in cases:
        seed = check.seed + rows + micro_batches
        inputs, targets = _batch(seed, rows)
        whole = _tiny_model(seed)
        _loss(whole, inputs, targets).backward()
        reference = _gradients(whole)
        mistakes: dict[str, dict[str, torch.Tensor]] = {
            "the gradient is micro_batches times too large: divide each micro-batch's loss by micro_batches":
                {k: v * micro_batches for k, v in reference.items()},
            "the gradient is divided by the batch size as well: each micro-batch's loss is already a mean":
                {k: v / rows for k, v in reference.items()},
        }
        last = _tiny_model(seed)
        size = rows // micro_batches
        (_loss(last, inputs[-size:], targets[-size:]) / micro_batches).backward()
        mistakes["only the last micro-batch is left: do not zero the gradients between micro-batches"] = _gradients(last)
        model = _tiny_model(seed)
        check.call(fn, model, inputs, targets, micro_batches, what=f"accumulate_gradients on {rows} rows in "
                                                                     f"{micro_batches} micro-batches")
        got = _gradients(model)
        what = f"{rows} rows in {micro_batches} micro-batches"
        if got.keys() != reference.keys():
            check.fail(f"{what}: no gradient on {sorted(reference.keys() - got.keys())[:3]}: call loss.backward()")
        for message, wrong in mistakes.items():
            if micro_batches > 1 and all(torch.allclose(got[k], wrong[k], **GRAD_TOL) for k in reference) and not all(
                    torch.allclose(got[k], reference[k], **GRAD_TOL) for k in reference):
                check.fail(f"{what}: {message}")
        for name in reference:
            check.close(got[name], reference[name], what=f"{what}: the gradient of {name}", **GRAD_TOL)


# ---------------------------------------------------------------------------
# Exercise 3 — memory per rank
# ---------------------------------------------------------------------------


def _bytes_mistakes(n: int, world: int) -> dict[str, int]:
    shard = -(-n // world)
    return {
        "every stage shards all 16 bytes: only FSDP (ZeRO-3) shards the parameters, ZeRO-2 keeps them whole":
            16 * shard,
        "nothing is sharded: that is plain DDP": 16 * n,
        "ZeRO-2 also shards the gradients: 2 N + (2 + 12) N / world_size": 4 * n + 12 * shard,
        "ZeRO-1 shards only the optimiser state (12 bytes), not the gradients": 2 * n + 14 * shard,
        "the optimiser state is 12 bytes per parameter: an fp32 master copy plus Adam's two fp32 moments":
            -1,  # filled per sharding below
    }


@exercise("Exercise 3 — training memory per rank")
def training_bytes(check: Check, fn: Callable[[int, int, str], int]) -> None:
    """fn(num_parameters, world_size, sharding) -> bytes per rank (bf16 weights and grads, fp32 Adam)."""
    from olm_edu.analysis import SHARDING, count_params, training_bytes_per_rank
    from olm_edu.models import preset

    models = ["Llama-3.1-8B", "DeepSeek-V3"] + (["Qwen3-0.6B", "gpt2"] if check.hidden else [])
    worlds = (8, 64) + ((3, 1000) if check.hidden else ())
    for name in models:
        cfg = preset(name)
        n = count_params(cfg).total
        for world in worlds:
            shard = -(-n // world)
            for sharding in SHARDING:
                expected = training_bytes_per_rank(cfg, world, sharding)["total"]
                split = {"ddp": 0, "zero1": 1, "zero2": 2, "fsdp": 3}[sharding]
                no_master = {0: 12 * n, 1: 4 * n + 8 * shard, 2: 2 * n + 10 * shard, 3: 12 * shard}[split]
                fp32_grads = {0: 18 * n, 1: 6 * n + 12 * shard, 2: 2 * n + 16 * shard, 3: 18 * shard}[split]
                mistakes = {k: v for k, v in _bytes_mistakes(n, world).items() if v != -1}
                mistakes["the optimiser state is 12 bytes per parameter: an fp32 master copy (4) plus Adam's two "
                         "fp32 moments (4 + 4)"] = no_master
                mistakes["the gradients are bf16, 2 bytes each, like the parameters"] = fp32_grads
                mistakes["a shard holds ceil(N / world_size) parameters: round up, not down"] = {
                    0: 16 * n, 1: 4 * n + 12 * (n // world), 2: 2 * n + 14 * (n // world), 3: 16 * (n // world)}[split]
                got = check.call(fn, n, world, sharding, what=f"training_bytes({n:,}, {world}, {sharding!r})")
                check.count(got, expected, mistakes, what=f"{name} on {world} ranks with {sharding}")


if __name__ == "__main__":  # one rank of the average_gradients check
    _rank_main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
