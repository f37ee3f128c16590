"""The student's side of out-of-process judging: runs in the sandboxed kernel, only computes.

The grader asks, one request at a time (see `remote`), for a global of the notebook, an
attribute, a call, an iteration or an item of an object the kernel holds; `serve` reads the
request from the channel folder, does it, and writes the answer back: data as data, anything else
as a handle into `_objects`. For a call it also sends back the arguments as they are after the
call, so that a check can still see whether the learner's code changed its inputs in place.

Nothing here decides a grade: a submission that rewrites this module, torch or the import system
only changes what its own code answers, which the grader judges against references it computes
in its own process. The one rule enforced here, in the student's process and therefore only
as strongly as that process allows, is `forbid` (a check refusing built-ins such as
torch.softmax while the learner's code runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from olm_edu.grader.codec import decode, encode, read_message, write_message

__all__ = ["serve"]

_objects: dict[int, Any] = {}  # handle id -> the object it stands for


def _keep(value: Any) -> int:
    handle = id(value)
    _objects[handle] = value
    return handle


def _lookup(handle: int, what: str) -> Any:
    return _objects[handle]


def _module_ref(reference: Any, state: dict, flags: dict) -> Any:
    """The learner's module a grader's shadow stands for, or a check's module made here from its
    recipe (`grading.shared_module`), given the grader's parameters and modes."""
    from olm_edu.grader.shadow import apply_state, make

    module = _objects[reference] if isinstance(reference, int) else make(*reference[1:])
    apply_state(module, state, flags)
    return module


def _decode(node: Any, tensors: dict) -> Any:
    return decode(node, tensors, _lookup, module_ref=_module_ref)


def _perform(request: dict, tensors: dict) -> tuple[Any, Any]:
    """(result, the arguments after the call or None)."""
    op = request["op"]
    if op == "global":
        from IPython import get_ipython

        namespace = get_ipython().user_ns
        name = request["name"]
        if name not in namespace:
            raise NameError(f"name {name!r} is not defined")
        return namespace[name], None
    target = _objects[int(request["target"])]
    if op == "getattr":
        return getattr(target, request["name"]), None
    if op == "iter":
        return list(target), None
    if op == "len":
        return len(target), None
    if op == "getitem":
        return target[_decode(request["key"], tensors)], None
    if op in ("call", "module_call"):
        args = _decode(request["args"], tensors)
        kwargs = _decode(request["kwargs"], tensors)
        if op == "module_call":  # a shadow's forward: its state first
            from olm_edu.grader.shadow import apply_state

            apply_state(target, _decode(request["state"], tensors), _decode(request["flags"], tensors))
        if "rng" in request:  # the grader's global generator (set after the arguments are made, as making a
            import torch  # check's module draws): the learner's code draws what it would draw there

            torch.set_rng_state(decode(request["rng"], tensors))
        forbid = [str(name) for name in request.get("forbid", [])]
        gradient = decode(request["gradient"], tensors) if "gradient" in request else None
        if gradient is not None:  # Check.call_with_gradient: [wrt, output, weight]
            wrt, output, weight = gradient
            leaf = args[wrt] = args[wrt].detach().requires_grad_(True)
        from olm_edu.grading import forbidden, gradient_of

        if request.get("count"):  # linear_attention.count_tensor_operations, counted where the code runs
            from olm_edu.checks.linear_attention import count_tensor_operations

            return count_tensor_operations(target, *args), args
        with forbidden(*forbid, reason=str(request.get("reason", ""))):
            result = target(*args, **kwargs)
        if gradient is not None:
            return (result, *gradient_of(result, leaf, output, weight)), args
        return result, args
    raise ValueError(f"unknown request {op!r}")


def serve(channel: str) -> None:
    """Answer the request waiting in `channel` (called by the grader, through the kernel)."""
    folder = Path(channel)
    for stale in folder.glob("response.*"):
        stale.unlink()
    message = read_message(folder, "request")
    if message is None:
        return
    request, tensors = message
    out_tensors: dict = {}
    try:
        result, args_after = _perform(request, tensors)
        answer = {"ok": True, "value": encode(result, out_tensors, _keep)}
        if args_after is not None:
            answer["args_after"] = encode(list(args_after), out_tensors, _keep)
    except NotImplementedError as error:
        answer = {"ok": False, "kind": "not_implemented", "type": "NotImplementedError", "message": str(error)[:2000]}
    except AssertionError as error:  # CheckFailed from `forbidden`
        answer = {"ok": False, "kind": "refused" if type(error).__name__ == "CheckFailed" else "error",
                  "type": type(error).__name__, "message": str(error)[:2000]}
    except Exception as error:  # the learner's bug, reported to the check
        answer = {"ok": False, "kind": "error", "type": type(error).__name__, "message": str(error)[:2000]}
    if "rng" in request:
        import torch

        answer["rng_after"] = encode(torch.get_rng_state(), out_tensors)["v"]
    write_message(folder, "response", answer, out_tensors)
