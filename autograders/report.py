"""The grading run's results, for the instructor: per student, per exercise, and what went wrong."""

from __future__ import annotations

import csv
import html
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Result:
    student: str
    status: str                  # graded | timed out | held for review | not gradable | grading failed
    detail: str = ""
    score: float = 0.0
    max_score: float = 0.0
    cells: dict[str, float] = field(default_factory=dict)
    manual_pending: float = 0.0  # points of answers that wait for the instructor
    review: list[str] = field(default_factory=list)  # guard.review_flags: why to look at the code
    feedback: Path | None = None
    seconds: float = 0.0
    reused: bool = False         # unchanged since the last run: its grades were kept
    name: str = ""               # the student's name as the export wrote it (any script)
    superseded: list[str] = field(default_factory=list)  # earlier attempts, not graded
    notes: list[str] = field(default_factory=list)  # what the grader mended or chose, for the student too

    def to_json(self) -> dict:
        return {**asdict(self), "feedback": str(self.feedback) if self.feedback else None}

    @classmethod
    def from_json(cls, data: dict) -> Result:
        data = dict(data)
        data["feedback"] = Path(data["feedback"]) if data.get("feedback") else None
        return cls(**data)


HELD = "held for review"
ACCEPTED_FILE = "accepted.json"  # in the grading folder: student -> sha256 of the notebook accepted


def check_accept(accept: list[str] | tuple, students: list[str]) -> None:
    """Refuse, before any grading, to accept a student who has no submission in this run."""
    unknown = [s for s in accept if s not in students]
    if unknown:
        raise SystemExit(f"--accept {', '.join(unknown)}: no submission of that student in this run "
                         f"(students here: {', '.join(students) or 'none'}); nothing was graded or accepted")


def hold_for_review(results: list[Result], notebooks: dict[str, str], folder: Path,
                    accept: list[str] | tuple = ()) -> list[str]:
    """Hold every flagged score (review flags) until the instructor accepts that very notebook.

    `notebooks`: student -> sha256 of the notebook graded in this run. A flagged result that was
    graded (or timed out) gets status `HELD` unless `folder`/`ACCEPTED_FILE` records the same
    notebook hash for the student; `accept` adds the students named there (their current
    notebooks) to that record first. A changed notebook must be accepted again. Returns one line
    per thing the instructor should know (accepted, nothing to accept).
    """
    record = Path(folder) / ACCEPTED_FILE
    try:
        accepted = json.loads(record.read_text()) if record.exists() else {}
    except ValueError:
        raise SystemExit(f"{record} is damaged: fix or delete it (it lists the flagged notebooks you "
                         "accepted), then run the grader again") from None
    notes = []
    for r in results:
        if r.student in accept:
            if r.review and r.student in notebooks:
                accepted[r.student] = notebooks[r.student]
                notes.append(f"{r.student}: accepted after review (this notebook, sha256 "
                             f"{notebooks[r.student][:12]}...)")
            else:
                notes.append(f"{r.student}: nothing to accept (no review flags on a graded notebook)")
        if not r.review or r.status not in ("graded", "timed out"):
            continue
        if accepted.get(r.student) == notebooks.get(r.student):
            r.detail = "; ".join(filter(None, [r.detail, "accepted after review"]))
            continue
        changed = "the notebook changed since you accepted it; " if r.student in accepted else ""
        was = "" if r.status == "graded" else f"{r.status}: "
        r.detail = (f"{changed}{was}{r.detail + '; ' if r.detail else ''}score {r.score:g} not final: "
                    f"look at the REVIEW lines, then accept with --accept {r.student}")
        r.status = HELD
    if accept or record.exists():
        record.write_text(json.dumps(accepted, indent=1, sort_keys=True))
    return notes


def write_csv(path: Path, results: list[Result]) -> None:
    """One row per student: total, status and reasons, review flags, and every exercise's points.

    A score held for review is not in `score` (nor `percent`), which is what an LMS import reads
    as the grade: it is in `provisional_score`, a column no import takes as a grade, until accepted.
    """
    cell_names = sorted({name for r in results for name in r.cells})
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "name", "score", "max_score", "percent", "manual_pending", "status",
                         "detail", "review", "provisional_score", "superseded", *cell_names])
        for r in results:
            percent = 100.0 * r.score / r.max_score if r.max_score else 0.0
            held = r.status == HELD
            writer.writerow([r.student, r.name, "" if held else f"{r.score:g}", f"{r.max_score:g}",
                             "" if held else f"{percent:.1f}", f"{r.manual_pending:g}", r.status, r.detail,
                             "; ".join(r.review), f"{r.score:g}" if held else "", "; ".join(r.superseded),
                             # a held score's parts are as provisional as its total
                             *("" if held else f"{r.cells.get(n, 0.0):g}" for n in cell_names)])


def exercise_rows(results: list[Result], points: dict[str, float]) -> list[dict]:
    """Per exercise (grade cell): points, mean over students whose notebook ran, full and zero counts."""
    ran = [r for r in results if r.cells]
    rows = []
    for name, most in points.items():
        scores = [r.cells.get(name, 0.0) for r in ran]
        rows.append({"exercise": name, "points": most,
                     "mean": statistics.fmean(scores) if scores else 0.0,
                     "full": sum(s >= most for s in scores), "zero": sum(s == 0 for s in scores),
                     "students": len(scores)})
    return rows


def write_exercises_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["exercise", "points", "mean", "full", "zero", "students"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "points": f"{row['points']:g}", "mean": f"{row['mean']:.2f}"})


def summary_table(results: list[Result]) -> str:
    """Per student: score, time, status with its reason, and any review flags."""
    width = max([len("student"), *(len(r.student) for r in results)])
    lines = [f"{'student':<{width}}  {'score':>11}  {'time':>6}  status",
             f"{'-' * width}  {'-' * 11}  {'-' * 6}  {'-' * 30}"]
    for r in results:
        status = r.status + (f": {r.detail}" if r.detail else "")
        took = "kept" if r.reused else f"{r.seconds:5.1f}s"
        lines.append(f"{r.student:<{width}}  {r.score:>5g} / {r.max_score:<3g}  {took:>6}  {status}")
        lines += [f"{'':<{width}}  {'':>11}  {'':>6}  REVIEW {flag}" for flag in r.review]
        if r.name and r.name != r.student:
            lines.append(f"{'':<{width}}  {'':>11}  {'':>6}  name: {r.name}")
        if r.superseded:
            lines.append(f"{'':<{width}}  {'':>11}  {'':>6}  superseded (not graded): "
                         + ", ".join(r.superseded))
    scores = [r.score for r in results]
    held = sum(r.status == HELD for r in results)
    if held:
        lines.append(f"{held} held for review: their scores are not in grades.csv's score column until "
                     "you accept them (--accept STUDENT)")
    if results:
        most = results[0].max_score
        lines.append(f"{'mean':<{width}}  {statistics.fmean(scores):>5.2f} / {most:<3g}")
    return "\n".join(lines)


def exercise_table(rows: list[dict]) -> str:
    width = max([len("exercise"), *(len(row["exercise"]) for row in rows)])
    lines = [f"{'exercise':<{width}}  {'mean':>12}  {'full':>5}  {'zero':>5}",
             f"{'-' * width}  {'-' * 12}  {'-' * 5}  {'-' * 5}"]
    for row in rows:
        lines.append(f"{row['exercise']:<{width}}  {row['mean']:>6.2f} / {row['points']:<3g}  "
                     f"{row['full']:>5}  {row['zero']:>5}")
    return "\n".join(lines)


NOTES_START, NOTES_END = "<!-- grader notes -->", "<!-- end of grader notes -->"


def annotate_feedback(result: Result) -> None:
    """Tell the student, at the top of their nbgrader feedback page, what the grader mended or chose
    (split cells joined, the copy graded, superseded attempts) and whether the score is provisional
    (held for review). Rewritten, not added twice, on every run."""
    page = result.feedback
    if page is None or not page.exists():
        return
    text = page.read_text(encoding="utf-8", errors="replace")
    if NOTES_START in text:
        text = text[:text.index(NOTES_START)] + text[text.index(NOTES_END) + len(NOTES_END):]
    items = []
    if result.status == HELD:
        items.append("<strong>Your score is provisional:</strong> your instructor looks at this submission "
                     "before the score is final.")
    items += [html.escape(note) for note in result.notes]
    if result.superseded:
        items.append("Graded: your latest attempt. Earlier attempts, not graded: "
                     + html.escape(", ".join(result.superseded)))
    if items and "<body" in text:
        at = text.index(">", text.index("<body")) + 1
        block = (f"{NOTES_START}<section style='border:1px solid #999;padding:0.5em 1em;margin:1em'>"
                 f"<h2>Notes from the grader</h2><ul>{''.join(f'<li>{item}</li>' for item in items)}</ul>"
                 f"</section>{NOTES_END}")
        text = text[:at] + block + text[at:]
    page.write_text(text, encoding="utf-8")
