"""Values that cross between the grader and the student's kernel: JSON plus safetensors, never pickle.

A value is encoded as a JSON tree whose leaves are tagged; tensors go into one safetensors file
and the tree names them by key. What is data crosses as data: None, bool, int, float (NaN and
inf included), str, bytes, tuples, lists, dicts (keys of any encodable kind), torch tensors of
any real or complex dtype (as a detached copy, a non-contiguous view as the same view of a copy;
`requires_grad` is not kept), torch dtypes and
sizes, numpy arrays (as tensors), and three kinds of plain record a check hands to the learner's
code: a `ModelConfig` (its fields; rebuilt, and so validated, on arrival), a `types.SimpleNamespace`
(its attributes) and a CPU `torch.Generator` (its state). Subclasses of list, tuple and dict (Counter,
defaultdict, a namedtuple) arrive as the plain kind: a check sees their items, not their type.
Anything else (a function, a class, a module instance) stays
where it lives: the side that has it keeps it in a table and sends a *handle* ({"t": "handle"}),
which the other side turns into a proxy (`remote.RemoteObject`). The grader never sends a handle
of its own objects: what it cannot encode as data it refuses to send.

Decoding never runs code: the JSON parser and safetensors' own header parser read the bytes.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from olm_edu.models.config import ModelConfig

__all__ = ["encode", "decode", "write_message", "read_message", "NotData", "MAX_MESSAGE_BYTES"]

MAX_MESSAGE_BYTES = 512 * 2**20  # a larger answer is refused, not read


class NotData(TypeError):
    """The value is not data and the encoding side may not send handles."""


def encode(value: Any, tensors: dict[str, torch.Tensor], keep: Callable[[Any], int] | None = None) -> Any:
    """`value` as a JSON tree; tensors are added to `tensors`; `keep(obj) -> handle id` for the rest."""
    if value is None or isinstance(value, (bool, str)):
        return {"t": "v", "v": value}
    if isinstance(value, int):
        return {"t": "int", "v": str(int(value))}  # str: JSON numbers lose precision past 2**53
    if isinstance(value, float):
        return {"t": "float", "v": repr(float(value))}
    if isinstance(value, complex):
        return {"t": "complex", "v": [repr(value.real), repr(value.imag)]}
    if isinstance(value, (bytes, bytearray)):
        return {"t": "bytes", "v": bytes(value).hex()}
    if isinstance(value, torch.dtype):
        return {"t": "dtype", "v": str(value).removeprefix("torch.")}
    if isinstance(value, torch.Size):
        return {"t": "size", "v": list(value)}
    if isinstance(value, torch.Tensor):
        return _encode_tensor(value, tensors)
    if type(value).__module__ == "numpy" and hasattr(value, "dtype"):
        if getattr(value, "shape", None) == ():
            return encode(value.item(), tensors, keep)
        return _encode_tensor(torch.from_numpy(value.copy()), tensors)
    if type(value) is ModelConfig:
        return {"t": "config", "v": encode(value.to_dict(), tensors, keep)}
    if type(value) is types.SimpleNamespace:
        return {"t": "namespace", "v": encode(vars(value), tensors, keep)}
    if isinstance(value, torch.Generator) and value.device.type == "cpu":
        return {"t": "generator", "v": _encode_tensor(value.get_state(), tensors)}
    if isinstance(value, (tuple, list)):  # subclasses (a namedtuple) arrive as the plain kind
        kind = "tuple" if isinstance(value, tuple) else "list"
        return {"t": kind, "v": [encode(item, tensors, keep) for item in value]}
    if isinstance(value, dict):  # Counter, defaultdict, OrderedDict arrive as a plain dict
        return {"t": "dict", "v": [[encode(k, tensors, keep), encode(v, tensors, keep)] for k, v in value.items()]}
    if isinstance(value, torch.nn.Module):
        from olm_edu.grader.shadow import ShadowModule, describe, state_of

        def with_state(node: dict) -> dict:  # a module the grader sends goes with the state the grader gave it
            parameters, flags = state_of(value)
            return {**node, "state": encode(parameters, tensors), "flags": encode(flags, tensors)}

        if isinstance(value, ShadowModule) and value.__dict__.get("_remote") is not None:  # back to its kernel
            return with_state({"t": "module_ref", "v": value.__dict__["_remote"][1]})
        if keep is not None:
            return {"t": "module", "v": describe(value, keep, lambda item: encode(item, tensors, keep))}
        recipe = value.__dict__.get("_olm_edu_recipe")
        if recipe is not None:  # a check's module (grading.shared_module): the kernel makes its own copy
            module_name, name, args, kwargs = recipe
            return with_state({"t": "built", "v": [str(module_name), str(name)], "args": encode(list(args), tensors),
                               "kwargs": encode(dict(kwargs), tensors)})
    if keep is None:
        raise NotData(f"{type(value).__name__} is not data (tensors, numbers, strings, lists, tuples, dicts)")
    return {"t": "handle", "v": keep(value), "what": _describe(value)}


def _encode_tensor(tensor: torch.Tensor, tensors: dict[str, torch.Tensor]) -> dict:
    key = f"t{len(tensors)}"
    tensor = tensor.detach().cpu()
    node = {"t": "tensor", "v": key, "parameter": isinstance(tensor, torch.nn.Parameter)}
    strides = _layout(tensor)
    if strides is not None:  # a view (a transpose, an expand) crosses as the same view of a small buffer
        span = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, strides))
        buffer = torch.zeros(span, dtype=tensor.dtype)
        index = torch.as_strided(torch.arange(span), tensor.shape, strides).reshape(-1)  # repeats where it overlaps
        buffer[index] = tensor.reshape(-1)
        tensors[key] = buffer
        return {**node, "size": list(tensor.shape), "stride": list(strides)}
    copy = tensor.clone().contiguous()
    if copy.is_complex():
        copy, node["t"] = torch.view_as_real(copy).clone(), "complex_tensor"
    tensors[key] = copy
    return node


def _layout(tensor: torch.Tensor) -> tuple[int, ...] | None:
    """The strides worth keeping: those of a non-contiguous real tensor whose view fits a buffer at
    most a few times its size (a check's transposed or expanded input); None: send it contiguous."""
    if tensor.is_contiguous() or tensor.is_complex() or tensor.numel() == 0 or tensor.layout != torch.strided:
        return None
    span = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    return tuple(tensor.stride()) if span <= 4 * tensor.numel() + 1024 else None


def decode(node: Any, tensors: dict[str, torch.Tensor], handle: Callable[[int, str], Any] | None = None,
           module: Callable[[dict, Callable[[Any], Any]], Any] | None = None,
           module_ref: Callable[[Any, dict, dict], Any] | None = None) -> Any:
    """The value a JSON tree from `encode` stands for; `handle(id, what)` makes a proxy,
    `module(description, decode_value)` a shadow module (the grader's side), `module_ref(id or
    ("built", module, name, args, kwargs), state, flags)` the kernel's module a shadow stands for, or
    a copy of a check's module made in the kernel, given the grader's state."""
    if not isinstance(node, dict) or "t" not in node:
        raise ValueError(f"malformed message node {str(node)[:80]}")
    kind, value = node["t"], node.get("v")
    nested = lambda item: decode(item, tensors, handle, module, module_ref)  # noqa: E731 (the same callbacks below)
    if kind == "v":
        if value is None or isinstance(value, (bool, str)):
            return value
        raise ValueError("malformed plain value")
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "complex":
        return complex(float(value[0]), float(value[1]))
    if kind == "bytes":
        return bytes.fromhex(value)
    if kind == "dtype":
        dtype = getattr(torch, str(value), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {value!r}")
        return dtype
    if kind == "size":
        return torch.Size(int(v) for v in value)
    if kind in ("tensor", "complex_tensor"):
        tensor = tensors[str(value)]
        if "stride" in node:
            size, stride = [int(v) for v in node["size"]], [int(v) for v in node["stride"]]
            if len(size) != len(stride) or min(stride + size, default=0) < 0 or tensor.dim() != 1 or (
                    size and 1 + sum((n - 1) * s for n, s in zip(size, stride)) > tensor.numel()):
                raise ValueError("malformed strided tensor")
            tensor = torch.as_strided(tensor, size, stride)
        if kind == "complex_tensor":
            tensor = torch.view_as_complex(tensor.contiguous())
        return torch.nn.Parameter(tensor, requires_grad=False) if node.get("parameter") else tensor
    if kind in ("list", "tuple"):
        items = [nested(item) for item in value]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {nested(k): nested(v) for k, v in value}
    if kind in ("config", "namespace"):
        fields = nested(value)
        if not isinstance(fields, dict) or not all(isinstance(name, str) for name in fields):
            raise ValueError(f"malformed {kind}")
        return ModelConfig(**fields) if kind == "config" else types.SimpleNamespace(**fields)
    if kind == "generator":
        state = decode(value, tensors)
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
            raise ValueError("malformed generator state")
        generator = torch.Generator()
        generator.set_state(state)
        return generator
    if kind == "module":
        if module is None:
            raise ValueError("a module where only data is accepted")
        return module(value, nested)
    if kind == "built":
        if module_ref is None:
            raise ValueError("a module to build where only data is accepted")
        return module_ref(("built", str(value[0]), str(value[1]), nested(node["args"]), nested(node["kwargs"])),
                          nested(node["state"]), nested(node["flags"]))
    if kind == "module_ref":
        if module_ref is None:
            raise ValueError("a module reference where only data is accepted")
        return module_ref(int(value), nested(node["state"]), nested(node["flags"]))
    if kind == "handle":
        if handle is None:
            raise ValueError("a handle where only data is accepted")
        return handle(int(value), str(node.get("what", "object"))[:200])
    raise ValueError(f"unknown message node type {kind!r}")


def _describe(value: Any) -> str:
    kind = type(value)
    name = getattr(value, "__name__", None)
    return f"{kind.__name__} {name}" if isinstance(name, str) else kind.__name__


def write_message(folder: Path, stem: str, message: dict, tensors: dict[str, torch.Tensor]) -> None:
    """folder/stem.safetensors, then folder/stem.json (written last: its presence means complete)."""
    if tensors:
        save_file(tensors, str(folder / f"{stem}.safetensors"))
        (folder / f"{stem}.safetensors").chmod(0o644)  # safetensors writes 0600; the other side runs as another user
    text = json.dumps({**message, "has_tensors": bool(tensors)}, allow_nan=False)
    partial = folder / f"{stem}.json.partial"
    partial.write_text(text, encoding="utf-8")
    partial.replace(folder / f"{stem}.json")


def read_message(folder: Path, stem: str) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(message, tensors) written by `write_message`, or None when there is none."""
    path = folder / f"{stem}.json"
    if not path.is_file():
        return None
    tensor_file = folder / f"{stem}.safetensors"
    sizes = path.stat().st_size + (tensor_file.stat().st_size if tensor_file.exists() else 0)
    if sizes > MAX_MESSAGE_BYTES:
        raise ValueError(f"the answer is {sizes / 2**20:.0f} MB, more than {MAX_MESSAGE_BYTES // 2**20} MB")
    message = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(message, dict):
        raise ValueError("malformed message")
    tensors = load_file(str(tensor_file)) if message.get("has_tensors") and tensor_file.exists() else {}
    return message, tensors

