"""Exercise checks: compare a learner's object with the reference and say what went wrong.

A check is a function decorated with `exercise(title)`. Its body receives a `Check` and the
learner's objects, calls them on fresh random inputs and edge cases, and compares with the
reference through `Check.close` / `Check.equal` / `Check.expect`. The decorated function

- prints `✅ title: N checks passed` when every comparison holds;
- reports `❌ title: what went wrong` on a failure, and `⏳ title: not implemented yet` when the
  learner's stub still raises `NotImplementedError`.

How a failure is reported depends on where the check runs. Inside a Jupyter kernel the one line
is published as the cell's `error` output (ename `CheckFailed` or `NotImplementedError`, the line
as its whole traceback) and nothing is raised: the cell's execution still succeeds, so "Run All"
goes on to the narrative, plots and widgets below, while nbgrader's autograde (which scores a
check cell 0 when it holds an error output) and `olm-edu grade` still count the exercise as
failed. The learner sees the line once and no traceback into the checker. Anywhere else (plain
Python, pytest), or when the environment variable OLM_EDU_CHECKS_RAISE is set (the grader sets
it), the line is printed and `CheckFailed` / `NotImplementedError` is raised, chained to nothing.

Called with `hidden=True` (only in the hidden part of a check cell, which `lessons/` does not
contain) a check runs its extra cases. Random inputs come from a fresh seed on every call; the
seed is printed on failure so the learner can reproduce it with `seed=`. When grading, the
environment variable OLM_EDU_CHECK_SEED pins the seed, so grading twice gives the same scores.

Tolerances are per comparison (`atol`, `rtol`), chosen so that any mathematically equivalent
formulation passes in float32 (sqrt vs rsqrt, another summation order).

Example:

    @exercise("Exercise 1 — softmax")
    def softmax(check, fn):
        x = check.randn(4, 10)
        check.close(check.call(fn, x), torch.softmax(x, -1), what="softmax of a (4, 10) tensor")
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import numbers
import os
import secrets
import sys
import types
from typing import Any, Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["Check", "CheckFailed", "allclose", "exercise", "forbidden", "shared_module", "SEED_ENV", "RAISE_ENV"]

SEED_ENV = "OLM_EDU_CHECK_SEED"
RAISE_ENV = "OLM_EDU_CHECKS_RAISE"  # set (to anything but "" or "0") to raise on failure even in a kernel


class CheckFailed(AssertionError):
    """Raised by a check when the learner's object does not match the reference."""


class Check:
    """The context of one check run: a random generator, a counter and comparison helpers."""

    def __init__(self, title: str, *, seed: int, hidden: bool = False):
        self.title = title
        self.seed = seed
        self.hidden = hidden
        self.passed = 0
        self.generator = torch.Generator().manual_seed(seed)
        self._forbidden: tuple[str, ...] = ()
        self._reason = ""

    def forbid(self, *names: str, reason: str = "this exercise asks you to write it yourself") -> None:
        """Make `call` refuse the named torch functions while the learner's code runs."""
        self._forbidden, self._reason = names, reason

    # -- random inputs -----------------------------------------------------------------------
    def randn(self, *shape: int, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal tensor (times `scale`) drawn from this check's generator."""
        return torch.randn(*shape, generator=self.generator, dtype=dtype) * scale

    def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """Integers in [low, high) drawn from this check's generator."""
        return torch.randint(low, high, shape, generator=self.generator)

    # -- calling the learner's code ------------------------------------------------------------
    def call(self, fn: Callable, *args: Any, what: str, hint: str = "", **kwargs: Any) -> Any:
        """Call the learner's `fn`; turn an unexpected exception into a readable failure."""
        __tracebackhide__ = True
        if not callable(fn):
            self.fail(f"expected a function, got {type(fn).__name__}")
        try:
            call_remotely = getattr(type(fn), "call_remotely", None)  # a learner's object in the sandboxed
            if call_remotely is not None:  # kernel, judged from the grader's process (olm_edu.grader.remote)
                return call_remotely(fn, args, kwargs, self._forbidden, self._reason)
            with forbidden(*self._forbidden, reason=self._reason):
                return fn(*args, **kwargs)
        except (NotImplementedError, CheckFailed):
            raise
        except Exception as error:  # the learner's bug, reported with the case that caused it
            self.fail(f"your code raised {type(error).__name__}: {error} (on {what})" + _hint(hint))

    def call_with_gradient(self, fn: Callable, *args: Any, wrt: int, what: str, hint: str = "",
                           output: int | None = None, weight: torch.Tensor | None = None,
                           **kwargs: Any) -> tuple[Any, bool, torch.Tensor | None]:
        """Call the learner's `fn` with `args[wrt]` as a leaf that autograd tracks; return (the result,
        whether its output requires grad, d sum(weight * output) / d args[wrt] or None when no gradient
        reaches the leaf). `output` picks one item of a tuple result; without `weight` the output is
        summed. Judged from the grader, the call and the backward pass both run in the student's
        kernel and only the numbers come back (see `gradient_of`)."""
        __tracebackhide__ = True
        if not callable(fn):
            self.fail(f"expected a function, got {type(fn).__name__}")
        try:
            remotely = getattr(type(fn), "call_with_gradient_remotely", None)
            if remotely is not None:
                return remotely(fn, args, kwargs, self._forbidden, self._reason, wrt, output, weight)
            given = args[wrt]
            leaf = given.detach().clone().requires_grad_(True)
            with forbidden(*self._forbidden, reason=self._reason):
                result = fn(*args[:wrt], leaf, *args[wrt + 1:], **kwargs)
            with torch.no_grad():  # as the grader sees it: the input as the learner's code left it
                if leaf.shape == given.shape and leaf.dtype == given.dtype:
                    given.copy_(leaf)
            return (result, *gradient_of(result, leaf, output, weight))
        except (NotImplementedError, CheckFailed):
            raise
        except Exception as error:  # the learner's bug, in the forward or the backward pass
            self.fail(f"your code raised {type(error).__name__}: {error} (on {what})" + _hint(hint))

    # -- comparisons ----------------------------------------------------------------------------
    def fail(self, message: str) -> None:
        __tracebackhide__ = True
        raise CheckFailed(message)

    def expect(self, condition: bool, message: str) -> None:
        """Pass when `condition` holds, otherwise fail with `message`."""
        __tracebackhide__ = True
        if not condition:
            self.fail(message)
        self.passed += 1

    def equal(self, got: Any, expected: Any, *, what: str, hint: str = "") -> None:
        """Exact equality (lists, dicts, ints, strings, bytes)."""
        __tracebackhide__ = True
        if got != expected:
            self.fail(f"{what}: expected {_short(expected)}, got {_short(got)}" + _hint(hint))
        self.passed += 1

    def close(
        self,
        got: Any,
        expected: torch.Tensor,
        *,
        what: str,
        atol: float = 1e-6,
        rtol: float = 1e-5,
        hint: str = "",
    ) -> None:
        """|got - expected| <= atol + rtol * |expected| elementwise, same shape, no NaN/inf."""
        __tracebackhide__ = True
        if not isinstance(got, torch.Tensor):
            self.fail(f"{what}: expected a torch.Tensor, got {type(got).__name__}" + _hint(hint))
        if tuple(got.shape) != tuple(expected.shape):
            self.fail(
                f"{what}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}" + _hint(hint)
            )
        got64, expected64 = got.detach().double().cpu(), expected.detach().double().cpu()
        bad_values = ~torch.isfinite(got64) & torch.isfinite(expected64)
        if bad_values.any():
            index = _first_index(bad_values)
            self.fail(f"{what}: got {got64[index].item()} at index {index}, expected a finite number" + _hint(hint))
        error = (got64 - expected64).abs()
        allowed = atol + rtol * expected64.abs()
        if (error > allowed).any():
            index = _first_index(error - allowed == (error - allowed).max())
            self.fail(
                f"{what}: at index {index} expected {expected64[index].item():.6g}, "
                f"got {got64[index].item():.6g} (max abs error {error.max().item():.3g}, "
                f"tolerance atol={atol:g}, rtol={rtol:g})" + _hint(hint)
            )
        self.passed += 1

    def whole_number(self, got: Any, *, what: str) -> int:
        """`got` as an int: a Python int, a float with no fractional part, or a one-element tensor
        holding one; otherwise a failure that says what came back."""
        __tracebackhide__ = True
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            self.fail(f"{what}: expected a whole number (an int), got {type(got).__name__} {got!r}")
        if isinstance(got, numbers.Integral):
            return int(got)
        if not math.isfinite(got) or not float(got).is_integer():
            self.fail(f"{what}: expected a whole number (an int), got {got!r}")
        return int(got)

    def count(self, got: Any, expected: int, mistakes: dict[str, int], *, what: str, hint: str = "") -> None:
        """An exact count (bytes, parameters, FLOPs): `got` must be the whole number `expected`.

        When it is not, the first mistake in `mistakes` ({message: the number that mistake gives})
        whose number equals `got` is named; otherwise the hint is given.
        """
        __tracebackhide__ = True
        got = self.whole_number(got, what=what)
        if got != expected:
            for message, wrong in mistakes.items():
                if wrong != expected and got == wrong:
                    self.fail(f"{what}: expected {expected:,}, got {got:,}: {message}")
            self.fail(f"{what}: expected {expected:,}, got {got:,}" + _hint(hint))
        self.passed += 1

    def close_or_diagnose(
        self,
        got: Any,
        expected: torch.Tensor,
        mistakes: dict[str, torch.Tensor],
        *,
        what: str,
        atol: float = 1e-6,
        rtol: float = 1e-5,
        hint: str = "",
    ) -> None:
        """`close`, but when `got` is wrong and matches one of the usual mistakes, name it.

        mistakes: {message naming the mistake and its fix: what that mistake would output}.
        Each is tried (same shape, same tolerance) before the generic "at index ..." report; when
        several match (two mistakes can give nearly the same number), the nearest is named.
        """
        __tracebackhide__ = True
        if not allclose(got, expected, atol=atol, rtol=rtol):
            matches = [(_distance(got, wrong), message) for message, wrong in mistakes.items()
                       if allclose(got, wrong, atol=atol, rtol=rtol)]
            if matches:
                self.fail(f"{what}: {min(matches, key=lambda match: match[0])[1]}")
        self.close(got, expected, what=what, atol=atol, rtol=rtol, hint=hint)


def _distance(got: torch.Tensor, wrong: torch.Tensor) -> float:
    """The largest |got - wrong| (for shapes `allclose` already matched)."""
    return float((got.detach().double().cpu() - wrong.detach().double().cpu()).abs().max()) if got.numel() else 0.0


def allclose(got: Any, expected: torch.Tensor, *, atol: float, rtol: float) -> bool:
    """Same shape and |got - expected| <= atol + rtol * |expected| everywhere; a NaN or inf
    where `expected` is finite fails. Never raises (for trying candidate answers)."""
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(expected.shape):
        return False
    got64, expected64 = got.detach().double().cpu(), expected.detach().double().cpu()
    if (~torch.isfinite(got64) & torch.isfinite(expected64)).any():
        return False
    return bool(((got64 - expected64).abs() <= atol + rtol * expected64.abs()).all())


RECIPE = "_olm_edu_recipe"  # where `shared_module` keeps how a module was made


def shared_module(factory: Callable[..., torch.nn.Module], *args: Any, **kwargs: Any) -> torch.nn.Module:
    """`factory(*args, **kwargs)`, a module a check builds and hands to the learner's code, made so
    that it can cross to the student's kernel: judged from the grader (`olm_edu.grader`), the kernel
    makes the same module from the same olm_edu or torch.nn factory and arguments and receives the
    check's parameters, buffers and modes; what the learner's code changes (weights, .grad) comes
    back. `factory` must be importable by its module and name (a class or a function, not a lambda)."""
    module = factory(*args, **kwargs)
    module.__dict__[RECIPE] = (factory.__module__, factory.__qualname__, args, kwargs)
    return module


def exercise(title: str, *, reference: Any = None,
             helpers: tuple[Any, ...] = ()) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Turn a check body `body(check, *learner_objects)` into a check function.

    The returned function takes the learner's objects and the keywords `hidden=False` and
    `seed=None` (a fixed seed, to reproduce a failure). It remembers its last outcome in
    `.passed` (None before it ran). `reference` is the library's working version of what the
    exercise asks for, with the same signature; `.yours_or_reference(yours)` gives the learner's
    object once the check has passed and the reference until then, so the cells after an
    unfinished exercise still run. `helpers` are the library's versions of learner functions the
    check also grades but the cells after it do not fall back on (lesson 10's rotate_half, graded
    with apply_rope): the check's full argument list is `(*helpers, reference)`.
    """

    def decorate(body: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(body)
        def run(*learner_objects: Any, hidden: bool = False, seed: int | None = None) -> None:
            __tracebackhide__ = True
            run.passed = False  # until the body has run through
            shell = _reporting_shell()  # decided before any learner code runs
            if shell is not None and _already_failed(shell, title):
                return  # this cell already shows this exercise's failure (the visible part); say it once
            if seed is None:  # the grader pins seeds (OLM_EDU_CHECK_SEED) so re-grading gives the same result
                pinned = os.environ.get(SEED_ENV)
                seed = int(pinned) if pinned else secrets.randbelow(2**31)
            check = Check(title, seed=seed, hidden=hidden)
            try:
                body(check, *learner_objects)
            except NotImplementedError:
                line = f"⏳ {title}: not implemented yet (the stub still raises NotImplementedError)"
                _report_failure(shell, title, NotImplementedError, line)
                return
            except CheckFailed as failure:
                _report_failure(shell, title, CheckFailed, f"❌ {title}: {failure} [seed={seed}]")
                return
            kind = "hidden checks" if hidden else "checks"
            print(f"✅ {title}: {check.passed} {kind} passed")
            run.passed = True

        def yours_or_reference(yours: Any) -> Any:
            if run.passed:
                return yours
            if reference is None:
                raise ValueError(f"{title} has no library reference to fall back on")
            name = getattr(yours, "__name__", "it")
            print(f"ⓘ {title} has not passed yet, so the cells below use the library's {name} instead of "
                  "yours. Once your check passes, run this cell again to use your own.")
            return reference

        run.passed = None
        run.reference = reference
        run.helpers = tuple(helpers)
        run.yours_or_reference = yours_or_reference
        return run

    return decorate


def _reporting_shell() -> Any:
    """The IPython shell of the Jupyter kernel this runs in, if failures are to be published
    there as error outputs; None to raise them (plain Python, a terminal, or RAISE_ENV set)."""
    if os.environ.get(RAISE_ENV, "") not in ("", "0"):
        return None
    ipython = sys.modules.get("IPython")  # never import it: a kernel has always imported it already
    shell = ipython.get_ipython() if ipython is not None else None
    if getattr(shell, "kernel", None) is None or not hasattr(shell, "_showtraceback"):
        return None
    return shell


def _already_failed(shell: Any, title: str) -> bool:
    return getattr(shell, "_olm_edu_failed", None) == (shell.execution_count, title)


def _report_failure(shell: Any, title: str, error_type: type[Exception], line: str) -> None:
    """Show `line` as the cell's error output without raising (in a kernel), else print and raise."""
    __tracebackhide__ = True
    if shell is None:
        print(line)
        raise error_type(line) from None
    # ipykernel's own way of publishing an exception: an `error` message on the IOPub channel whose
    # traceback is just our line. The execute_reply stays "ok", so the front end runs the next cell.
    shell._showtraceback(error_type, error_type(line), [line])
    shell._olm_edu_failed = (shell.execution_count, title)


def gradient_of(result: Any, leaf: torch.Tensor, output: int | None = None,
                weight: torch.Tensor | None = None) -> tuple[bool, torch.Tensor | None]:
    """(whether the output requires grad, d sum(weight * output) / d leaf, or None when it is unused or
    the backward pass fails):
    the backward half of `Check.call_with_gradient`, the same code wherever the learner's code runs."""
    value = result
    if output is not None:
        value = result[output] if isinstance(result, (tuple, list)) and len(result) > output else None
    if not isinstance(value, torch.Tensor) or not value.requires_grad:
        return False, None
    if weight is not None and value.shape != weight.shape:  # the check reports the wrong shape itself
        return True, None
    total = value.sum() if weight is None else (value * weight.to(value.dtype)).sum()
    try:
        (gradient,) = torch.autograd.grad(total, leaf, allow_unused=True)
    except RuntimeError:  # e.g. a tensor autograd needs was changed in place: no usable gradient
        return True, None
    return True, gradient


@contextlib.contextmanager
def forbidden(*names: str, reason: str = "this exercise asks you to write it yourself") -> Iterator[None]:
    """Make the named functions raise `CheckFailed` while the block runs.

    Names are dotted paths from `torch` or `olm_edu`, e.g. "torch.softmax",
    "torch.nn.functional.softmax", "torch.Tensor.softmax", "olm_edu.nn.ffn.gated_hidden_dim".
    Either kind is refused however the learner's code reached it: torch routes every call of a
    torch function through the active function mode, and an olm_edu function has its code
    swapped for one that refuses (a name imported early still points at the same function).
    The originals are restored afterwards, even on failure.
    """
    saved = []
    swapped = []  # (function, its own code) for olm_edu functions
    try:
        for name in names:
            owner, attribute = _resolve(name)
            original = getattr(owner, attribute)
            saved.append((owner, attribute, original))
            if name.startswith("olm_edu.") and isinstance(original, types.FunctionType) and not original.__closure__:
                # swap the function's code: every reference to it refuses, however it was imported
                swapped.append((original, original.__code__))
                original.__code__ = _refusing_code(_refusal(name, reason))
            else:
                setattr(owner, attribute, _refuse(_refusal(name, reason)))
        # A torch name imported before the check ran (`from torch.nn.functional import softmax`) is
        # not reached by the patch; torch still routes the call through the active function mode.
        with _RefuseCalls({id(original): _refusal(name, reason) for name, (_, _, original) in zip(names, saved)}):
            yield
    finally:
        for function, code in swapped:
            function.__code__ = code
        for owner, attribute, original in reversed(saved):
            setattr(owner, attribute, original)


def _refusing_code(message: str) -> types.CodeType:
    """The code of a function that raises CheckFailed(message), runnable in any module's globals
    (the message is a constant of the code, so the function needs no closure)."""
    namespace: dict[str, Any] = {}
    exec(
        "def refuse(*args, **kwargs):\n"
        "    __tracebackhide__ = True\n"
        f"    raise __import__('olm_edu.grading', fromlist=['CheckFailed']).CheckFailed({message!r})\n",
        namespace,
    )
    return namespace["refuse"].__code__


class _RefuseCalls(TorchFunctionMode):
    """Raise CheckFailed when torch dispatches one of the given functions (matched by identity)."""

    def __init__(self, refused: dict[int, str]):
        super().__init__()
        self.refused = refused  # id of a refused function -> the message its call fails with

    def __torch_function__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True
        if id(func) in self.refused:
            raise CheckFailed(self.refused[id(func)])
        return func(*args, **(kwargs or {}))


def _refusal(name: str, reason: str) -> str:
    return f"your code calls {name}, which is not allowed here: {reason}"


def _refuse(message: str) -> Callable[..., None]:
    def refuse(*args: Any, **kwargs: Any) -> None:
        __tracebackhide__ = True
        raise CheckFailed(message)

    return refuse


def _resolve(dotted: str) -> tuple[Any, str]:
    parts = dotted.split(".")
    if parts[0] not in ("torch", "olm_edu") or len(parts) < 2:
        raise ValueError(f"forbidden name {dotted!r} must be a dotted path starting with 'torch.' or 'olm_edu.'")
    owner: Any = importlib.import_module(parts[0])
    for index, part in enumerate(parts[1:-1], start=1):
        if not hasattr(owner, part):  # a submodule not imported yet, e.g. olm_edu.analysis
            importlib.import_module(".".join(parts[: index + 1]))
        owner = getattr(owner, part)
    if not hasattr(owner, parts[-1]):
        raise ValueError(f"forbidden name {dotted!r} does not exist")
    return owner, parts[-1]


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0]) if mask.dim() else ()


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...]"


def _hint(hint: str) -> str:
    return f". Hint: {hint}" if hint else ""
