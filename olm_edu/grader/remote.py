"""The grader's side of out-of-process judging: proxies for the objects in the student's kernel.

A check cell is not run in the student's kernel. The grader runs it in its own process, with the
trusted check module, and every name the cell takes from the notebook (`softmax` in
`check.softmax(softmax)`) is fetched from the kernel: data (a tensor, a number, a list) as a
copy, anything else (a function, a class) as a `RemoteObject`. Calling a `RemoteObject` sends the
arguments to the kernel (`codec`: JSON + safetensors, never pickle), calls the learner's object
there (`kernel_side.serve`), and brings back the result, and the arguments as they are after the
call: a tensor argument the learner changed in place is changed here too, so "the input is left
unchanged" stays checkable. The reference answer, the comparison and the verdict all happen
here, where no student code runs: monkeypatching torch, the checks or the import system inside
the kernel can change only the student's own outputs.

Limits (the proxy is not the object): `isinstance(proxy, nn.Module)` is false, `id()` and
in-place changes the grader makes to values it fetched do not reach the kernel. Checks that need
those (the learner's nn.Module classes) are judged in the kernel instead (see `judging`).
"""

from __future__ import annotations

import builtins
import contextlib
import types
from pathlib import Path
from typing import Any, Callable

import torch

from olm_edu.grader.codec import NotData, decode, encode, read_message, write_message
from olm_edu.grader.shadow import build as build_shadow
from olm_edu.grading import CheckFailed

__all__ = ["Kernel", "RemoteObject", "RemoteError"]


class RemoteError(Exception):
    """An exception raised by the learner's code in the kernel (its type name is the class name)."""


def _message_only(self: BaseException, message: str = "") -> None:
    BaseException.__init__(self, message)  # not the built-in's own __init__ (UnicodeError wants five)


def _error_class(name: str) -> type[RemoteError]:
    """A RemoteError named as the learner's exception; for a built-in type (ValueError, KeyError)
    also an instance of it, so that a check's `except ValueError` sees what it would see in the kernel."""
    safe = name if name.isidentifier() else "Error"
    builtin = getattr(builtins, safe, None)
    if isinstance(builtin, type) and issubclass(builtin, Exception) and not issubclass(builtin, AssertionError):
        try:
            return type(safe, (RemoteError, builtin), {"__module__": "student", "__init__": _message_only,
                                                      "__str__": lambda self: str(self.args[0]) if self.args else ""})
        except TypeError:  # a built-in whose layout cannot be combined
            pass
    return type(safe, (RemoteError,), {"__module__": "student"})


class Kernel:
    """Requests to the student's kernel through the channel folder.

    `execute(code)` runs one line in the kernel (the worker's nbclient client); the request and the
    response are files in `channel`, a folder the sandbox shares with the grader.
    """

    def __init__(self, channel: Path, execute: Callable[[str], None]):
        self.channel = channel
        self.execute = execute

    def request(self, op: str, **fields: Any) -> Any:
        for stale in [*self.channel.glob("request.*"), *self.channel.glob("response.*")]:
            stale.unlink()
        tensors: dict[str, torch.Tensor] = {}
        message = {"op": op}
        if op in ("call", "module_call"):  # the global generator crosses too: the learner's draws are the ones
            fields["rng"] = torch.get_rng_state()  # a call in this process would make (dropout, nn.init)
        for key, value in fields.items():
            message[key] = encode(value, tensors) if key in ("args", "kwargs", "key", "gradient", "state", "flags",
                                                             "rng") else value
        write_message(self.channel, "request", message, tensors)
        self.execute(f"__import__('olm_edu.grader.kernel_side', fromlist=['serve']).serve({str(self.channel)!r})")
        try:
            answer = read_message(self.channel, "response")
        except Exception as error:  # a malformed or oversized answer is the student's output, and wrong
            raise RemoteError(f"the grader could not read what your code returned: {error}") from None
        if answer is None:
            raise RemoteError("your code returned nothing the grader could read (did it change the notebook's "
                              "machinery, or stop the kernel?)")
        response, out_tensors = answer
        if "rng_after" in response:
            state = out_tensors.get(str(response["rng_after"]))
            if isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.shape == fields["rng"].shape:
                torch.set_rng_state(state)
        if not response.get("ok"):
            text, kind = str(response.get("message", ""))[:2000], response.get("kind")
            if kind == "not_implemented":
                raise NotImplementedError(text)
            if kind == "refused":
                raise CheckFailed(text)
            raise _error_class(str(response.get("type", "Error")))(text)
        make = lambda handle, what: RemoteObject(self, handle, what)
        shadow = lambda description, decode_value: build_shadow(description, self, decode_value)
        try:
            value = decode(response["value"], out_tensors, make, shadow)
            after = decode(response["args_after"], out_tensors, make, shadow) if "args_after" in response else None
        except (KeyError, ValueError, TypeError) as error:
            raise RemoteError(f"the grader could not read what your code returned: {error}") from None
        return (value, after) if op in ("call", "module_call") else value

    def fetch_global(self, name: str) -> Any:
        return self.request("global", name=name)



def _copy_back(sent: list, after: Any) -> None:
    """Make each argument (tensor, list, dict) look as the learner's code left it (in-place changes)."""
    if not isinstance(after, list) or len(after) != len(sent):
        return
    for original, changed in zip(sent, after):
        if isinstance(original, torch.Generator) and isinstance(changed, torch.Generator):
            original.set_state(changed.get_state())  # the learner's code drew from it
        elif type(original) is types.SimpleNamespace and type(changed) is types.SimpleNamespace:
            vars(original).clear()  # a record the learner's code fills in (a cache)
            vars(original).update(vars(changed))
        elif isinstance(original, torch.nn.Module) and isinstance(changed, torch.nn.Module):
            with torch.no_grad():  # a module the learner's code changed in the kernel: its new state
                _copy_parameters(original, changed)
                buffers = dict(original.named_buffers())
                for name, buffer in changed.named_buffers():
                    if name in buffers:
                        buffers[name].data = buffer.data
        elif isinstance(original, torch.Tensor) and isinstance(changed, torch.Tensor):
            with torch.no_grad():
                if original.shape == changed.shape and original.dtype == changed.dtype:
                    original.copy_(changed)
                else:
                    original.data = changed
        elif type(original) is list and type(changed) is list and not _holds_tensors(original):
            original[:] = changed  # a list the learner's code may have changed in place
        elif type(original) is dict and type(changed) is dict and not _holds_tensors(original):
            original.clear()
            original.update(changed)
        elif isinstance(original, (list, tuple)) and isinstance(changed, (list, tuple)):
            _copy_back(list(original), list(changed))


def _ties(module: torch.nn.Module) -> tuple[list[str], list[int]]:
    """Every parameter slot's name, and which slots hold one Parameter (a tied head shares one)."""
    names, groups, first = [], [], {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        names.append(name)
        groups.append(first.setdefault(id(parameter), len(first)))
    return names, groups


def _copy_parameters(original: torch.nn.Module, changed: torch.nn.Module) -> None:
    """Give `original` the parameters of `changed` (its copy from the kernel): the values and
    gradients, and new Parameter objects where the learner's code changed which slots share one."""
    if _ties(original) == _ties(changed):
        mine = dict(original.named_parameters())
        for name, parameter in changed.named_parameters():
            mine[name].data, mine[name].grad = parameter.data, parameter.grad
        return
    for name, parameter in changed.named_parameters(remove_duplicate=False):
        owner, _, attribute = name.rpartition(".")
        with contextlib.suppress(AttributeError):
            original.get_submodule(owner)._parameters[attribute] = parameter


def _holds_tensors(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_tensors(item) for item in value)
    if isinstance(value, dict):
        return any(_holds_tensors(item) for item in value.values())
    return False


class RemoteObject:
    """An object that lives in the student's kernel: calls, attributes, items and iteration are
    requests to the kernel; what comes back is data or another RemoteObject."""

    def __init__(self, kernel: Kernel, handle: int, what: str):
        self._kernel, self._handle, self._what = kernel, handle, what

    def call_remotely(self, args: tuple, kwargs: dict, forbid: tuple[str, ...] = (), reason: str = "") -> Any:
        """Call the learner's object with `args`; the named torch/olm_edu functions are refused meanwhile."""
        try:
            value, after = self._kernel.request("call", target=self._handle, args=list(args), kwargs=dict(kwargs),
                                                forbid=list(forbid), reason=reason)
        except NotData as error:
            raise TypeError(f"this check cannot be judged outside the kernel: {error}") from None
        _copy_back(list(args), after)
        return value

    def count_operations_remotely(self, args: tuple) -> Any:
        """`count_tensor_operations` in the kernel (the learner's code runs there, so it counts there)."""
        value, _ = self._kernel.request("call", target=self._handle, args=list(args), kwargs={}, count=True)
        return value

    def call_with_gradient_remotely(self, args: tuple, kwargs: dict, forbid: tuple[str, ...], reason: str, wrt: int,
                                    output: int | None, weight: torch.Tensor | None) -> tuple[Any, bool, Any]:
        """`Check.call_with_gradient` in the kernel: (result, whether it requires grad, the gradient)."""
        try:
            (value, tracked, gradient), after = self._kernel.request(
                "call", target=self._handle, args=list(args), kwargs=dict(kwargs), forbid=list(forbid), reason=reason,
                gradient=[int(wrt), output, weight])
        except NotData as error:
            raise TypeError(f"this check cannot be judged outside the kernel: {error}") from None
        except (TypeError, ValueError):
            raise RemoteError("your code returned nothing the grader could read") from None
        _copy_back(list(args), after)
        return value, bool(tracked), gradient

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.call_remotely(args, kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._kernel.request("getattr", target=self._handle, name=name)

    def __iter__(self):
        return iter(self._kernel.request("iter", target=self._handle))

    def __len__(self) -> int:
        return int(self._kernel.request("len", target=self._handle))

    def __getitem__(self, key: Any) -> Any:
        return self._kernel.request("getitem", target=self._handle, key=key)

    def __repr__(self) -> str:
        return f"<{self._what} in the student's notebook>"
