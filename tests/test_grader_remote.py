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
from olm_edu.grader.assemble import JUDGED_BY_GRADER
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


def test_views_keep_their_layout_and_errors_their_builtin_type(proxy):
    """A transposed or expanded input arrives as the same kind of view (a check of `.view()` on a
    non-contiguous input stays a check), and a learner's ValueError is a ValueError to the check."""
    for view in (torch.randn(2, 3, 4).transpose(1, 2), torch.randn(3, 1).expand(3, 5), torch.randn(4, 6)[:, ::2]):
        back = round_trip(view)
        assert back.stride() == view.stride() and not back.is_contiguous() and torch.equal(back, view)
    with pytest.raises(ValueError, match="malformed strided"):
        node = encode(torch.randn(3, 1).expand(3, 5), tensors := {})
        decode({**node, "size": [30, 5]}, tensors)

    def refuse(x):
        raise ValueError("one seed has no spread")

    with pytest.raises(ValueError, match="^one seed has no spread$"):
        proxy(refuse)(1)


class _Norm(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        out = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * self.weight * self.scale
        return out * 3 if self.training else out


class _Tiny(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.emb = torch.nn.Embedding(5, d)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(d, d), _Norm(d)])
        self.head = torch.nn.Linear(d, 5, bias=False)
        self.head.weight = self.emb.weight
        self.eps = 1e-5

    def forward(self, ids):
        h = self.emb(ids)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def test_a_learners_module_comes_back_as_a_shadow_that_runs_in_the_kernel(proxy):
    """torch.nn parts are the torch classes, ties and plain attributes survive, and each forward runs
    the learner's code with the parameters, buffers, dtype and modes the grader has set."""
    model = proxy(_Tiny)(4)
    assert type(model).__name__ == "_Tiny" and isinstance(model, torch.nn.Module)
    assert isinstance(model.emb, torch.nn.Embedding) and isinstance(model.blocks, torch.nn.ModuleList)
    assert model.head.weight is model.emb.weight and model.eps == 1e-5
    assert [name for name, _ in model.named_parameters()] == ["emb.weight", "blocks.0.weight", "blocks.0.bias",
                                                              "blocks.1.weight"]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
        model.blocks[1].scale.fill_(0.5)
    direct = _Tiny(4)
    direct.load_state_dict(model.state_dict())
    ids = torch.tensor([[0, 3, 4, 1]])
    assert torch.equal(model(ids), direct(ids).detach())
    model.eval().double()
    direct.eval().double()
    assert model(ids).dtype == torch.float64 and torch.equal(model(ids), direct(ids).detach())
    x = torch.randn(2, 4, dtype=torch.float64)
    assert torch.equal(model.blocks[1](x), direct.blocks[1](x).detach())

    def scale_head(m):  # the shadow goes back to its kernel module, with the grader's weights
        with torch.no_grad():
            m.head.weight.mul_(2)
        return float(m.emb.weight.detach().sum())

    before = float(model.emb.weight.detach().sum())
    assert proxy(scale_head)(model) == pytest.approx(2 * before)
    assert float(model.emb.weight.detach().sum()) == pytest.approx(2 * before)  # the change came back


def test_plain_records_cross_as_records():
    """A config, a namespace and a generator are rebuilt on arrival (a config validated again)."""
    import types

    from olm_edu.models.presets import preset

    cfg = preset("gemma-2-9b")
    back = round_trip({"cfg": cfg})["cfg"]
    assert type(back) is type(cfg) and back == cfg and back.layer_type(1) == cfg.layer_type(1)
    cache = types.SimpleNamespace(window=3, keys=torch.randn(1, 2, 3, 4), positions=None)
    back = round_trip(cache)
    assert type(back) is types.SimpleNamespace and back.window == 3 and back.positions is None
    assert torch.equal(back.keys, cache.keys)
    generator = torch.Generator().manual_seed(5)
    torch.rand(3, generator=generator)
    back = round_trip(generator)
    assert torch.equal(torch.rand(4, generator=back), torch.rand(4, generator=generator))
    tensors = {}
    node = encode(cfg, tensors)
    node["v"]["v"] = [pair for pair in node["v"]["v"] if pair[0]["v"] != "num_heads"] + [
        [{"t": "v", "v": "num_heads"}, {"t": "int", "v": "0"}]]
    with pytest.raises(ValueError, match="num_heads"):
        decode(node, tensors)


def test_a_record_the_learner_fills_in_comes_back_filled(proxy):
    import types

    def fill(cache, generator):
        cache.keys = torch.ones(2)
        torch.rand(1, generator=generator)

    cache, generator = types.SimpleNamespace(keys=None), torch.Generator().manual_seed(1)
    proxy(fill)(cache, generator)
    drawn = torch.Generator().manual_seed(1)
    torch.rand(1, generator=drawn)
    assert torch.equal(cache.keys, torch.ones(2)) and torch.equal(generator.get_state(), drawn.get_state())


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


def _lessons_by_check_module() -> dict[str, Path]:
    """check module name -> its solution notebook."""
    import re

    found = {}
    for path in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")):
        match = re.search(r"from olm_edu\.checks import (\w+) as check", path.read_text(encoding="utf-8"))
        if match:
            found[match.group(1)] = path
    return found


def _is_setting(node) -> bool:
    """`top_k = 2` or `num_experts, top_k = 8, 2`: names bound to literal constants."""
    import ast

    def names(target) -> bool:
        return isinstance(target, ast.Name) or isinstance(target, ast.Tuple) and all(names(t) for t in target.elts)

    def constant(value) -> bool:
        return isinstance(value, ast.Constant) or isinstance(value, ast.Tuple) and all(constant(v) for v in value.elts)

    return isinstance(node, ast.Assign) and all(names(t) for t in node.targets) and constant(node.value)


def _definitions(source: str) -> str:
    """The imports, functions, classes and constants a cell defines (not what it runs: plots, training loops)."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython syntax (magics)
        return ""
    kept = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef))
            and not (isinstance(node, ast.ImportFrom) and node.module == "olm_edu.checks")
            or _is_setting(node)]
    return ast.unparse(ast.Module(kept, []))


def _exercises(lesson: Path):
    """(check function, notebook names it is given, answer grade_id, the solution's answer source, the
    definitions of the cells before it) for each exercise of a solution notebook."""
    import ast

    import nbformat

    nb = nbformat.read(lesson, as_version=4)
    before, answer, answer_source = "", None, ""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            answer, answer_source = meta["grade_id"], cell.source
        elif meta.get("grade"):
            call = next(node for node in ast.walk(ast.parse(cell.source)) if isinstance(node, ast.Call)
                        and isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "check")
            yield call.func.attr, [arg.id for arg in call.args], answer, answer_source, before
            before += "\n" + _definitions(answer_source)
            continue
        before += "\n" + _definitions(cell.source)


LESSONS = _lessons_by_check_module()


def test_every_check_judged_by_the_grader_exists_and_is_called_by_its_lesson():
    for module, names in JUDGED_BY_GRADER.items():
        called = {function for function, *_ in _exercises(LESSONS[module])}
        assert names <= called, (module, names - called)


def _run_definitions(source: str, namespace: dict) -> None:
    """Each definition on its own: one that needs the lesson's run-time state (a default argument
    naming a variable a cell computed) is left out rather than stopping the rest."""
    import ast

    for node in ast.parse(source).body:
        try:
            exec(compile(ast.Module([node], []), "<definitions>", "exec"), namespace)
        except Exception:  # noqa: BLE001 - that definition is simply not available here
            pass


def _verdict(check_function, objects) -> str:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            check_function(*objects, hidden=True, seed=11)
            return "passed"
        except (CheckFailed, NotImplementedError) as error:
            return f"{type(error).__name__}: {error}"


@pytest.mark.parametrize("module", sorted(JUDGED_BY_GRADER))
def test_judged_checks_give_the_same_verdicts_through_proxies(module, proxy):
    """For every check the grader judges in its own process: the solution's answer (with the
    definitions of the cells before it) passes directly and through proxies, and every answer of
    tests/wrong_answers (wrong ones and correct alternatives) gets the same verdict, with the same
    message, both ways; the wrong ones fail with their expected diagnosis."""
    import importlib

    from tests.wrong_answers import CORRECT_ANSWERS, WRONG_ANSWERS

    check_module = importlib.import_module(f"olm_edu.checks.{module}")
    lesson = LESSONS[module]
    for function, names, answer, solution_source, before in _exercises(lesson):
        if function not in JUDGED_BY_GRADER[module]:
            continue
        answers = [(solution_source, "passed")] + [(source, "passed") for source in CORRECT_ANSWERS.get(lesson.name, {}).get(answer, [])]
        answers += WRONG_ANSWERS[lesson.name][answer]
        compared = 0
        for source, expected in answers:
            namespace = {"__name__": "notebook"}
            try:
                _run_definitions(before, namespace)
                exec(source, namespace)
                objects = [namespace[name] for name in names]
            except Exception:
                assert source != solution_source, f"{lesson.name} {answer}: the solution must run on its own here"
                continue  # this wrong answer needs a cell that runs code, not only definitions
            direct = _verdict(getattr(check_module, function), objects)
            remote = _verdict(getattr(check_module, function), [proxy(o) for o in objects])
            assert remote == direct, (answer, source)
            assert (direct == "passed") if expected == "passed" else (expected in direct), (answer, source, direct)
            compared += 1
        assert compared >= 3, f"{lesson.name} {answer}: only {compared} answers could be compared"


def test_a_check_cell_is_judged_by_the_grader_only_when_every_check_it_calls_is_listed():
    from olm_edu.grader.assemble import judged_by_grader

    assert judged_by_grader("embeddings", "check.sinusoidal(sinusoidal_positions)\ncheck.sinusoidal(s, hidden=True)\n")
    assert not judged_by_grader("embeddings", "check.one_hot_lookup(one_hot, embed_one_hot)\n")
    assert not judged_by_grader("embeddings", "check.sinusoidal(s)\ncheck.one_hot_lookup(one_hot, embed_one_hot)\n")
    assert not judged_by_grader("no_such_module", "check.softmax(softmax)\n")
    assert not judged_by_grader("welcome", "print('no check called')\n")
