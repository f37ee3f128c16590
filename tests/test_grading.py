"""olm_edu.grading: comparisons, messages, forbidden helpers, the exercise wrapper."""

from __future__ import annotations

import pytest
import torch

from olm_edu.grading import Check, CheckFailed, exercise, forbidden


def make_check(hidden: bool = False) -> Check:
    return Check("Exercise 9 — test", seed=0, hidden=hidden)


def test_close_accepts_an_equivalent_formulation_within_tolerance():
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(1)).abs() + 0.1
    check = make_check()
    check.close(1 / x.sqrt(), x.rsqrt(), what="rsqrt", atol=1e-6, rtol=1e-5)
    check.close(x.sum(0), x.flip(0).cumsum(0)[-1], what="sum order", atol=1e-5, rtol=1e-5)
    assert check.passed == 2


def test_close_names_the_worst_index_and_the_error():
    expected = torch.zeros(3, 4)
    got = expected.clone()
    got[2, 1] = 0.5
    with pytest.raises(CheckFailed, match=r"at index \(2, 1\) expected 0, got 0\.5"):
        make_check().close(got, expected, what="case")


@pytest.mark.parametrize(
    "got, message",
    [
        ([0.0, 1.0], "expected a torch.Tensor, got list"),
        (torch.zeros(2, 1), r"expected shape \(2,\), got \(2, 1\)"),
        (torch.tensor([0.0, float("nan")]), "got nan at index \\(1,\\), expected a finite number"),
    ],
)
def test_close_rejects_wrong_types_shapes_and_nan(got, message):
    with pytest.raises(CheckFailed, match=message):
        make_check().close(got, torch.zeros(2), what="case")


def test_equal_shows_both_values_and_the_hint():
    with pytest.raises(CheckFailed, match=r"merge: expected \[256, 5\], got \[256, 256\]. Hint: skip both"):
        make_check().equal([256, 256], [256, 5], what="merge", hint="skip both")


def test_call_turns_a_learner_exception_into_a_failure_naming_the_case():
    def broken(x):
        return x + "a"

    with pytest.raises(CheckFailed, match=r"your code raised TypeError: .* \(on a \(4,\) tensor\)"):
        make_check().call(broken, torch.zeros(4), what="a (4,) tensor")


def test_forbidden_refuses_and_then_restores_the_originals():
    original = torch.softmax, torch.Tensor.softmax
    with pytest.raises(CheckFailed, match="your code calls torch.softmax"):
        with forbidden("torch.softmax", "torch.Tensor.softmax"):
            torch.softmax(torch.zeros(2), -1)
    assert (torch.softmax, torch.Tensor.softmax) == original
    assert torch.zeros(2).softmax(-1).tolist() == [0.5, 0.5]


def test_forbidden_also_catches_names_imported_before_the_check_and_tensor_methods():
    from torch.nn.functional import layer_norm as imported_early  # an alias the patch cannot reach

    x = torch.randn(3, 4)
    with pytest.raises(CheckFailed, match="your code calls torch.nn.functional.layer_norm"):
        with forbidden("torch.nn.functional.layer_norm"):
            imported_early(x, (4,))
    with pytest.raises(CheckFailed, match="your code calls torch.Tensor.softmax"):
        with forbidden("torch.Tensor.softmax"):
            x.softmax(-1)
    with forbidden("torch.softmax"):  # other torch functions still run
        assert torch.exp(torch.zeros(1)).item() == 1.0
    torch.testing.assert_close(imported_early(x, (4,)), torch.nn.functional.layer_norm(x, (4,)))


def test_close_or_diagnose_names_the_mistake_the_answer_matches():
    expected = torch.tensor([1.0, 2.0, 3.0])
    mistakes = {"you forgot to double": expected / 2, "you squared": expected**2}
    with pytest.raises(CheckFailed, match="the output: you squared"):
        make_check().close_or_diagnose(expected**2, expected, mistakes, what="the output")
    with pytest.raises(CheckFailed, match=r"the output: at index \(0,\) expected 1, got 7"):
        make_check().close_or_diagnose(expected + 6, expected, mistakes, what="the output")
    check = make_check()
    check.close_or_diagnose(expected.clone(), expected, mistakes, what="the output")
    assert check.passed == 1


def test_forbidden_rejects_names_outside_torch():
    with pytest.raises(ValueError, match="must be a dotted path starting with 'torch.' or 'olm_edu.'"):
        with forbidden("numpy.exp"):
            pass
    with pytest.raises(ValueError, match="does not exist"):
        with forbidden("olm_edu.analysis.no_such_function"):
            pass


def test_forbidden_refuses_library_functions_however_they_were_imported():
    from olm_edu import analysis
    from olm_edu.analysis import kv_cache_bytes as imported_early
    from olm_edu.models import preset

    original, expected = analysis.kv_cache_bytes, analysis.kv_cache_bytes(preset("gpt2"), 8)
    for call in (lambda: analysis.kv_cache_bytes(preset("gpt2"), 8), lambda: imported_early(preset("gpt2"), 8)):
        with pytest.raises(CheckFailed, match="your code calls olm_edu.analysis.kv_cache_bytes, which is not allowed"):
            with forbidden("olm_edu.analysis.kv_cache_bytes"):
                call()
    assert analysis.kv_cache_bytes is original and imported_early(preset("gpt2"), 8) == expected


@exercise("Exercise 9 — double")
def double(check: Check, fn) -> None:
    x = check.randn(5)
    check.close(check.call(fn, x, what="a (5,) tensor"), 2 * x, what="2x")


def test_exercise_prints_a_tick_and_counts_checks(capsys):
    double(lambda x: x + x)
    assert capsys.readouterr().out == "✅ Exercise 9 — double: 1 checks passed\n"


def test_exercise_prints_a_cross_with_the_seed_and_raises(capsys):
    with pytest.raises(CheckFailed) as failure:
        double(lambda x: 3 * x, seed=7)
    out = capsys.readouterr().out
    assert out.startswith("❌ Exercise 9 — double: 2x: at index") and out.rstrip().endswith("[seed=7]")
    assert str(failure.value) == out.rstrip()


def test_exercise_lets_not_implemented_error_through(capsys):
    def stub(x):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        double(stub)
    assert "not implemented yet" in capsys.readouterr().out


def test_fresh_inputs_each_run_and_reproducible_with_a_seed():
    seen = []
    double(lambda x: seen.append(x.clone()) or 2 * x)
    double(lambda x: seen.append(x.clone()) or 2 * x)
    double(lambda x: seen.append(x.clone()) or 2 * x, seed=3)
    double(lambda x: seen.append(x.clone()) or 2 * x, seed=3)
    assert not torch.equal(seen[0], seen[1])
    assert torch.equal(seen[2], seen[3])


def test_count_takes_whole_numbers_in_any_form_and_names_the_mistake_that_gives_the_answer():
    check = make_check()
    for got in (1024, 1024.0, torch.tensor(1024), torch.tensor([1024.0])):
        check.count(got, 1024, {}, what="bytes")
    assert check.passed == 4
    mistakes = {"you forgot the factor 2": 512, "no effect": 1024}  # a "mistake" equal to the answer is ignored
    with pytest.raises(CheckFailed, match="bytes: expected 1,024, got 512: you forgot the factor 2"):
        make_check().count(512, 1024, mistakes, what="bytes")
    with pytest.raises(CheckFailed, match=r"bytes: expected 1,024, got 7\. Hint: 2 \* layers"):
        make_check().count(7, 1024, mistakes, what="bytes", hint="2 * layers")
    for bad, shown in [(1024.5, "1024.5"), ("1024", "str '1024'"), (True, "bool True"), (float("nan"), "nan")]:
        with pytest.raises(CheckFailed, match=f"bytes: expected a whole number \\(an int\\), got {shown}"):
            make_check().count(bad, 1024, {}, what="bytes")


# -- in a Jupyter kernel: a failure is the cell's error output, and Run All goes on ----------------


def _run_in_kernel(*sources: str):
    """Execute the cells in a fresh kernel as JupyterLab's Run All would (stop at the first cell
    whose execution fails) and return the notebook with its outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()  # raises if any cell's execution fails
    return nb


def _shown(cell) -> str:
    """Everything a front end renders for a cell: streams, results, and error tracebacks (JupyterLab
    shows an error's traceback, or `ename: evalue` when the traceback is empty)."""
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type == "error":
            parts.append("\n".join(output.traceback) or f"{output.ename}: {output.evalue}")
        else:
            parts.extend(str(value) for value in output.get("data", {}).values())
    return "\n".join(parts)


_WRONG_SOFTMAX = "def softmax(x):\n    return x.exp() / x.exp().sum(-1, keepdim=True)\n"  # overflows at 1000
_STUB_SOFTMAX = "def softmax(x):\n    raise NotImplementedError()\n"


def test_in_a_kernel_a_failed_check_is_an_error_output_and_the_next_cells_still_run():
    import inspect

    from olm_edu import grading
    from olm_edu.checks import welcome

    nb = _run_in_kernel(
        "from olm_edu.checks import welcome as check\n" + _WRONG_SOFTMAX,
        "check.softmax(softmax)\ncheck.softmax(softmax, hidden=True)",  # a check cell with its hidden part
        "print('the narrative goes on')",
    )
    errors = [o for o in nb.cells[1].outputs if o.output_type == "error"]
    assert [(e.ename, len(e.traceback)) for e in errors] == [("CheckFailed", 1)]
    shown = _shown(nb.cells[1])
    assert shown.count("❌") == 1 and "subtract each row's maximum" in shown, shown  # its diagnosis, once
    assert shown.startswith("❌ Exercise 1 — a numerically stable softmax: ") and "Traceback" not in shown
    checker = inspect.getsource(welcome) + inspect.getsource(grading)
    checker_lines = {line.strip() for line in checker.splitlines() if len(line.strip()) > 8}
    assert not [line for line in checker_lines if line in shown]  # no line of the check's source leaks
    assert "torch.softmax" not in shown  # nor the reference computation
    assert nb.cells[2].outputs[0].text == "the narrative goes on\n"


def test_in_a_kernel_an_unfinished_stub_shows_an_hourglass_and_the_next_cells_still_run():
    nb = _run_in_kernel(
        "from olm_edu.checks import welcome as check\n" + _STUB_SOFTMAX,
        "check.softmax(softmax)",
        "print('still running')",
    )
    [error] = nb.cells[1].outputs
    assert error.output_type == "error" and error.ename == "NotImplementedError"
    assert _shown(nb.cells[1]).startswith("⏳ Exercise 1 — a numerically stable softmax: not implemented yet")
    assert nb.cells[2].outputs[0].text == "still running\n"


def test_in_a_kernel_a_passing_check_prints_a_tick_and_no_error():
    nb = _run_in_kernel(
        "from olm_edu.checks import welcome as check\n"
        "def softmax(x):\n    e = (x - x.amax(-1, keepdim=True)).exp()\n    return e / e.sum(-1, keepdim=True)\n",
        "check.softmax(softmax)",
    )
    assert [o.output_type for o in nb.cells[1].outputs] == ["stream"]
    assert nb.cells[1].outputs[0].text.startswith("✅ Exercise 1 — a numerically stable softmax: ")


def test_in_a_kernel_the_raise_switch_restores_raising(monkeypatch):
    """The grader sets OLM_EDU_CHECKS_RAISE, so its kernels raise as plain Python does."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("OLM_EDU_CHECKS_RAISE", "1")  # inherited by the kernel nbclient starts
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from olm_edu.checks import welcome as check\n" + _WRONG_SOFTMAX),
        nbformat.v4.new_code_cell("check.softmax(softmax)"),
    ])
    with pytest.raises(CellExecutionError) as error:
        NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    assert error.value.ename == "CheckFailed"


@exercise("Exercise 9 — triple", reference=lambda x: 3 * x)
def triple(check: Check, fn) -> None:
    x = check.randn(5)
    check.close(check.call(fn, x, what="a (5,) tensor"), 3 * x, what="3x")


def test_yours_or_reference_gives_the_reference_until_the_check_passes_and_says_so(capsys):
    def mine(x):
        return x + x + x

    assert triple.passed is None and triple.yours_or_reference(mine) is triple.reference
    assert "the cells below use the library's mine instead of yours" in capsys.readouterr().out
    with pytest.raises(CheckFailed):
        triple(lambda x: 2 * x)
    assert triple.passed is False and triple.yours_or_reference(mine) is triple.reference
    triple(mine)
    capsys.readouterr()
    assert triple.passed is True and triple.yours_or_reference(mine) is mine
    assert capsys.readouterr().out == ""  # nothing to say when yours is used
    no_reference = exercise("Exercise 9 — no reference")(lambda check, fn: None)
    with pytest.raises(ValueError, match="Exercise 9 — no reference has no library reference"):
        no_reference.yours_or_reference(mine)
