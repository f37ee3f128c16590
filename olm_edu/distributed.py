"""Training on several processes: data parallelism (DDP) and fully sharded data parallelism (FSDP2).

One process per device (a GPU, or a slice of the CPU cores), all running the same script. A
launcher, `torchrun --nproc_per_node N script.py`, starts them and tells each its place through
environment variables: RANK (0..N-1), WORLD_SIZE (N), LOCAL_RANK (its device on this machine)
and MASTER_ADDR/MASTER_PORT (where they meet). `setup()` reads them and joins the group: NCCL
on GPUs, gloo on CPUs; the code is otherwise the same.

Data parallelism (DDP)
    Every rank holds the whole model and optimiser and takes a different slice of the global
    batch. After backward each rank's gradient is the mean over its own slice; one all-reduce
    (sum over ranks, then / N) gives every rank the mean over the whole batch, so every rank
    takes the same optimiser step and the copies stay identical:

        g = 1/N * sum_r g_r          (`average_gradients` by hand; DDP does it in buckets,
                                      overlapped with the backward pass)

FSDP (ZeRO-3)
    DDP keeps N copies of the parameters, gradients and optimiser state. FSDP keeps 1/N of
    each on each rank (dim-0 shards of every tensor): before a layer runs, an all-gather
    rebuilds its full weights and frees them after; after backward, a reduce-scatter leaves each
    rank the mean gradient of its own shard only, and the optimiser updates that shard. Memory
    per rank falls by about N for the parameter-sized tensors; the maths of the step is the
    same as DDP's. `fully_shard` (FSDP2) is applied to each block, then to the whole model (the
    embeddings, final norm and head form the root unit).

The global batch
    `rank_slice` cuts a global batch (B, T) into N equal slices along B: rank r trains on rows
    [r B/N, (r+1) B/N). Drawn from the same seeded generator on every rank, the global batch
    is the one a single process would draw, so a DDP or FSDP step on it equals the
    single-process step (up to the order of floating-point sums).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from olm_edu.choices import check_choice

__all__ = [
    "PARALLEL",
    "Distributed",
    "all_mean",
    "average_gradients",
    "checkpoint_activations",
    "rank_slice",
    "setup",
    "teardown",
    "wrap",
]

PARALLEL = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: rank (0..world_size-1), local_rank (device on this machine),
    the device it trains on and the backend ("gloo", "nccl", or None for a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints, writes checkpoints and logs."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or any launcher setting RANK and WORLD_SIZE) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str = "auto") -> Distributed:
    """Join the process group torchrun describes (NCCL with CUDA, else gloo), or stay single.

    device: "auto" (CUDA:LOCAL_RANK if CUDA is available, else CPU under torchrun; CUDA, MPS or
    CPU for a single process), or a device name.
    """
    from olm_edu.train import pick_device

    if not launched_by_torchrun():
        return Distributed(device=pick_device(device))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu" if device == "auto" else device)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    return Distributed(rank, world_size, local_rank, chosen, backend)


def teardown() -> None:
    """Leave the process group (a no-op for a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------
# The data-parallel pieces
# ---------------------------------------------------------------------------


def rank_slice(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rows [rank B/N, (rank+1) B/N) of a global batch (B, ...): this rank's share."""
    if batch.shape[0] % world_size:
        raise ValueError(f"a global batch of {batch.shape[0]} rows does not split into {world_size} equal slices")
    size = batch.shape[0] // world_size
    return batch[rank * size : (rank + 1) * size]


def average_gradients(model: nn.Module) -> None:
    """Data parallelism by hand: every gradient becomes its mean over the ranks (in place).

    g <- all_reduce(g, SUM) / world_size, one collective per tensor (DDP fuses them into
    buckets and overlaps them with the backward pass; the result is the same).
    """
    world_size = dist.get_world_size()
    for parameter in model.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad /= world_size


def all_mean(value: float | torch.Tensor, ctx: Distributed) -> float:
    """The mean of a scalar over the ranks (the value itself for a single process)."""
    if ctx.world_size == 1:
        return float(value)
    tensor = torch.tensor(float(value), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.item() / ctx.world_size


# ---------------------------------------------------------------------------
# Wrapping a model
# ---------------------------------------------------------------------------


def _blocks(model: nn.Module) -> list[nn.Module]:
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no .layers: cannot shard or checkpoint it block by block")
    return list(layers)


def checkpoint_activations(model: nn.Module) -> nn.Module:
    """Recompute each block's activations in the backward pass instead of storing them.

    Each block's forward runs under torch.utils.checkpoint: only its input is kept, and the
    block is run again during backward to rebuild what its gradient needs. Memory for
    activations falls from all layers' intermediates to one layer's plus each block's input,
    for about one extra forward pass of compute. The gradients are the same.
    """
    for block in _blocks(model):
        if getattr(block, "_olm_checkpointed", False):
            continue
        plain = block.forward

        @functools.wraps(plain)
        def forward(*args, _plain=plain, **kwargs):
            if not torch.is_grad_enabled():
                return _plain(*args, **kwargs)
            return checkpoint(_plain, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        block._olm_checkpointed = True
    return model


def wrap(model: nn.Module, parallel: str, ctx: Distributed) -> nn.Module:
    """The model as `parallel` trains it: "none" (as is), "ddp" (DistributedDataParallel) or
    "fsdp" (`fully_shard` on every block, then on the whole model). The model must already be
    on ctx.device. Returns the module to call for the forward pass."""
    check_choice("parallel", parallel, PARALLEL)
    if parallel == "none":
        return model
    if ctx.world_size == 1 and not dist.is_initialized():
        raise ValueError(f"--parallel {parallel} needs a process group: launch with torchrun --nproc_per_node N")
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for block in _blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model
