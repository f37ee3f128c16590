"""Training checkpoints: safetensors and JSON only, enough to continue a run bit for bit.

A checkpoint is a folder:

    model.safetensors       the weights, full (unsharded) tensors named as in model.state_dict()
    optimizer.safetensors   every optimiser state tensor, named "<parameter name>/<state key>"
                            (AdamW: step, exp_avg, exp_avg_sq; Muon: momentum_buffer)
    optimizer.json          the parameter groups (lr, betas, weight decay, ... and the parameter
                            names of each group) and any non-tensor state
    trainer.safetensors     the random states: the batch generator's and torch's (dropout)
    trainer.json            the step reached and the run's settings

No pickle anywhere: `torch.load` of a file from someone else can run their code, while a
safetensors file is only tensors and a JSON file only data. The state dicts come from
torch.distributed.checkpoint's `get_model_state_dict` / `get_optimizer_state_dict` with
full_state_dict=True, which work alike for a plain module, a DDP one and an FSDP-sharded one
(FSDP's shards are gathered: every rank must call `save`, rank 0 writes). Loading gives every
rank the full tensors and each keeps its own shard.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

__all__ = ["FILES", "load", "save"]

FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "trainer.safetensors", "trainer.json")
_TUPLES = ("betas", "ns_coefficients")  # group values that torch keeps as tuples; JSON gives lists back


def _full(model: nn.Module, optimizers: Any) -> tuple[dict, dict]:
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=options),
            get_optimizer_state_dict(model, list(optimizers), options=options))


def save(
    directory: str | Path,
    model: nn.Module,
    optimizers: Any,
    *,
    step: int,
    random_states: dict[str, torch.Tensor],
    settings: dict[str, Any],
    is_main: bool = True,
) -> Path:
    """Write a checkpoint of `model` and `optimizers` (an `olm_edu.optim.Optimizers` or a list)
    after `step` steps. Collective under FSDP: call it on every rank; only `is_main` writes."""
    weights, optimizer_state = _full(model, optimizers)
    directory = Path(directory)
    if not is_main:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in weights.items()}, directory / "model.safetensors")
    tensors, other = {}, {}
    for name, state in optimizer_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{name}/{key}"] = value.contiguous()
            else:
                other.setdefault(name, {})[key] = value
    save_file(tensors, directory / "optimizer.safetensors")
    groups = [{key: list(value) if isinstance(value, tuple) else value for key, value in group.items()}
              for group in optimizer_state["param_groups"]]
    (directory / "optimizer.json").write_text(json.dumps({"param_groups": groups, "state": other}, indent=1))
    save_file({name: state.contiguous() for name, state in random_states.items()}, directory / "trainer.safetensors")
    (directory / "trainer.json").write_text(json.dumps({"step": step, "settings": settings}, indent=1))
    return directory


def read_trainer_state(directory: str | Path) -> dict[str, Any]:
    """trainer.json of a checkpoint: {"step": ..., "settings": {...}}, with a clear error if absent."""
    directory = Path(directory)
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a training checkpoint: missing {', '.join(missing)}")
    return json.loads((directory / "trainer.json").read_text())


def load(directory: str | Path, model: nn.Module, optimizers: Any) -> tuple[int, dict[str, torch.Tensor], dict]:
    """Restore `model` and `optimizers` in place from a checkpoint written by `save`.

    Returns (step, random_states, settings). Every rank reads the files; FSDP keeps its shards.
    """
    directory = Path(directory)
    trainer = read_trainer_state(directory)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, load_file(directory / "model.safetensors"), options=options)
    saved = json.loads((directory / "optimizer.json").read_text())
    state: dict[str, dict[str, Any]] = {}
    for key, value in load_file(directory / "optimizer.safetensors").items():
        name, _, field = key.rpartition("/")
        state.setdefault(name, {})[field] = value
    for name, fields in saved["state"].items():
        state.setdefault(name, {}).update(fields)
    groups = [{key: tuple(value) if key in _TUPLES else value for key, value in group.items()}
              for group in saved["param_groups"]]
    set_optimizer_state_dict(model, list(optimizers), {"state": state, "param_groups": groups}, options=options)
    return trainer["step"], load_file(directory / "trainer.safetensors"), trainer["settings"]
