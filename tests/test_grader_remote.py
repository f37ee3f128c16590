"""Out-of-process judging, without a kernel: the codec, and checks calling learner code through proxies.

Here the "kernel" side (`kernel_side.serve`) runs in this process, reading and writing the same
channel files a sandboxed kernel would; what is tested is that a check judged through proxies
reaches the same verdicts, with the same messages, as the check called directly.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from olm_edu.checks import welcome
from olm_edu.grader import kernel_side
from olm_edu.grader.codec import NotData, decode, encode
from olm_edu.grader.remote import Kernel, RemoteObject
from olm_edu.grading import CheckFailed

ROOT = Path(__file__).resolve().parents[1]


def round_trip(value):
    tensors = {}
    return decode(encode(value, tensors), tensors)


def test_data_crosses_as_data_exactly():
    value = {"ints": [2**70, -3], "floats": (math.inf, -0.0, 1e-300), ("tuple", 1): b"\x00\xff", "none": None,
             "flag": True, "dtype": torch.bfloat16, "size": torch.Size([2, 3]), "complex": 1 + 2j}
    assert round_trip(value) == value
    assert math.isnan(round_trip(float("nan")))
    tensors = [torch.randn(3, 4, dtype=torch.float64), torch.tensor([True, False]), torch.randn(2, dtype=torch.complex64),
               torch.arange(6).reshape(2, 3).t()]  # the last is not contiguous
    for tensor, back in zip(tensors, round_trip(tensors)):
        assert back.dtype == tensor.dtype and torch.equal(back, tensor)


def test_what_is_not_data_needs_a_handle():
    with pytest.raises(NotData, match="function is not data"):
        encode(lambda x: x, {})
    node = encode(len, {}, keep=lambda obj: 7)
    assert node["t"] == "handle" and decode(node, {}, lambda handle, what: (handle, what)) == (7, "builtin_function_or_method len")
    with pytest.raises(ValueError, match="handle where only data"):
        decode(node, {})
    with pytest.raises(ValueError, match="unknown message node"):
        decode({"t": "pickle", "v": "..."}, {})


@pytest.fixture
def proxy(tmp_path):
    """proxy(fn): a RemoteObject for fn, served through channel files by kernel_side in this process."""
    kernel = Kernel(tmp_path, execute=lambda code: exec(code, {}))
    return lambda fn: RemoteObject(kernel, kernel_side._keep(fn), "function")


def stable_softmax(x):
    e = (x - x.max(-1, keepdim=True).values).exp()
    return e / e.sum(-1, keepdim=True)


def in_place_softmax(x):
    x.sub_(x.max(-1, keepdim=True).values).exp_()
    return x / x.sum(-1, keepdim=True)


def builtin_softmax(x):
    return torch.softmax(x, dim=-1)


def stub(x):
    raise NotImplementedError


def test_a_correct_answer_passes_through_the_proxy(proxy, capsys):
    welcome.softmax(proxy(stable_softmax), hidden=True, seed=3)
    assert "16 hidden checks passed" in capsys.readouterr().out


@pytest.mark.parametrize("answer, message", [
    (in_place_softmax, "changed its input tensor in place"),
    (builtin_softmax, "your code calls torch.softmax, which is not allowed here"),
    (lambda x: x.exp() / x.exp().sum(-1, keepdim=True), "overflows to inf"),
    (lambda x: 1 / 0, "your code raised ZeroDivisionError: division by zero"),
])
def test_a_wrong_answer_fails_with_the_same_message_as_in_the_kernel(proxy, answer, message):
    with pytest.raises(CheckFailed) as direct:
        welcome.softmax(answer, seed=5)
    with pytest.raises(CheckFailed) as remote:
        welcome.softmax(proxy(answer), seed=5)
    assert message in str(remote.value) and str(remote.value) == str(direct.value)


def test_an_unsolved_stub_reads_as_not_done_yet(proxy, capsys):
    with pytest.raises(NotImplementedError):
        welcome.softmax(proxy(stub))
    assert "not implemented yet" in capsys.readouterr().out


def _check_calls(lesson: str) -> dict[str, tuple[str, list[str]]]:
    """answer grade_id -> (check function, the notebook names it is given), from the solution."""
    import ast

    import nbformat

    nb = nbformat.read(ROOT / "solutions" / lesson, as_version=4)
    calls, answer = {}, None
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            answer = meta["grade_id"]
        elif meta.get("grade"):
            call = next(node for node in ast.walk(ast.parse(cell.source)) if isinstance(node, ast.Call)
                        and isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "check")
            calls[answer] = (call.func.attr, [arg.id for arg in call.args])
    return calls


JUDGED_LESSONS = {"welcome": "00_welcome.ipynb", "tokens": "01_tokens.ipynb", "rope": "10_rope.ipynb"}


def test_every_module_judged_by_the_grader_is_listed_here():
    from olm_edu.grader.assemble import JUDGED_BY_GRADER

    assert set(JUDGED_BY_GRADER) == set(JUDGED_LESSONS)


@pytest.mark.parametrize("module", sorted(JUDGED_LESSONS))
def test_wrong_answers_get_the_same_verdict_through_proxies(module, proxy):
    """Each wrong answer of tests/wrong_answers, defined on its own (with torch and math), is
    judged directly and through proxies: both must fail, with the same message."""
    import importlib

    from tests.wrong_answers import WRONG_ANSWERS

    check_module = importlib.import_module(f"olm_edu.checks.{module}")
    lesson = JUDGED_LESSONS[module]
    compared = 0
    for answer, (function, names) in _check_calls(lesson).items():
        for source, fragment in WRONG_ANSWERS[lesson][answer]:
            namespace = {"torch": torch, "math": math, "F": torch.nn.functional}
            try:
                exec(source, namespace)
                objects = [namespace[name] for name in names]
            except Exception:
                continue  # the answer needs earlier cells of its notebook
            outcomes = []
            for given in (objects, [proxy(o) for o in objects]):
                try:
                    getattr(check_module, function)(*given, hidden=True, seed=11)
                    outcomes.append("passed")
                except (CheckFailed, NotImplementedError) as error:
                    outcomes.append(str(error))
            if "NameError" in outcomes[0]:
                continue  # it used a name from an earlier cell
            assert outcomes[0] != "passed" and fragment in outcomes[0], (answer, source)
            assert outcomes[1] == outcomes[0], (answer, source)
            compared += 1
    print(f"{lesson}: {compared} wrong answers compared")
    assert compared >= 3, f"too few wrong answers of {lesson} could be compared ({compared})"
