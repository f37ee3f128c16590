"""The gradebook (CSV) and each student's feedback page (HTML)."""

from __future__ import annotations

import csv
import html
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from olm_edu.grader import SubmissionResult
    from olm_edu.grader.assemble import Exercise

__all__ = ["write_reports", "feedback_html"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 58rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; width: 100%; } td, th { border-bottom: 1px solid #ddd; padding: .5rem; vertical-align: top; text-align: left; }
pre { white-space: pre-wrap; margin: 0; font-size: .9rem; } .passed { color: #176e2e; } .failed { color: #a11; }
.status { padding: .6rem 1rem; background: #fff4d6; border-left: 4px solid #e0a800; margin: 1rem 0; }
"""


def _points(value: float) -> str:
    return f"{value:g}"


def feedback_html(result: "SubmissionResult", lesson: str) -> str:
    """A page a student can read: total, status, and per exercise what happened and where."""
    rows = []
    for exercise in result.exercises:
        mark, css = ("✅ passed", "passed") if exercise.passed else ("❌ not passed", "failed")
        rows.append(
            f"<tr><td>{html.escape(exercise.title)}</td><td class='{css}'>{mark}</td>"
            f"<td>{_points(exercise.points)} / {_points(exercise.max_points)}</td>"
            f"<td><pre>{html.escape(exercise.message or '(no message)')}</pre>"
            f"<small>{html.escape(exercise.where)}</small></td></tr>"
        )
    status = ""
    if result.status != "graded":
        status = f"<div class='status'><b>{html.escape(result.status)}</b>: {html.escape(result.detail)}</div>"
    findings = ""
    if result.findings:
        items = "".join(f"<li>{html.escape(finding)}</li>" for finding in result.findings)
        findings = (f"<h2>Code flagged for review</h2><p>Not counted against the score: shown so that your "
                    f"instructor can look at it.</p><ul>{items}</ul>")
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(lesson)} — "
        f"{html.escape(result.student)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(lesson)}: feedback for {html.escape(result.student)}</h1>"
        f"<p><b>Score: {_points(result.total)} / {_points(result.max_total)}</b></p>{status}"
        "<table><tr><th>Exercise</th><th>Result</th><th>Points</th><th>What the check said</th></tr>"
        f"{''.join(rows)}</table>{findings}</body></html>\n"
    )


def write_reports(results: list["SubmissionResult"], exercises: list["Exercise"], lesson: str, out: Path) -> None:
    """DIR/gradebook.csv and DIR/feedback/<student>.html."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "feedback").mkdir(exist_ok=True)
    with (out / "gradebook.csv").open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["student", *[e.grade_id for e in exercises], "total", "max_total", "status", "detail", "review"])
        for result in sorted(results, key=lambda r: r.student):
            points = {e.grade_id: _points(e.points) for e in result.exercises}
            if result.status in ("system error", "duplicate"):  # not graded: blank, not 0; the reason is beside it
                points, total = {}, ""
            else:
                points, total = {g: points.get(g, "0") for g in (e.grade_id for e in exercises)}, _points(result.total)
            review = "; ".join(result.findings)[:1000]  # the scan's findings: advice for the instructor, not a score
            writer.writerow([result.student, *[points.get(e.grade_id, "") for e in exercises],
                             total, _points(sum(e.points for e in exercises)), result.status, result.detail, review])
    for result in results:
        (out / "feedback" / f"{result.student}.html").write_text(feedback_html(result, lesson), encoding="utf-8")
