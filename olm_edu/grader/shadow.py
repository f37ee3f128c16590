"""The learner's nn.Module, seen from the grader: a shadow tree whose forward runs in the kernel.

A check of a module class (`check.layer_norm(LayerNorm)`) builds the learner's module, looks at
its parameters, copies weights into it, switches it to eval mode and calls it. Judged from the
grader, the module lives in the student's kernel; what comes back when the class is called is a
*description* of the module tree (`describe`, run in the kernel): each submodule's class, its
parameters and buffers (as data, a tied parameter once), its plain attributes (`eps`, `in_features`)
and its training flag. `build` turns that into a shadow here:

- a torch.nn class (nn.Linear, nn.Embedding, nn.ModuleList, ...) becomes an instance of that very
  class, so `isinstance(model.lm_head, nn.Linear)` holds and its forward is torch's own;
- any other class (the learner's, or olm_edu's) becomes a `ShadowModule` subclass of the same
  name, whose forward is a request to the kernel.

The shadow is an ordinary nn.Module here: a check reads and changes its parameters, loads a state
dict, calls `.eval()` or `.double()`. Each remote forward first sends the state of that part of the
tree (every parameter and buffer, by name, and every training flag), the kernel puts it into the
learner's module (`apply_state`, dtype changes included) and runs the learner's forward there.
So the check's comparisons, references and verdicts stay here, where no student code runs.

Not carried: methods of the learner's class other than forward (the shadow has none), a subclass of a torch.nn class written by the learner (it is a ShadowModule, not
an instance of the torch class), and attributes that are neither plain values nor modules.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

__all__ = ["describe", "apply_state", "build", "make", "ShadowModule", "state_of"]

_PLAIN = (bool, int, float, str, type(None))


def _plain(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(_plain(item) for item in value)
    return isinstance(value, _PLAIN)


def describe(module: nn.Module, keep: Callable[[Any], int], encode_value: Callable[[Any], Any]) -> dict:
    """The tree of `module` as data (run in the kernel; `encode_value` is the codec's). A parameter
    met twice (a tied head) is described once and referenced by its first name afterwards."""
    seen: dict[int, str] = {}

    def node(current: nn.Module, prefix: str) -> dict:
        kind = type(current)
        builtin = kind.__module__.startswith("torch.nn.modules.") and getattr(nn, kind.__name__, None) is kind
        params = []
        for name, parameter in current._parameters.items():
            full = prefix + name
            if parameter is None:
                params.append([name, None])
            elif id(parameter) in seen:
                params.append([name, {"tied": seen[id(parameter)]}])
            else:
                seen[id(parameter)] = full
                entry = {"tensor": encode_value(parameter.detach()), "grad": bool(parameter.requires_grad)}
                if parameter.grad is not None:
                    entry["gradient"] = encode_value(parameter.grad.detach())
                params.append([name, entry])
        buffers = [[name, None if buffer is None else encode_value(buffer), name not in current._non_persistent_buffers_set]
                   for name, buffer in current._buffers.items()]
        attrs = [[name, encode_value(value)] for name, value in vars(current).items()
                 if not name.startswith("_") and name != "training" and _plain(value)]
        children = [[name, None if child is None else node(child, f"{prefix}{name}.")]
                    for name, child in current._modules.items()]
        return {"class": kind.__name__, "builtin": builtin, "handle": None if builtin else keep(current),
                "training": bool(current.training), "params": params, "buffers": buffers, "attrs": attrs,
                "children": children}

    return node(module, "")


def state_of(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    """(every parameter and buffer by name, every submodule's training flag): what a remote forward sends."""
    tensors = {name: tensor.detach() for name, tensor in module.named_parameters()}
    tensors.update({f"buffer:{name}": tensor.detach() for name, tensor in module.named_buffers()})
    flags = {name: bool(sub.training) for name, sub in module.named_modules()}
    return tensors, flags


def apply_state(module: nn.Module, tensors: dict[str, torch.Tensor], flags: dict[str, bool]) -> None:
    """Put the grader's copy of the state into the learner's module (run in the kernel)."""
    with torch.no_grad():
        for name, tensor in tensors.items():
            if name.startswith("buffer:"):
                owner_name, _, attribute = name.removeprefix("buffer:").rpartition(".")
                owner = module.get_submodule(owner_name)
                if attribute in owner._buffers:
                    owner._buffers[attribute] = tensor
            else:
                parameter = module.get_parameter(name)
                parameter.data = tensor.to(parameter.device)
    for name, flag in flags.items():
        module.get_submodule(name).training = flag


def make(module_name: str, name: str, args: list, kwargs: dict) -> nn.Module:
    """A check's module, made in the kernel from its recipe (`grading.shared_module`): an olm_edu or
    torch.nn factory by module and name, and its arguments."""
    import importlib

    if not (module_name == "olm_edu" or module_name.startswith(("olm_edu.", "torch.nn"))):
        raise ValueError(f"no module is made from {module_name}")
    factory: Any = importlib.import_module(module_name)
    for part in name.split("."):
        factory = getattr(factory, part)
    module = factory(*args, **kwargs)
    if not isinstance(module, nn.Module):
        raise ValueError(f"{module_name}.{name} did not make a module")
    return module


class ShadowModule(nn.Module):
    """A module of the learner's kernel; its forward sends the state and the inputs there."""

    _remote: Any = None  # set per instance by `build`: (kernel, handle)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.call_remotely(args, kwargs)

    def call_remotely(self, args: tuple, kwargs: dict, forbid: tuple[str, ...] = (), reason: str = "") -> Any:
        """Forward in the kernel, after sending this subtree's parameters, buffers and modes."""
        from olm_edu.grader.remote import _copy_back

        kernel, handle = self._remote
        tensors, flags = state_of(self)
        value, after = kernel.request("module_call", target=handle, args=list(args), kwargs=dict(kwargs),
                                      state=tensors, flags=flags, forbid=list(forbid), reason=reason)
        _copy_back(list(args), after)
        return value


def _tensor(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError("a module's parameter or buffer is not a tensor")
    return value.detach() if not isinstance(value, nn.Parameter) else value.data


_SHADOW_CLASSES: dict[str, type] = {}


def _shadow_class(name: str) -> type:
    """A ShadowModule subclass named as the learner's class (messages name `type(model).__name__`)."""
    safe = name if name.isidentifier() else "Module"
    if safe not in _SHADOW_CLASSES:
        _SHADOW_CLASSES[safe] = type(safe, (ShadowModule,), {"__module__": "student"})
    return _SHADOW_CLASSES[safe]


def build(description: dict, kernel: Any, decode_value: Callable[[Any], Any]) -> nn.Module:
    """The shadow of a module tree described by `describe` (run here, in the grader)."""
    by_name: dict[str, nn.Parameter] = {}

    def make(node: dict, prefix: str) -> nn.Module:
        if not isinstance(node, dict):
            raise ValueError("malformed module description")
        if node.get("builtin"):
            kind = getattr(nn, str(node["class"]), None)
            if not (isinstance(kind, type) and issubclass(kind, nn.Module)):
                raise ValueError(f"unknown torch.nn class {node['class']!r}")
            module = kind.__new__(kind)
            nn.Module.__init__(module)
        else:
            module = _shadow_class(str(node["class"]))()
            module.__dict__["_remote"] = (kernel, int(node["handle"]))
        for name, value in node["attrs"]:
            if isinstance(name, str) and name.isidentifier() and name not in ("forward", "call_remotely", "training"):
                value = decode_value(value)
                if not _plain(value):
                    raise ValueError(f"attribute {name} of a module is not a plain value")
                object.__setattr__(module, name, value)
        module.training = bool(node["training"])
        for name, entry in node["params"]:
            if entry is None:
                module.register_parameter(name, None)
            elif "tied" in entry:
                module.register_parameter(name, by_name[str(entry["tied"])])
            else:
                parameter = nn.Parameter(_tensor(decode_value(entry["tensor"])), requires_grad=bool(entry["grad"]))
                if "gradient" in entry:
                    parameter.grad = _tensor(decode_value(entry["gradient"]))
                by_name[prefix + name] = parameter
                module.register_parameter(name, parameter)
        for name, entry, persistent in node["buffers"]:
            module.register_buffer(name, None if entry is None else _tensor(decode_value(entry)), persistent=bool(persistent))
        for name, child in node["children"]:
            module.add_module(name, None if child is None else make(child, f"{prefix}{name}."))
        return module

    return make(description, "")
