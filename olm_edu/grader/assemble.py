"""Build the notebook that is actually run for one submission.

The student's notebook gives the answers; the course's solution notebook gives everything that
must not be changed. Following nbgrader's autograder, the graded notebook is the student's
notebook in the student's cell order, with:

- every check cell replaced by the instructor's version, hidden tests included, and a trusted
  preamble that re-imports the check modules from disk (undoing any monkeypatching) and, after the
  checks pass, prints a token the student cannot know in advance;
- every other cell of the course (narrative code, read-only text) restored to the course's
  version, matched by its cell id or grade_id;
- cells the student added kept as they are (they may define helpers), and scanned;
- a check cell the student deleted put back right after its exercise;
- everything after the last check cell dropped (it cannot change a score).

An exercise whose answer cell is gone (deleted, or its metadata changed) scores 0 and says so.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from olm_edu.grader.scan import Finding, scan_source

if TYPE_CHECKING:  # imported where used, so that the kernel's `import olm_edu.grader.kernel_side` stays light
    import nbformat

__all__ = ["Exercise", "GradedNotebook", "exercises_of", "assemble", "JUDGED_BY_GRADER", "judged_by_grader"]

# The checks the grader judges in its own process (`remote`), by check module: each calls the
# learner's functions on data (tensors, numbers, lists, dicts, and the plain records `codec` carries:
# a ModelConfig, a SimpleNamespace, a torch.Generator) and judges what comes back (gradients
# included: `Check.call_with_gradient` runs the backward pass in the kernel too), so
# nothing in the student's kernel can change its verdict. A check cell is judged here when every
# `check.<name>(...)` it calls is listed; the others run in the (sandboxed) kernel, hardened by
# `trusted_check_source`. A learner's nn.Module comes back as a shadow (`shadow`): torch.nn parts
# as the torch classes, the learner's own as modules whose forward runs in the kernel after the
# grader's parameters and modes are sent; a module the check builds and hands to the learner's code
# (`grading.shared_module`) is made again in the kernel from the same olm_edu factory, and what the
# learner's code changes in it (weights, ties, .grad) comes back. The checks that need what a proxy
# cannot carry:
# - the learner's source read with `inspect` and run in two processes of its own (25
#   average_gradients: those must be the sandbox's, so this check runs there);
# - an instrumented input (02 one_hot_lookup detects reading rows of the weight by indexing, which
#   a copy hides).
# Each entry is tested (tests/test_grader_remote.py): the solution passes through proxies, every
# answer of tests/wrong_answers gets the same verdict and message through proxies as directly, and
# a sandboxed run per lesson group shows that monkeypatching the kernel does not change the grade.
JUDGED_BY_GRADER: dict[str, frozenset[str]] = {
    "welcome": frozenset({"softmax"}),
    "tokens": frozenset({"pair_counts", "merge", "train", "encode_decode"}),
    "embeddings": frozenset({"sinusoidal", "token_and_position"}),
    "attention": frozenset({"scaled_dot_product", "causal_mask", "multi_head"}),
    "block": frozenset({"layer_norm", "gelu_tanh", "mlp", "block"}),
    "gpt2": frozenset({"gpt2", "init", "param_count"}),
    "training": frozenset({"get_batch", "bigram_log_probs", "cross_entropy", "lr_schedule"}),
    "generation": frozenset({"attend_with_cache", "top_k", "top_p"}),
    "weights": frozenset({"conv1d_to_linear", "split_qkv", "convert_state_dict"}),  # GPT2 built and run remotely
    "rmsnorm": frozenset({"rms_norm", "llama_rms_norm", "gemma_rms_norm"}),
    "rope": frozenset({"rope_frequencies", "apply_rope", "apply_rope_interleaved", "interleaved_to_half",
                       "llama3_frequencies"}),
    "gated_ffn": frozenset({"swiglu", "geglu", "gated_hidden_dim"}),
    "gqa": frozenset({"repeat_kv", "grouped_query_attention", "kv_cache_size"}),
    "llama": frozenset({"decoder_layer", "llama", "convert_state_dict", "param_count"}),
    "stability": frozenset({"qk_norm_attention", "z_loss", "softcap"}),
    "windows": frozenset({"sliding_window_mask", "rolling_update", "gemma2_layer", "windowed_kv_cache_bytes"}),
    "moe": frozenset({"route", "moe_forward", "load_balancing_loss", "router_z_loss"}),
    "deepseek": frozenset({"mla_cache_bytes", "latent_attention", "deepseek_route", "update_selection_bias"}),
    "ablation": frozenset({"matched_hidden_dim", "seed_summary", "real_differences", "tokens_per_second"}),
    "model_card": frozenset({"moe_ffn_params", "serving_memory", "forward_flops"}),
    "gpt_oss": frozenset({"sink_softmax", "clamped_swiglu", "gpt_oss_experts", "card_bytes"}),
    "norms_positions": frozenset({"post_sublayer_block", "rope_frequencies", "rope_layers", "chunked_mask"}),
    "linear_attention": frozenset({"delta_rule_step", "log_decay", "chunked_delta_rule", "layer_schedule"}),
    "sparse_attention": frozenset({"indexer_scores", "causal_top_k", "sparse_attention", "score_flops"}),
    "deepseek_v4": frozenset({"compress", "csa_selection", "sinkhorn_knopp", "v4_cache_bytes"}),
    "distributed": frozenset({"accumulate_gradients", "training_bytes"}),
    "recipe": frozenset({"newton_schulz", "split_parameters", "wsd_schedule"}),
}

_CHECK_CALL = re.compile(r"\bcheck\.(\w+)\(")


def judged_by_grader(module: str, check_source: str) -> bool:
    """Whether the check cell `check_source` of check module `module` is judged in the grader's process."""
    called = set(_CHECK_CALL.findall(check_source))
    return bool(called) and called <= JUDGED_BY_GRADER.get(module, frozenset())


_CHECK_IMPORT = re.compile(r"^from olm_edu\.checks import (\w+) as check$", re.MULTILINE)


@dataclass(frozen=True)
class Exercise:
    """One graded exercise of a lesson: its answer cell, its check cell and its points."""

    grade_id: str
    check_id: str
    points: float
    title: str


@dataclass
class GradedNotebook:
    notebook: nbformat.NotebookNode
    exercises: list[Exercise]
    missing: dict[str, str] = field(default_factory=dict)  # grade_id -> why it scores 0
    findings: list[Finding] = field(default_factory=list)
    student_cells: dict[str, int] = field(default_factory=dict)  # grade_id -> cell number in the submission
    check_sources: dict[str, str] = field(default_factory=dict)  # check grade_id -> the instructor's source,
    # for the checks the grader runs in its own process (never sent to the kernel)


def _nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def exercises_of(solution: nbformat.NotebookNode) -> list[Exercise]:
    """The exercises of a solution notebook, in order, paired answer -> check."""
    exercises, answer, title = [], None, ""
    for cell in solution.cells:
        meta = _nbgrader(cell)
        if cell.cell_type == "markdown":
            match = re.search(r"^## (Exercise \d+ — .+?) \(\d+ points?\)", cell.source, re.MULTILINE)
            title = match.group(1) if match else title
        elif meta.get("solution"):
            answer = meta["grade_id"]
        elif meta.get("grade"):
            if answer is None:
                raise ValueError(f"check cell {meta['grade_id']} has no answer cell before it")
            exercises.append(Exercise(answer, meta["grade_id"], float(meta.get("points", 0)), title or answer))
            answer = None
    return exercises


def _check_module(solution: nbformat.NotebookNode) -> str:
    for cell in solution.cells:
        match = _CHECK_IMPORT.search(cell.source)
        if match:
            return match.group(1)
    raise ValueError("the solution notebook never imports its checks (`from olm_edu.checks import ... as check`)")


def trusted_check_source(check_source: str, module: str, token: str) -> str:
    """The instructor's check cell, hardened: fresh check modules first, a pass token last."""
    preamble = (
        "# Added by olm-edu grade: reload the checks from disk, then run them.\n"
        "import sys as _olm_sys\n"
        "for _olm_name in [n for n in list(_olm_sys.modules) if n == 'olm_edu.grading' or n.startswith('olm_edu.checks')]:\n"
        "    del _olm_sys.modules[_olm_name]\n"
        f"from olm_edu.checks import {module} as check\n"
    )
    body = _CHECK_IMPORT.sub("", check_source).strip("\n")
    return f"{preamble}{body}\nprint({token!r})\n"


def assemble(submission: nbformat.NotebookNode, solution: nbformat.NotebookNode, token: str) -> GradedNotebook:
    """The notebook to run for `submission`, and what is missing or suspicious in it."""
    import nbformat

    exercises = exercises_of(solution)
    module = _check_module(solution)
    by_grade_id = {_nbgrader(c)["grade_id"]: c for c in solution.cells if _nbgrader(c).get("grade_id")}
    by_cell_id = {c.get("id"): c for c in solution.cells if c.get("id")}
    check_for = {e.grade_id: e.check_id for e in exercises}
    check_ids = set(check_for.values())

    def check_cell(check_id: str):
        cell = copy.deepcopy(by_grade_id[check_id])
        if judged_by_grader(module, cell.source):  # self-contained: `check` is always the grader's own module
            body = _CHECK_IMPORT.sub("", cell.source).strip("\n")
            graded.check_sources[check_id] = f"from olm_edu.checks import {module} as check\n{body}\n"
        cell.source = trusted_check_source(cell.source, module, token)
        cell.outputs = []
        return cell

    graded = GradedNotebook(nbformat.v4.new_notebook(metadata=copy.deepcopy(solution.metadata)), exercises)
    placed_checks: set[str] = set()
    module_names: set[str] = set()
    for number, cell in enumerate(submission.cells):
        grade_id = _nbgrader(cell).get("grade_id")
        if grade_id in check_for:  # the student's answer
            graded.student_cells[grade_id] = number
            answer = copy.deepcopy(by_grade_id[grade_id])
            answer.source = cell.get("source", "")
            graded.findings += scan_source(answer.source, number, module_names)
            graded.notebook.cells.append(answer)
            if check_for[grade_id] not in {_nbgrader(c).get("grade_id") for c in submission.cells}:
                graded.notebook.cells.append(check_cell(check_for[grade_id]))  # the student deleted it
                placed_checks.add(check_for[grade_id])
        elif grade_id in check_ids:
            if grade_id not in placed_checks:
                graded.notebook.cells.append(check_cell(grade_id))
                placed_checks.add(grade_id)
        elif grade_id in by_grade_id or cell.get("id") in by_cell_id:  # course cells come back as written
            original = by_grade_id.get(grade_id) or by_cell_id[cell.get("id")]
            restored = copy.deepcopy(original)
            if restored.cell_type == "code":
                restored.outputs = []
            graded.notebook.cells.append(restored)
        elif cell.get("cell_type") == "code":  # a cell the student added
            added = nbformat.v4.new_code_cell(cell.get("source", ""))
            graded.findings += scan_source(added.source, number, module_names)
            graded.notebook.cells.append(added)
    for exercise in exercises:
        if exercise.grade_id not in graded.student_cells:
            graded.missing[exercise.grade_id] = (
                f"the answer cell of {exercise.title} (grade_id '{exercise.grade_id}') is missing from your "
                "notebook: it was deleted, or its cell metadata was changed"
            )
    last_check = max((i for i, c in enumerate(graded.notebook.cells) if _nbgrader(c).get("grade")), default=-1)
    graded.notebook.cells = graded.notebook.cells[: last_check + 1]
    return graded
