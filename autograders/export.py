"""Grades out: files that Canvas and Moodle import into their gradebooks, made from grades.csv.

Course infrastructure (not taught in a module). The instructor guide's section "Grades into Canvas
or Moodle" (autograders/INSTRUCTORS.md) says how to use it.

    python -m autograders.export canvas grading/00_orientation/grades.csv [more grades.csv] \
        --roster canvas_gradebook_export.csv --out canvas_import.csv
    python -m autograders.export moodle grading/00_orientation/grades.csv \
        --roster moodle_grades_export.csv [--worksheet 00_orientation=worksheet.csv] --out moodle_import.csv

ROSTER is the LMS's own export (Canvas: Grades > Export; Moodle: Export grades to CSV, the
participants list, or an assignment's offline grading worksheet), so every row written carries the
LMS's own ids. Each grades.csv (``grading/<module>/grades.csv``, written by autograders/grade.py)
gives one column, named by its module, scored in points (``score``) out of ``max_score``: the
module is the one whose grade ids its exercise columns are, else its folder's name if that is a
module id, else the one given as ``MODULE=PATH``; an empty grades.csv is refused.

Hand grades: formgrader writes the points of written answers (and any manual score or extra credit)
into nbgrader's gradebook, not into grades.csv, so the ``gradebook.db`` that ``make grade`` keeps beside
grades.csv is read too (``add_hand_grades``; ``--no-gradebook`` leaves it out); the two must be of one
run (automatic scores compared per cell). A lab hub has no grades.csv: give its gradebook itself
(``~sysml-instructor/sysml/gradebook.db``, ``read_gradebook``), and ``--ids accounts.csv`` with two
columns, the hub's account and the learner's LMS id, since hub accounts are not LMS identities.

What is never done: a student without a grade (held for review, not gradable, grading failed, no
submission) never gets 0, the cell stays empty; a student of grades.csv not matched to the roster is
never dropped silently (listed on stderr with why, exit status 3 unless ``--allow-unmatched``); two
grades.csv rows never land in one roster row, and a roster row is found by one id column only, so
one student's id can never pick another student's row by matching a different column.

Vendor facts this relies on (read in the vendors' source, as of 2026-11-30):

Canvas, ``lib/gradebook_importer.rb`` (github.com/instructure/canvas-lms, commit 00b222d7):
- the header row must start with a column containing "Student" and one containing "ID"; the student
  columns run up to "Section" (Student, ID, SIS User ID, SIS Login ID, [Integration ID],
  [Root Account], Section); every later column is an assignment, "Title (assignment id)" matched by
  its id, else by its title, else Canvas creates a NEW assignment of that title; "Current Score",
  "Final Grade" and the like are skipped (``NON_ASSIGNMENT_COLUMN_HEADERS``);
- a row whose first cell contains "Points Possible" sets the points of the columns' assignments
  (``process_pp``), "read only" there marks a column that is not imported; rows that hold only
  "Muted"/"Manual Posting" are skipped;
- a row's student is found by the ID column (Canvas user id), else SIS User ID, else SIS Login ID,
  else by name; an unknown student is shown as a new one on the import's review page;
- a blank cell is "no change" where Canvas has no score, and shows as a change where it has one;
  ``"7,5"`` is read as 7.5 (``decimal_comma_to_period``) but so is ``"1,234"`` as 1.234: write a
  dot and no thousands separator; ``;`` is taken as the separator only when it splits the first
  lines more evenly than ``,`` (``identify_delimiter``).

Moodle, ``grade/import/csv/classes/load_data.php`` (github.com/moodle/moodle, commit 0289d8c7):
- "Import grades from CSV" maps one column to a user field: user id, username, ID number or email
  address (``map_user_data_with_value``); a row whose user is not found aborts the WHOLE import
  (``usermappingerrorusernotfound``), so this writes only roster students;
- each other column is mapped, on the import page, to an existing grade item or a new one; a blank
  or ``-`` cell is "no grade" (``$value = null``), and that null is written over what the grade
  item held (``grade/import/lib.php``, ``update_final_grade``): students with no grade in any
  exported module are therefore left out of the file, and a partly blank row is reported;
- numbers go through ``unformat_float($value, true)`` ("if the value has a local decimal or can
  correctly be unformatted"); a non-number aborts the import (``badgrade``). This writes a dot and
  no thousands separator; on a site whose language writes decimal commas, check the import's preview.
Moodle assignments, ``mod/assign`` (same repository): the submission download names a student's
folder ``<Full name>_<participant id>_assignsubmission_file_`` where the participant id is the
assignment's own id for that user (``get_uniqueid_for_user``), NOT the user id; the assignment's
offline grading worksheet lists it as "Participant <id>" in its "Identifier" column (written by
``mod/assign/gradingtable.php``, ``col_recordid``; read back by
``mod/assign/feedback/offline/importgradeslib.php``) next to "Full name" and "Email address".
Moodle's XML import (``grade/import/xml/lib.php``, same repository; the format Moodle's XML export
writes, ``grade/export/xml/grade_export_xml.php``, idnumbers XML-escaped, MDL-71016):
``<results><result><assignment>GRADE ITEM ID NUMBER</assignment><student>USER ID NUMBER</student>
<score>N</score></result>...</results>``; users are found by their ID number only, grade items by
theirs (set it in the item's settings); an unknown one aborts the import; a score must be
``is_numeric`` (a dot), and a result without ``<score>`` clears the grade, so none is written.
So a grades.csv of Moodle ids is mapped through that module's worksheet (``--worksheet``), else
by an id column that holds the grader's ids (when ``--id-regex`` read usernames or emails; never
for bare numbers, which are participant ids and may equal another student's ID number), else
by a full name that is unique on both sides (each such match is listed on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import re
import sqlite3
import sys
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

GRADED = ("graded", "timed out")  # statuses whose `score` is a grade (timed out: the other exercises count)

CANVAS_ID_COLUMNS = ("ID", "SIS User ID", "SIS Login ID", "Integration ID")
MOODLE_ID_COLUMNS = ("Email address", "Username", "ID number", "User ID", "Identifier")
MOODLE_OUT_IDS = ("Email address", "Username", "ID number")   # what the Moodle import can map to
PARTICIPANT = re.compile(r"^\D*?(\d+)$")                      # "Participant 4711" (any language)


class ExportError(Exception):
    """A reason not to write the file at all (the command exits with status 2), in one sentence."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------- reading

def read_table(path: Path) -> tuple[list[list[str]], str]:
    """Rows of a CSV file as the LMS or a spreadsheet wrote it, and a note on how it was read.

    UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8"); failing that Windows-1252
    (Excel's plain "CSV" on a western Windows), with a note. Separator: comma, semicolon or tab,
    whichever splits the first line into most fields; quoted fields keep commas, quotes and newlines.
    """
    data = Path(path).read_bytes()
    note = ""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
        note = f"{path}: not UTF-8, read as Windows-1252 (save it as 'CSV UTF-8' to be sure of names)"
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=lambda sep: len(next(csv.reader([first], delimiter=sep), [])))
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    return [[cell.strip() for cell in row] for row in rows if any(cell.strip() for cell in row)], note


def _norm(text: str) -> str:
    """A name or id compared loosely: NFC, case-folded, inner whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


@dataclass
class Grade:
    student: str
    name: str
    points: float | None     # None: no grade (never written as 0)
    why: str = ""            # why there is no grade, or what to know about it


@dataclass
class Module:
    module: str
    path: Path
    max_points: float
    grades: list[Grade] = field(default_factory=list)
    note: str = ""           # how the module was found, when not from the folder's name


GRADER_COLUMNS = {"student", "name", "score", "max_score", "percent", "manual_pending", "status", "detail",
                  "review", "provisional_score", "superseded"}   # report.write_csv's; the rest are exercises


def module_exercises() -> dict[str, set[str]]:
    """Per module id, the grade ids of its automatically graded cells (grades.csv's exercise columns)."""
    import json

    from autograders import settings
    out = {}
    for module in settings.modules():
        cells = json.loads(settings.solution_notebook(module).read_text())["cells"]
        out[module] = {c["metadata"]["nbgrader"]["grade_id"] for c in cells
                       if c["cell_type"] == "code" and c["metadata"].get("nbgrader", {}).get("grade")}
    return out


def _which_module(path: Path, columns: set[str], given: str | None, named: set[str]) -> tuple[str, str]:
    """The module a grades.csv belongs to, and a note when it was read from the file, not its folder.

    grade.py writes the module nowhere in grades.csv, but its exercise columns are the module's grade ids
    (unique across modules), so they say which module it is when any student's notebook ran. A file copied
    out of ``grading/<module>/`` (to Downloads, say) is named by them, never by its new folder; a folder
    that names another module than its columns is refused; a name that is no module id, with columns that
    say nothing, is refused unless given (``MODULE=PATH``) or mapped by ``--assignment``.
    """
    exercises = module_exercises()
    owners = {m for m, ids in exercises.items() if columns & ids}
    folder = path.parent.name if path.name == "grades.csv" else path.stem
    if len(owners) > 1:
        raise ExportError(f"{path}: its exercise columns belong to several modules "
                          f"({', '.join(sorted(owners))})")
    read = owners.pop() if owners else None
    name = given or folder
    if read and read != name:
        if given or folder in exercises:
            raise ExportError(f"{path}: its exercise columns are those of {read}, not {name}: "
                              "is this the right grades.csv?")
        return read, f"{path}: module {read}, read from its exercise columns (its folder is {folder!r})"
    if read or given or name in exercises or name in named:
        return name, ""
    where = "folder" if path.name == "grades.csv" else "file name"
    raise ExportError(f"{path}: which module? its {where} {folder!r} is not a module id and no student's "
                      f"exercises are in it: write MODULE=PATH (make export MODULE=...), modules: "
                      f"{', '.join(exercises)}")


def read_grades(path: Path, module: str | None = None, named: set[str] = frozenset(),
                gradebook: bool = True) -> Module:
    """One grading run's grades.csv: per student the points, or None with the reason.

    Points are `score` for statuses `GRADED`; "held for review" (empty score), "not gradable" and
    "grading failed" have no grade. The module: `module` if given, else as `_which_module` reads it
    (``grading/<module>/grades.csv``, or the exercise columns of a copy); `named`: names --assignment maps.
    A file with no student, or no positive max_score (an empty or unfinished run), is refused.
    `gradebook`: the hand grades given in formgrader since, from the gradebook.db beside it
    (`add_hand_grades`), when there is one.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        columns = set(reader.fieldnames or [])
    if rows and not {"student", "score", "max_score", "status"} <= columns:
        raise ExportError(f"{path}: not a grades.csv of autograders/grade.py "
                          "(no student, score, max_score or status column)")
    if not rows:
        raise ExportError(f"no grades in {path} (no student rows): did the grading run finish?")
    try:
        maxima = {float(r["max_score"]) for r in rows if r["max_score"] and float(r["max_score"]) > 0}
    except ValueError as error:
        raise ExportError(f"{path}: a max_score is not a number ({error})") from None
    if not maxima:
        raise ExportError(f"no grades in {path} (no student has a max_score above 0): "
                          "did the grading run finish?")
    if len(maxima) > 1:
        raise ExportError(f"{path}: students have different max_score ({sorted(maxima)}): "
                          "grade them in one run")
    name, note = _which_module(path, columns - GRADER_COLUMNS, module, set(named))
    result = Module(name, path, maxima.pop(), note=note)
    for r in rows:
        status, score = r["status"], r["score"].strip()
        if status in GRADED and score:
            pending = float(r.get("manual_pending") or 0)
            why = _pending(pending) or ("timed out: " + r["detail"] if status == "timed out" else "")
            result.grades.append(Grade(r["student"], r.get("name", ""), float(score), why))
        else:
            result.grades.append(Grade(r["student"], r.get("name", ""), None,
                                       f"{status}" + (f": {r['detail']}" if r.get("detail") else "")))
    beside = path.parent / GRADEBOOK
    if gradebook and path.name == "grades.csv" and beside.is_file():
        exercises = columns - GRADER_COLUMNS
        add_hand_grades(result, {r["student"]: {c: r[c] or "" for c in exercises} for r in rows}, beside)
    return result


# ---------------------------------------------------------------- nbgrader's gradebook

GRADEBOOK = "gradebook.db"


@dataclass
class Submitted:
    """One student's submission as nbgrader's gradebook holds it now (hand grades included)."""
    score: float                     # nbgrader's: manual if given, else automatic, + extra credit
    pending: float                   # points of cells waiting for a hand grade (not in `score`)
    auto: dict[str, float]           # grade id -> automatic score, for cells with no hand-given score
    by_hand: int                     # cells with a hand-given score or extra credit
    recheck: int                     # hand grades that nbgrader flags again (autograde ran after them)
    unfinished: bool                 # no cell has any score: autograde did not get through the notebook
    timestamp: object = None         # the submission's time as the gradebook holds it (naive UTC datetime)


@contextlib.contextmanager
def _gradebook(path: Path):
    """nbgrader's Gradebook on a snapshot of `path` (SQLite's backup, consistent even while formgrader
    writes): opening a gradebook writes to it (its tables, a course row), and the instructor's is never
    written here. Anything that is not an nbgrader gradebook is refused in one sentence."""
    from nbgrader.api import Gradebook

    with tempfile.TemporaryDirectory(prefix="sysml-export-") as tmp:
        copy = Path(tmp) / GRADEBOOK
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as source, \
                    contextlib.closing(sqlite3.connect(copy)) as target:
                source.backup(target)
                tables = {r[0] for r in target.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.Error as error:
            raise ExportError(f"{path}: cannot read it as an nbgrader gradebook ({error})") from None
        if not {"submitted_assignment", "grade", "assignment", "student"} <= tables:
            raise ExportError(f"{path}: not an nbgrader gradebook (no submitted_assignment, grade, "
                              "assignment or student table)")
        gb = Gradebook(f"sqlite:///{copy}")
        try:
            yield gb
        finally:
            gb.close()


def _submitted(gb, assignment: str) -> dict[str, Submitted]:
    """Per student id, their submission of `assignment` in an open Gradebook.

    nbgrader marks a cell `needs_manual_grade` when it has no automatic score (a written answer) and again
    when autograde runs over a hand grade (``SaveAutoGrades``); formgrader clears it when a score is typed.
    """
    out = {}
    for sub in gb.find_assignment(assignment).submissions:
        auto: dict[str, float] = {}
        pending, by_hand, recheck, scored = 0.0, 0, 0, False
        for notebook in sub.notebooks:
            for g in notebook.grades:
                if g.needs_manual_grade:
                    if g.manual_score is None:
                        pending += float(g.max_score or 0.0)
                    else:
                        recheck += 1
                if g.manual_score is not None or g.extra_credit:
                    by_hand += 1
                elif g.auto_score is not None:
                    auto[g.name] = float(g.auto_score)
                scored = scored or g.auto_score is not None or g.manual_score is not None
        out[sub.student.id] = Submitted(float(sub.score or 0.0), pending, auto, by_hand, recheck, not scored,
                                        sub.timestamp)
    return out


def _pending(sub: Submitted | float) -> str:
    """What to know about a score that is not final yet (empty when it is)."""
    pending, recheck = (sub, 0) if isinstance(sub, float | int) else (sub.pending, sub.recheck)
    said = [f"{pending:g} points wait for a hand grade in formgrader (not in this score)"] if pending else []
    if recheck:
        said.append(f"{recheck} hand grade(s) given before autograde ran again: nbgrader asks to check them")
    return "; ".join(said)


def read_gradebook(path: Path, module: str | None = None) -> list[Module]:
    """An nbgrader gradebook (a lab hub's ``~sysml-instructor/sysml/gradebook.db``): one Module per
    assignment with a graded submission, or just `module`.

    Points are nbgrader's own score, hand grades and extra credit included; a student the gradebook
    knows with no submission, or whose autograde did not finish, has no grade (never 0). No student is
    held for review here: that comes from ``make grade`` (grades.csv). Names are left out (the hub's are
    account names). Refused: not a gradebook, no such assignment, no graded submission at all.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    modules = []
    with _gradebook(path) as gb:
        names = [a.name for a in gb.assignments]
        if module is not None and module not in names:
            raise ExportError(f"{path}: no assignment {module!r} in this gradebook "
                              f"(it has: {', '.join(names) or 'none'})")
        chosen = [module] if module else [a for a in names if gb.find_assignment(a).submissions]
        if not chosen:
            raise ExportError(f"no grades in {path} (no assignment has an autograded submission): "
                              "collect and autograde first")
        students = [s.id for s in gb.students]
        course = path.parent if (path.parent / "submitted").is_dir() else None
        for name in chosen:
            maximum = float(gb.find_assignment(name).max_score or 0.0)
            if maximum <= 0:
                raise ExportError(f"{path}: assignment {name!r} has no points (max_score 0)")
            subs = _submitted(gb, name)
            grades = []
            for student in students:
                sub = subs.get(student)
                stale = _stale(course, name, student, sub.timestamp) if sub and course else ""
                if sub is None:
                    grades.append(Grade(student, "", None, "no autograded submission in the gradebook"))
                elif stale:
                    grades.append(Grade(student, "", None, stale))
                elif sub.unfinished:
                    grades.append(Grade(student, "", None, "autograde did not finish for this submission "
                                                           "(no cell has a score): autograde it again"))
                else:
                    grades.append(Grade(student, "", sub.score, _pending(sub)))
            checked = ("" if course else "; not beside its course's submitted/ folder, so whether each score "
                       "is of the newest submission is not checked: export the gradebook in place")
            modules.append(Module(name, path, maximum, grades,
                                  note=f"{path}: {name}: nbgrader's scores, hand grades included "
                                       f"({len(subs)} submission(s) of {len(students)} student(s)){checked}"))
    return modules


def _stale(course: Path, assignment: str, student: str, graded) -> str:
    """Why the gradebook's score of `student` is not that of the submission collected last, or "".

    nbgrader keeps a student's old grades when the autograde of a newer submission fails (it removes only the
    autograded copy: "Removing failed assignment"), and until the newer one is autograded: `nbgrader export`
    then reports the old score for a notebook that was replaced."""
    from nbgrader.utils import parse_utc

    if not (course / "autograded" / student / assignment).is_dir():
        return ("its autograded copy is missing: the last autograde of its newest submission failed "
                "(formgrader: needs autograding), so the gradebook's score is not that submission's")
    stamp = course / "submitted" / student / assignment / "timestamp.txt"
    try:
        submitted = parse_utc(stamp.read_text().strip())
    except (OSError, ValueError, OverflowError):
        return ""
    if graded is not None and submitted > parse_utc(graded):
        return ("submitted again since it was autograded: autograde it again (the gradebook holds the older "
                "score)")
    return ""


def add_hand_grades(module: Module, columns: dict[str, dict[str, str]], gradebook: Path) -> None:
    """Scores of `module` (read from a grades.csv) brought up to date with the hand grades given in the
    gradebook beside it (formgrader's written answers, manual scores, extra credit).

    `columns`: per student, grades.csv's exercise columns. Only students graded in grades.csv change;
    held, ungradable and failed ones stay without a grade. The two files must be of one run: a graded
    student missing from the gradebook, or an automatic score that differs, is refused.
    """
    with _gradebook(gradebook) as gb:
        try:
            subs = _submitted(gb, module.module)
        except Exception:     # nbgrader's MissingEntry: no such assignment
            raise ExportError(f"{gradebook}: no assignment {module.module!r}, so it is not the gradebook of "
                              f"{module.path}: move it away or pass --no-gradebook") from None
    by_hand = 0
    for g in module.grades:
        if g.points is None:
            continue
        sub = subs.get(g.student)
        differs = [] if sub is None else [
            cell for cell, value in columns.get(g.student, {}).items()
            if cell in sub.auto and value.strip() and abs(float(value) - sub.auto[cell]) > 1e-6]
        if sub is None or differs:
            what = ("has no submission of" if sub is None
                    else f"has other automatic scores ({', '.join(differs)}) for")
            raise ExportError(f"{gradebook} {what} {g.student}, graded in {module.path}: they are not of one "
                              "grading run (was one copied from elsewhere?); pass --no-gradebook to use "
                              "grades.csv alone")
        if sub.by_hand or abs(sub.score - g.points) > 1e-6:
            by_hand += 1
            g.points, g.why = sub.score, _pending(sub)
        elif sub.pending or sub.recheck:
            g.why = _pending(sub)
    if by_hand:
        extra = f"{by_hand} student(s)' hand grades read from {gradebook}"
        module.note = f"{module.note}; {extra}" if module.note else f"{module.path}: {extra}"


# ---------------------------------------------------------------- matching

@dataclass
class Roster:
    header: list[str]
    rows: list[list[str]]
    id_columns: list[int]           # columns that may hold a grader's id
    names: list[str]                # per row, the full name as the LMS shows it ("" when none)

    def column(self, name: str) -> int | None:
        for i, head in enumerate(self.header):
            if _norm(head) == _norm(name):
                return i
        return None


@dataclass
class Matching:
    rows: dict[str, int]            # grader's student id -> roster row index
    unmatched: list[Grade]
    notes: list[str]
    reasons: dict[str, str] = field(default_factory=dict)   # unmatched student id -> why, in words


def match(module: Module, roster: Roster, match_on: str | None = None,
          participants: dict[str, str] | None = None, key_column: int | None = None,
          by_name: bool = False, use_ids: bool = True) -> Matching:
    """Which roster row each student of `module` is, by ONE id column.

    `match_on`: the roster column to use (its header); else the id column holding most of the
    grader's ids (ties: refused, name one with `match_on`). `participants` (Moodle worksheet:
    participant id -> value of `key_column`) translates a grader's id first. `by_name`: students
    still unmatched are matched by a full name unique in the roster and in grades.csv (each noted).
    `use_ids` False: no id column is tried (unless `match_on` names one), names only.
    Roster values that occur twice in the column match nobody (noted). Two grader ids landing on one
    row are refused.
    """
    notes: list[str] = []
    ids = [g.student for g in module.grades]
    if participants is not None and key_column is not None:
        translated = {s: participants.get(_participant(s)) for s in ids}
        candidates = [key_column]
    else:
        translated = {s: s for s in ids}
        candidates = roster.id_columns if use_ids else []
    if match_on:
        col = roster.column(match_on)
        if col is None:
            raise ExportError(f"--match-on {match_on!r}: no such column in the roster "
                              f"({', '.join(roster.header)})")
        candidates = [col]

    def index(col: int) -> tuple[dict[str, int], set[str]]:
        seen: dict[str, int] = {}
        twice: set[str] = set()
        for i, row in enumerate(roster.rows):
            value = _norm(row[col]) if col < len(row) else ""
            if not value:
                continue
            if value in seen:
                twice.add(value)
            seen[value] = i
        return {v: i for v, i in seen.items() if v not in twice}, twice

    best, best_hits, tied = None, 0, []
    for col in candidates:
        lookup, _ = index(col)
        hits = sum(1 for s in ids if translated[s] and _norm(translated[s]) in lookup)
        if hits > best_hits:
            best, best_hits, tied = col, hits, []
        elif hits == best_hits and hits:
            tied.append(col)

    def mapping(col: int) -> dict[str, int]:
        lookup, _ = index(col)
        keys = {s: _norm(translated[s] or "") for s in ids}
        return {s: lookup[k] for s, k in keys.items() if k in lookup}

    if tied and any(mapping(c) != mapping(best) for c in tied):  # columns that agree are no ambiguity
        names = ", ".join(roster.header[c] for c in [best, *tied])
        raise ExportError(f"{module.module}: the grader's ids match equally many rows in {names}: "
                          "say which with --match-on")
    rows: dict[str, int] = {}
    reasons: dict[str, str] = {}
    for s in ids:   # why a student stays unmatched, unless a later step matches them
        if participants is not None and key_column is not None:
            field_name = roster.header[key_column]
            reasons[s] = (f"participant {_participant(s)} is not in the worksheet" if translated[s] is None
                          else f"the worksheet's {field_name} {translated[s]!r} is on no roster row")
        elif candidates:
            columns = (roster.header[best] if best is not None
                       else " or ".join(roster.header[c] for c in candidates))
            reasons[s] = f"no roster row has {s!r} in {columns}"
        else:
            reasons[s] = "a Moodle participant id (no worksheet given): matched by name only"
    if best is not None:
        lookup, twice = index(best)
        for s in ids:
            key = _norm(translated[s] or "")
            if key in lookup:
                rows[s] = lookup[key]
            elif key in twice:
                reasons[s] = f"{roster.header[best]} {translated[s]!r} is on several roster rows"
                notes.append(f"{module.module}: {s}: {roster.header[best]} {translated[s]!r} is on several "
                             "roster rows: not matched")
    if by_name:
        by_names: dict[str, list[int]] = {}
        for i, name in enumerate(roster.names):
            if name:
                by_names.setdefault(_norm(name), []).append(i)
        ours: dict[str, list[str]] = {}
        for g in module.grades:
            ours.setdefault(_norm(g.name), []).append(g.student)
        taken = set(rows.values())
        for g in module.grades:
            if g.student in rows or not g.name:
                continue
            found = by_names.get(_norm(g.name), [])
            if len(found) == 1 and len(ours[_norm(g.name)]) == 1 and found[0] not in taken:
                rows[g.student] = found[0]
                taken.add(found[0])
                notes.append(f"{module.module}: {g.student} matched BY NAME to {g.name!r}: check it")
            elif len(found) > 1 or len(ours[_norm(g.name)]) > 1:
                reasons[g.student] += f"; its name {g.name!r} is not unique"
                notes.append(f"{module.module}: {g.student}: name {g.name!r} is not unique: not matched")
            elif not found:
                reasons[g.student] += f"; no roster row is named {g.name!r}"
            else:
                reasons[g.student] += f"; the roster row named {g.name!r} is another student's"
    for g in module.grades:   # a second look: the name the LMS wrote in the download against its roster
        i = rows.get(g.student)
        named = g.name and g.name != g.student   # an id with no name read: nothing to compare
        if i is not None and named and roster.names[i] and _letters(g.name) != _letters(roster.names[i]):
            notes.append(f"{module.module}: {g.student} is {roster.names[i]!r} in the roster but "
                         f"{g.name!r} in grades.csv: check it is one person")
    owners: dict[int, list[str]] = {}
    for s, i in rows.items():
        owners.setdefault(i, []).append(s)
    clash = {i: ss for i, ss in owners.items() if len(ss) > 1}
    if clash:
        said = "; ".join(f"{', '.join(ss)} -> {roster.names[i] or roster.rows[i]!r}"
                         for i, ss in clash.items())
        raise ExportError(f"{module.module}: several students of grades.csv map to one roster row ({said}): "
                          "nothing written")
    unmatched = [g for g in module.grades if g.student not in rows]
    return Matching(rows, unmatched, notes, {g.student: reasons[g.student] for g in unmatched})


def _letters(name: str) -> str:
    """A name as LMS downloads shorten it: letters only (any script), accents dropped, case-folded
    ("Doe, Jane" -> doejane)."""
    return "".join(c for c in unicodedata.normalize("NFKD", name).casefold() if c.isalpha())


def _participant(student: str) -> str:
    found = PARTICIPANT.match(student.strip())
    return found.group(1) if found else student.strip()


def _points(value: float) -> str:
    """Points as both LMSs read them: a dot, no thousands separator, at most 2 decimals."""
    if not math.isfinite(value):
        raise ExportError(f"score {value!r} is not a number")
    return f"{round(value, 2):g}" if abs(value) < 1e15 else f"{value:.2f}"


def _assignment(module: str, header: list[str], start: int, given: dict[str, str]) -> int | None:
    """The roster column of `module`: named by --assignment, else the one title containing the module id."""
    if module in given:
        for i, head in enumerate(header):
            if head == given[module] or re.sub(r"\s*\(\d+\)$", "", head) == given[module]:
                return i
        return None
    found = [i for i in range(start, len(header)) if module in header[i]]
    if len(found) > 1:
        named = ", ".join(header[i] for i in found)
        raise ExportError(f"{module}: several roster columns name it ({named}): "
                          f"choose with --assignment {module}=TITLE")
    return found[0] if found else None


# ---------------------------------------------------------------- Canvas

def canvas_roster(path: Path) -> tuple[Roster, list[str], int, str]:
    """A Canvas gradebook export: its student rows, its Points Possible row, and where Section is."""
    rows, note = read_table(path)
    if not rows or "Student" not in rows[0][0] or len(rows[0]) < 2 or "ID" not in rows[0][1]:
        raise ExportError(f"{path}: not a Canvas gradebook export (the first columns must be Student, ID)")
    header = rows[0]
    section = next((i for i, h in enumerate(header) if h == "Section"), None)
    if section is None:
        raise ExportError(f"{path}: no Section column: Canvas's import needs the columns up to Section")
    points: list[str] = []
    students = []
    for row in rows[1:]:
        row = row + [""] * (len(header) - len(row))
        if "Points Possible" in row[0]:
            points = row
        elif all(re.fullmatch(r"(?i)\s*(muted|manual posting.*)?\s*", c) for c in row):
            continue
        else:
            students.append(row)
    ids = [i for i, h in enumerate(header[:section]) if h in CANVAS_ID_COLUMNS]
    return Roster(header, students, ids, [r[0] for r in students]), points, section, note


def export_canvas(modules: list[Module], roster_path: Path, assignment: dict[str, str],
                  match_on: str | None = None) -> tuple[list[list[str]], list[str], list[Grade]]:
    """Rows of a Canvas gradebook import: the roster's student columns, a Points Possible row, a
    column per module (the roster's own assignment column when it has one), every roster student."""
    roster, pp, section, note = canvas_roster(roster_path)
    notes = [note] if note else []
    header = roster.header[:section + 1]
    columns = []
    for m in modules:
        col = _assignment(m.module, roster.header, section + 1, assignment)
        title = roster.header[col] if col is not None else assignment.get(m.module, m.module)
        if col is not None and pp and pp[col]:
            if "read only" in pp[col].lower():
                raise ExportError(f"{m.module}: Canvas column {title!r} is read only")
            try:
                theirs = float(pp[col].replace(",", "."))
            except ValueError:
                theirs = None
            if theirs is not None and not math.isclose(theirs, m.max_points):
                raise ExportError(f"{m.module}: Canvas assignment {title!r} has {pp[col]} points possible, "
                                  f"grades.csv {m.max_points:g}: set it to {m.max_points:g} in Canvas first")
        if col is None:
            notes.append(f"{m.module}: no roster column names it: Canvas will create a new assignment "
                         f"{title!r} worth {m.max_points:g} points")
        columns.append(title)
    out = [header + columns, ["Points Possible"] + [""] * section + [_points(m.max_points) for m in modules]]
    cells = [[""] * len(modules) for _ in roster.rows]
    unmatched: list[Grade] = []
    for k, m in enumerate(modules):
        found = match(m, roster, match_on)
        notes += found.notes
        unmatched += [_tag(g, m, found.reasons.get(g.student, "")) for g in found.unmatched]
        for g in m.grades:
            if g.student in found.rows and g.points is not None:
                cells[found.rows[g.student]][k] = _points(g.points)
    for row, grades in zip(roster.rows, cells, strict=True):
        out.append(row[:section + 1] + grades)
    return out, notes, unmatched


def _tag(g: Grade, m: Module, reason: str = "") -> Grade:
    """`g` as listed among the students not matched: its module, its status, and why it was not matched."""
    return Grade(g.student, g.name, g.points, f"{m.module}: " + (g.why or "graded")
                 + (f"; not matched: {reason}" if reason else ""))


# ---------------------------------------------------------------- Moodle

def moodle_roster(paths: list[Path]) -> tuple[Roster, list[str]]:
    """One or more Moodle exports (gradebook CSV, participants, grading worksheet) as one roster."""
    header: list[str] = []
    rows: list[list[str]] = []
    notes = []
    for path in paths:
        table, note = read_table(path)
        notes += [note] if note else []
        if not table:
            raise ExportError(f"{path}: empty")
        head = table[0]
        for name in head:
            if name not in header:
                header.append(name)
        for row in table[1:]:
            values = dict(zip(head, row, strict=False))  # a short row: its missing cells are empty
            rows.append([values.get(h, "") for h in header])
    rows = [r + [""] * (len(header) - len(r)) for r in rows]
    roster = Roster(header, rows, [], [])
    roster.id_columns = [c for c in (roster.column(n) for n in MOODLE_ID_COLUMNS) if c is not None]
    full, first, last = roster.column("Full name"), roster.column("First name"), roster.column("Last name")
    for r in rows:
        if full is not None and r[full]:
            roster.names.append(r[full])
        elif first is not None and last is not None:
            roster.names.append(f"{r[first]} {r[last]}".strip())
        else:
            roster.names.append("")
    return roster, notes


def worksheet_map(path: Path, roster: Roster) -> tuple[dict[str, str], int]:
    """A Moodle offline grading worksheet: participant id -> a user field it shares with the roster
    (Email address, else Username, else ID number), and that field's roster column."""
    table, _ = read_table(path)
    if not table:
        raise ExportError(f"{path}: empty")
    head = [_norm(h) for h in table[0]]
    shared = [n for n in MOODLE_OUT_IDS if _norm(n) in head and roster.column(n) is not None]
    if not shared:
        raise ExportError(f"{path}: shares none of {', '.join(MOODLE_OUT_IDS)} with the roster, so its "
                          f"participants cannot be found there (columns: {', '.join(table[0])})")
    ident = head.index("identifier") if "identifier" in head else 0
    col = head.index(_norm(shared[0]))
    return ({_participant(r[ident]): r[col] for r in table[1:] if len(r) > max(ident, col)},
            roster.column(shared[0]))


def _decimal(text: str) -> float | None:
    """A number as Moodle's worksheet writes it in the site's language: "6.00", "10,00", "1.000,50"."""
    text = re.sub(r"[\s\u00a0\u202f']", "", text)
    if "," in text and "." in text:   # the last one is the decimal separator, the other groups thousands
        text = text.replace("." if text.rfind(",") > text.rfind(".") else ",", "")
    try:
        return float(text.replace(",", "."))
    except ValueError:
        return None


def check_maximum(module: Module, header: list[str], rows: list[list[str]], where: str) -> None:
    """Refuse when a Moodle grading worksheet's "Maximum Grade" is not grades.csv's maximum: Moodle would
    record 6 points out of its 10 (as export_canvas refuses another Points Possible)."""
    col = next((i for i, h in enumerate(header) if _norm(h) == "maximum grade"), None)
    if col is None:
        return
    given = {r[col] for r in rows if col < len(r) and r[col] and r[col] != "-"}
    for raw in sorted(given):
        value = _decimal(raw)
        if value is None:
            raise ExportError(f"{module.module}: {where}'s Maximum Grade {raw!r} is not a number (a scale?): "
                              f"grades.csv gives points out of {module.max_points:g}")
        if not math.isclose(value, module.max_points):
            raise ExportError(f"{module.module}: {where} has Maximum Grade {raw}, grades.csv "
                              f"{module.max_points:g}: set the assignment's maximum grade to "
                              f"{module.max_points:g} in Moodle first")


def export_moodle(modules: list[Module], roster_paths: list[Path], assignment: dict[str, str],
                  worksheets: dict[str, Path], match_on: str | None = None, lms_id: str | None = None,
                  by_name: bool = True) -> tuple[list[list[str]], list[str], list[Grade]]:
    """Rows of a Moodle "Import grades from CSV" file: the id column, then a column per module.

    Only roster students with a grade in at least one module are written (see the module docstring:
    a blank cell clears a grade in Moodle, and an unknown user aborts the whole import).
    """
    roster, notes = moodle_roster(roster_paths)
    if lms_id:
        key = roster.column(lms_id)
        if key is None:
            raise ExportError(f"--lms-id {lms_id!r}: no such roster column ({', '.join(roster.header)})")
    else:
        key = next((c for c in (roster.column(n) for n in MOODLE_OUT_IDS) if c is not None), None)
        if key is None:
            raise ExportError("the roster has none of the columns Moodle's import maps users by "
                              f"({', '.join(MOODLE_OUT_IDS)}): name one with --lms-id")
    if len(modules) == 1 and not worksheets:
        ident = roster.column("Identifier")
        if ident is not None and any(PARTICIPANT.match(r[ident]) for r in roster.rows):
            worksheets = {modules[0].module: None}   # the roster is this module's worksheet
    cells: dict[int, list[str]] = {}
    unmatched: list[Grade] = []
    titles = [assignment.get(m.module, m.module) for m in modules]
    for k, m in enumerate(modules):
        participants, join = None, None
        if m.module in worksheets:
            path = worksheets[m.module]
            if path is None:
                ident = roster.column("Identifier")
                participants = {_participant(r[ident]): r[key] for r in roster.rows if r[ident]}
                join = key
                check_maximum(m, roster.header, [r for r in roster.rows if r[ident]],
                              "the roster (its worksheet)")
            else:
                participants, join = worksheet_map(path, roster)
                table, _ = read_table(path)
                check_maximum(m, table[0], table[1:], f"the worksheet {path}")
        # Moodle's download numbers are participant ids of one assignment: a number that happens to be
        # someone's ID number is another person, so bare numbers are matched by the worksheet or by name
        numeric = participants is None and all(g.student.isdigit() for g in m.grades)
        if numeric and not match_on:
            notes.append(f"{m.module}: its ids are Moodle participant ids: without --worksheet they are "
                         "matched by name only (or name the column holding them with --match-on)")
        found = match(m, roster, match_on, participants, join, by_name, use_ids=not numeric)
        notes += found.notes
        unmatched += [_tag(g, m, found.reasons.get(g.student, "")) for g in found.unmatched]
        for g in m.grades:
            i = found.rows.get(g.student)
            if i is None:
                continue
            if not roster.rows[i][key]:
                why = f"its roster row has no {roster.header[key]}, which the file identifies students by"
                unmatched.append(_tag(g, m, why))
                continue
            row = cells.setdefault(i, [""] * len(modules))
            if g.points is not None:
                row[k] = _points(g.points)
    out = [[roster.header[key], *titles]]
    written = set()
    for i, grades in sorted(cells.items()):
        value = roster.rows[i][key]
        if not any(grades) or value in written:
            continue
        written.add(value)
        if not all(grades):
            empty = ", ".join(t for t, c in zip(titles, grades, strict=True) if not c)
            notes.append(f"{value}: no grade in {empty}: "
                         "Moodle reads that blank as 'no grade' and clears what the item holds; "
                         "import that module's column only if that is not wanted")
        out.append([value, *grades])
    notes.append("Moodle: on the import page map " + repr(roster.header[key]) + " to the user field of that "
                 "name and each module column to its grade item, whose maximum must be "
                 + ", ".join(f"{m.max_points:g} ({t})" for m, t in zip(modules, titles, strict=True)))
    return out, notes, unmatched


def moodle_xml(rows: list[list[str]]) -> str:
    """The Moodle XML import document for the rows `export_moodle` wrote with the ID number as the
    identifier: one <result> per student and module that has a grade (module titles: item ID numbers)."""
    items = rows[0][1:]
    out = ['<?xml version="1.0" encoding="UTF-8"?>', "<results>"]
    for row in rows[1:]:
        for item, score in zip(items, row[1:], strict=True):
            if score:
                out += ["  <result>", f"    <assignment>{escape(item)}</assignment>",
                        f"    <student>{escape(row[0])}</student>", f"    <score>{score}</score>",
                        "  </result>"]
    return "\n".join(out + ["</results>", ""])


# ---------------------------------------------------------------- command line

def write_csv(path: Path, rows: list[list[str]]) -> None:
    """UTF-8 without byte-order mark, comma-separated, quoted where a cell needs it (RFC 4180)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\r\n").writerows(rows)


def map_ids(modules: list[Module], path: Path) -> list[str]:
    """Replace each student's grader id by their LMS id from `path` (``--ids``): a CSV, header row first,
    whose first column is the grader's id and whose second the LMS's (e.g. ``account,email`` for a lab
    hub, whose accounts are not LMS identities). A student not in it keeps their own id (and is listed if
    that matches no roster row); an id given twice with two values, or a file without two columns, is
    refused. Returns notes for the student not found in it."""
    rows, _ = read_table(path)
    if not rows or len(rows[0]) < 2:
        raise ExportError(f"--ids {path}: needs a header row and two columns (grader id, LMS id)")
    ids: dict[str, str] = {}
    for row in rows[1:]:
        if len(row) < 2 or not row[0] or not row[1]:
            raise ExportError(f"--ids {path}: a row without both ids: {row!r}")
        if ids.setdefault(row[0], row[1]) != row[1]:
            raise ExportError(f"--ids {path}: {row[0]!r} is given two LMS ids ({ids[row[0]]!r}, {row[1]!r})")
    missing = set()
    for m in modules:
        for g in m.grades:
            if g.student in ids:
                g.name = g.name if g.name and g.name != g.student else ""
                g.student = ids[g.student]
            else:
                missing.add(g.student)
    return [f"--ids {path} has no line for {', '.join(sorted(missing))} (matched by their own id)"] \
        if missing else []


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values or []:
        module, sep, rest = value.partition("=")
        if not sep or not module or not rest:
            raise ExportError(f"{flag} {value!r}: write MODULE=VALUE")
        out[module] = rest
    return out


def _grades_arg(value: str) -> tuple[str | None, Path]:
    """``PATH`` or ``MODULE=PATH`` (a module id has no ``/``; a file of that very name is taken as a path)."""
    module, sep, rest = value.partition("=")
    if sep and module and rest and "/" not in module and not Path(value).exists():
        return module, Path(rest)
    return None, Path(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autograders.export",
        description="Write a Canvas or Moodle gradebook import file from grades.csv files or an nbgrader "
                    "gradebook.db (one column per module).",
        epilog="Exit status: 0 written; 2 refused (nothing written); 3 written, but some students of "
               "grades.csv were not matched to the roster (listed on stderr with why; --allow-unmatched "
               "makes that 0). A grades.csv may be given as MODULE=PATH (a copy outside grading/<module>/). "
               "The hand grades given in formgrader are read from the gradebook.db beside a grades.csv. "
               "A lab hub's gradebook (~sysml-instructor/sysml/gradebook.db) gives every assignment with "
               "autograded submissions, or MODULE=PATH one; map its accounts to LMS ids with --ids.")
    parser.add_argument("lms", choices=["canvas", "moodle", "moodle-xml"],
                        help="moodle: Import grades from CSV; moodle-xml: the XML file import (ID numbers)")
    parser.add_argument("grades", nargs="+", help="grading/<module>/grades.csv, one per module; MODULE=PATH "
                                                  "names the module of a copy kept elsewhere; or an nbgrader "
                                                  "gradebook.db (MODULE=PATH: that assignment only)")
    parser.add_argument("--roster", action="append", type=Path, required=True,
                        help="the LMS's own export (Canvas gradebook CSV; Moodle grades CSV, participants "
                             "or grading worksheet); Moodle takes several")
    parser.add_argument("--out", type=Path, required=True, help="the file to write (CSV)")
    parser.add_argument("--assignment", action="append", metavar="MODULE=TITLE",
                        help="the LMS column for a module (default: the roster column whose title holds the "
                             "module id, else a new column named by the module)")
    parser.add_argument("--match-on", help="roster column holding the grader's student ids (default: the id "
                                           "column that matches most)")
    parser.add_argument("--worksheet", action="append", metavar="MODULE=FILE",
                        help="Moodle: that module's offline grading worksheet (participant ids)")
    parser.add_argument("--lms-id", help="Moodle: the roster column to write as the user identifier "
                                         "(default: Email address, else Username, else ID number)")
    parser.add_argument("--no-names", action="store_true", help="Moodle: never match by full name")
    parser.add_argument("--ids", type=Path, metavar="FILE",
                        help="a CSV whose first column is the grader's student id (a lab hub's account name, "
                             "say) and whose second is that student's id in the LMS (an email, login or LMS "
                             "id, as in the roster): grades are matched by the second")
    parser.add_argument("--no-gradebook", action="store_true",
                        help="grades.csv alone: leave out the hand grades in the gradebook.db beside it")
    parser.add_argument("--allow-unmatched", action="store_true")
    args = parser.parse_args(argv)
    try:
        assignment = _pairs(args.assignment, "--assignment")
        modules = []
        for module, path in map(_grades_arg, args.grades):
            if path.suffix == ".db":
                modules += read_gradebook(path, module)
            else:
                modules.append(read_grades(path, module, set(assignment), not args.no_gradebook))
        id_notes = map_ids(modules, args.ids) if args.ids else []
        seen = [m.module for m in modules]
        if len(set(seen)) != len(seen):
            raise ExportError(f"one module given twice ({', '.join(seen)})")
        if args.lms == "canvas":
            if len(args.roster) != 1:
                raise ExportError("canvas takes one --roster (the gradebook export)")
            rows, notes, unmatched = export_canvas(modules, args.roster[0], assignment, args.match_on)
        else:
            worksheets = {k: Path(v) for k, v in _pairs(args.worksheet, "--worksheet").items()}
            lms_id = args.lms_id or ("ID number" if args.lms == "moodle-xml" else None)
            rows, notes, unmatched = export_moodle(modules, args.roster, assignment, worksheets,
                                                   args.match_on, lms_id, not args.no_names)
            if args.lms == "moodle-xml":
                notes = [n for n in notes if not n.startswith("Moodle: on the import page")]
                notes.append("Moodle XML: each grade item's ID number must be "
                             + ", ".join(repr(t) for t in rows[0][1:]) + " (--assignment MODULE=IDNUMBER)")
    except ExportError as error:
        print(f"export: {error.message}", file=sys.stderr)
        return 2
    if args.lms == "moodle-xml":
        args.out.write_text(moodle_xml(rows), encoding="utf-8")
    else:
        write_csv(args.out, rows)
    for note in [m.note for m in modules if m.note] + id_notes + notes:
        print(f"note: {note}", file=sys.stderr)
    lost = {(g.why.split(":")[0], g.student) for g in unmatched}   # listed below as not matched
    ungraded = [(m.module, g) for m in modules for g in m.grades
                if g.points is None and (m.module, g.student) not in lost]
    for module, g in ungraded:
        print(f"no grade (cell left empty): {module}: {g.student} {g.name}: {g.why}", file=sys.stderr)
    for module, g in [(m.module, g) for m in modules for g in m.grades if g.points is not None and g.why]:
        print(f"graded, but: {module}: {g.student}: {g.why}", file=sys.stderr)
    for g in unmatched:
        print(f"NOT MATCHED TO THE ROSTER (not written): {g.student} {g.name} ({g.why})", file=sys.stderr)
    print(f"wrote {args.out}: {len(rows) - 1 - (args.lms == 'canvas')} student rows, "
          f"{len(modules)} module column(s); {len(unmatched)} graded student(s) not matched to the "
          "roster (not written)", file=sys.stderr)
    return 3 if unmatched and not args.allow_unmatched else 0


if __name__ == "__main__":
    sys.exit(main())
