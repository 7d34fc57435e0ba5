"""Grades out to Canvas and Moodle (autograders/export.py): golden files in the vendors' import formats.

The rosters below are written as the LMSs export them (column names and rows as
autograders/export.py's docstring cites from Canvas's and Moodle's importers); the grades.csv
files are written by the grader's own writer (report.write_csv). Each test names the mistake it
catches: a student's grade in another's row, a missing grade written as 0, a name with a comma
or quote breaking the CSV, a student not in the roster dropped without a word.
"""

import csv
import datetime
import functools
import io
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from autograders import export, report

R = report.Result


def grades_csv(folder: Path, module: str, results: list) -> Path:
    out = folder / "grading" / module
    out.mkdir(parents=True, exist_ok=True)
    report.write_csv(out / "grades.csv", results)
    return out / "grades.csv"


def rows_of(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))


# Canvas: Grades > Export. Jane's SIS User ID is Sam's Canvas ID, to catch matching on "any id column".
CANVAS_ROSTER = (
    'Student,ID,SIS User ID,SIS Login ID,Section,Lab 0 00_orientation (9001),Quiz 1 (9002),'
    'Current Score,Final Score\r\n'
    '    Points Possible,,,,,6.00,10.00,(read only),(read only)\r\n'
    '"Doe, Jane",12345,12346,jdoe,Lab A,,8.00,80.00,80.00\r\n'
    '"O\'Brien, ""Sam""",12346,S-77,sobrien,Lab A,,,0.00,0.00\r\n'
    '"Müller, Jürgen",12347,S-78,jmueller,Lab B,,9.00,90.00,90.00\r\n'
    '"王, 小明",12348,S-79,xwang,Lab B,,,,\r\n'
    '"Petrova, Анна",12350,S-80,apetrova,Lab B,,,,\r\n'
)

CANVAS_CLASS = [
    R("12345", "graded", score=6, max_score=6, name="doejane", cells={"a": 6}),
    R("12346", "graded", score=0, max_score=6, name="obriensam", cells={"a": 0}),   # graded 0: a real 0
    R("12347", "held for review", score=6, max_score=6, name="mullerjurgen", review=["exec"]),
    R("12350", "not gradable", score=0, max_score=6, name="petrovaанна", detail="an empty file"),
    R("99999", "graded", score=4.5, max_score=6, name="latejoiner", cells={"a": 4.5}),  # not in Canvas
]

# What Canvas's importer reads: the student columns up to Section as exported, a Points Possible
# row, the lab's own column "title (id)"; no grade is blank, never 0; Sam's graded 0 is 0.
CANVAS_GOLDEN = [
    ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "Lab 0 00_orientation (9001)"],
    ["Points Possible", "", "", "", "", "6"],
    ["Doe, Jane", "12345", "12346", "jdoe", "Lab A", "6"],
    ['O\'Brien, "Sam"', "12346", "S-77", "sobrien", "Lab A", "0"],
    ["Müller, Jürgen", "12347", "S-78", "jmueller", "Lab B", ""],
    ["王, 小明", "12348", "S-79", "xwang", "Lab B", ""],
    ["Petrova, Анна", "12350", "S-80", "apetrova", "Lab B", ""],
]


@pytest.fixture
def canvas(tmp_path):
    roster = tmp_path / "canvas_export.csv"
    roster.write_bytes(b"\xef\xbb\xbf" + CANVAS_ROSTER.encode())   # Excel-saved: UTF-8 with BOM
    return roster, grades_csv(tmp_path, "00_orientation", CANVAS_CLASS), tmp_path / "canvas_import.csv"


def test_canvas_golden(canvas, capsys):
    roster, grades, out = canvas
    code = export.main(["canvas", str(grades), "--roster", str(roster), "--out", str(out)])
    assert rows_of(out) == CANVAS_GOLDEN
    err = capsys.readouterr().err
    # the student Canvas does not know is listed, and the exit status says so
    assert code == 3 and "NOT MATCHED TO THE ROSTER" in err
    assert "99999 latejoiner (00_orientation: graded; not matched: no roster row has '99999' in ID)" in err
    assert "12347" in err and "held for review" in err and "12350" in err and "not gradable" in err
    assert "check it is one person" not in err   # doejane is "Doe, Jane", mullerjurgen "Müller, Jürgen"
    # raw bytes: comma and quote names quoted as RFC 4180 says, no BOM written, CRLF lines
    raw = out.read_bytes()
    assert raw.startswith(b"Student,ID,") and b'"Doe, Jane",12345' in raw
    assert b'"O\'Brien, ""Sam""",12346' in raw and raw.endswith(b"\r\n")
    assert export.main(["canvas", str(grades), "--roster", str(roster), "--out", str(out),
                        "--allow-unmatched"]) == 0


def test_canvas_what_the_importer_reads(canvas):
    """Read the written file the way lib/gradebook_importer.rb does: header checks, Points Possible row,
    student by the ID column, comma separator chosen over semicolon."""
    roster, grades, out = canvas
    export.main(["canvas", str(grades), "--roster", str(roster), "--out", str(out)])
    lines = out.read_text(encoding="utf-8").splitlines()
    by_comma = [len(next(csv.reader([line]))) for line in lines[:3]]
    by_semicolon = [len(next(csv.reader([line], delimiter=";"))) for line in lines[:3]]
    assert len(set(by_comma)) == 1 and not (len(set(by_semicolon)) == 1 and by_semicolon[0] > by_comma[0])
    rows = rows_of(out)
    assert "Student" in rows[0][0] and "ID" in rows[0][1] and rows[0][4] == "Section"
    assert "Points Possible" in rows[1][0]
    by_id = {r[1]: r[5] for r in rows[2:]}
    assert by_id == {"12345": "6", "12346": "0", "12347": "", "12348": "", "12350": ""}


def test_canvas_several_modules_and_new_column(tmp_path):
    roster = tmp_path / "r.csv"
    roster.write_text(CANVAS_ROSTER, encoding="utf-8")
    a = grades_csv(tmp_path, "00_orientation", CANVAS_CLASS[:2])
    b = grades_csv(tmp_path, "01_edge", [R("12348", "graded", score=7.25, max_score=20, cells={"x": 7.25}),
                                         R("12345", "timed out", score=12, max_score=20, cells={"x": 12})])
    rows, notes, unmatched = export.export_canvas([export.read_grades(a), export.read_grades(b)], roster, {})
    assert rows[0][5:] == ["Lab 0 00_orientation (9001)", "01_edge"]     # no Canvas column: a new one
    assert rows[1][5:] == ["6", "20"]                                     # its points from the file
    assert {r[1]: r[5:] for r in rows[2:]}["12348"] == ["", "7.25"]
    assert {r[1]: r[5:] for r in rows[2:]}["12345"] == ["6", "12"]
    assert any("new assignment" in n for n in notes) and not unmatched


def test_canvas_refuses_other_points_possible(tmp_path):
    roster = tmp_path / "r.csv"
    roster.write_text(CANVAS_ROSTER.replace(",,,,,6.00,", ",,,,,10.00,"), encoding="utf-8")
    grades = grades_csv(tmp_path, "00_orientation", CANVAS_CLASS[:1])
    with pytest.raises(export.ExportError, match="10.00 points possible"):
        export.export_canvas([export.read_grades(grades)], roster, {})


def test_canvas_name_disagreeing_with_id_is_noted(tmp_path):
    """Right id, another name: the file is still written by id (ids decide), and the instructor is told."""
    roster = tmp_path / "r.csv"
    roster.write_text(CANVAS_ROSTER, encoding="utf-8")
    bob = R("12345", "graded", score=6, max_score=6, name="smithbob", cells={"a": 6})
    grades = grades_csv(tmp_path, "00_orientation", [bob])
    rows, notes, _ = export.export_canvas([export.read_grades(grades)], roster, {})
    assert rows[2][:2] + rows[2][5:] == ["Doe, Jane", "12345", "6"]
    assert any("'Doe, Jane' in the roster but 'smithbob'" in n for n in notes)


def test_canvas_ambiguous_id_columns_refused(tmp_path):
    """Ids that match as many rows in two columns, differently, are a question for the instructor."""
    roster = tmp_path / "r.csv"
    roster.write_text("Student,ID,SIS User ID,SIS Login ID,Section\r\nA,1,2,a,S\r\nB,2,1,b,S\r\n",
                      encoding="utf-8")
    grades = grades_csv(tmp_path, "00_orientation", [R("1", "graded", score=1, max_score=6, cells={"a": 1})])
    with pytest.raises(export.ExportError, match="--match-on"):
        export.export_canvas([export.read_grades(grades)], roster, {})
    rows, _, _ = export.export_canvas([export.read_grades(grades)], roster, {}, match_on="SIS User ID")
    assert rows[2:] == [["A", "1", "2", "a", "S", ""], ["B", "2", "1", "b", "S", "1"]]


# Moodle: the assignment's offline grading worksheet (participant ids) and "Export grades to CSV".
MOODLE_WORKSHEET = (
    "Identifier,Full name,Email address,Status,Grade,Maximum Grade,Grade can be changed,"
    "Last modified (submission),Last modified (grade),Feedback comments\n"
    "Participant 4711,Jane Doe,jane@example.org,Submitted for grading,,6.00,Yes,\"1 May 2026, 10:22 AM\",-,\n"
    "Participant 4712,\"Sam O'Brien, Jr.\",sam@example.org,Submitted for grading,,6.00,Yes,-,-,\n"
    "Participant 4713,Jürgen Müller,jm@example.org,Submitted for grading,,6.00,Yes,-,-,\n"
    "Participant 4714,王小明,xw@example.org,No submission,,6.00,Yes,-,-,\n"
)
MOODLE_GRADES_EXPORT = (
    "First name,Last name,ID number,Institution,Department,Email address,Assignment: Lab 0 (Real),"
    "Last downloaded from this course\n"
    "Jane,Doe,S-1,,,jane@example.org,-,1780000000\n"
    "Sam,\"O'Brien, Jr.\",S-2,,,sam@example.org,-,1780000000\n"
    "Jürgen,Müller,S-3,,,jm@example.org,-,1780000000\n"
    "小明,王,S-4,,,xw@example.org,-,1780000000\n"
)
# ids as collect.py reads Moodle's download: "<Full name>_<participant id>_assignsubmission_file_"
MOODLE_CLASS = [
    R("4712", "graded", score=0, max_score=6, name="Sam O'Brien, Jr.", cells={"a": 0}),
    R("4711", "graded", score=5.5, max_score=6, name="Jane Doe", cells={"a": 5.5}),
    R("4713", "grading failed", score=0, max_score=6, name="Jürgen Müller", detail="the kernel died"),
    R("5000", "graded", score=6, max_score=6, name="Late Joiner", cells={"a": 6}),
]


def test_moodle_worksheet_golden(tmp_path, capsys):
    sheet = tmp_path / "worksheet.csv"
    sheet.write_text(MOODLE_WORKSHEET, encoding="utf-8")
    grades = grades_csv(tmp_path, "00_orientation", MOODLE_CLASS)
    out = tmp_path / "moodle.csv"
    code = export.main(["moodle", str(grades), "--roster", str(sheet), "--out", str(out), "--no-names"])
    # only students with a grade: a blank would clear Moodle's grade; the failed one is not a 0
    assert rows_of(out) == [["Email address", "00_orientation"],
                            ["jane@example.org", "5.5"], ["sam@example.org", "0"]]
    err = capsys.readouterr().err
    assert code == 3 and "NOT MATCHED TO THE ROSTER" in err and "4713" in err
    assert ("5000 Late Joiner (00_orientation: graded; not matched: participant 5000 is not in the worksheet)"
            in err)


def test_moodle_worksheet_with_gradebook_roster(tmp_path):
    """Participant ids through the worksheet, written as the gradebook export's emails; two modules."""
    sheet = tmp_path / "worksheet.csv"
    sheet.write_text(MOODLE_WORKSHEET, encoding="utf-8")
    roster = tmp_path / "grades_export.csv"
    roster.write_text(MOODLE_GRADES_EXPORT, encoding="utf-8-sig")
    a = export.read_grades(grades_csv(tmp_path, "00_orientation", MOODLE_CLASS[:3]))
    # the second module's grader read emails (an --id-regex): matched on the Email address column
    edge = [R("xw@example.org", "graded", score=17, max_score=20, cells={"x": 17})]
    b = export.read_grades(grades_csv(tmp_path, "01_edge", edge))
    rows, notes, unmatched = export.export_moodle([a, b], [roster], {"01_edge": "Lab 1"},
                                                  {"00_orientation": sheet}, by_name=False)
    assert rows == [["Email address", "00_orientation", "Lab 1"], ["jane@example.org", "5.5", ""],
                    ["sam@example.org", "0", ""], ["xw@example.org", "", "17"]]
    assert not unmatched and any("clears" in n for n in notes)


def test_moodle_by_unique_name(tmp_path):
    """No worksheet: a participant id matches no Moodle column, so names that are unique both sides match
    (and say so); a name twice in the class matches nobody."""
    roster = tmp_path / "grades_export.csv"
    twin = "Jane,Doe,S-9,,,jane2@example.org,-,1780000000\n"
    # an ID number that is also a participant id (4712 is Sam's): a different person, never matched on it
    roster.write_text(MOODLE_GRADES_EXPORT.replace("S-4", "4712") + twin, encoding="utf-8")
    grades = export.read_grades(grades_csv(tmp_path, "00_orientation", MOODLE_CLASS))
    rows, notes, unmatched = export.export_moodle([grades], [roster], {}, {})
    assert rows[1:] == [["sam@example.org", "0"]]
    assert any("BY NAME" in n and "4712" in n for n in notes)
    assert {g.student for g in unmatched} == {"4711", "5000"}   # Jürgen matched, has no grade
    rows, _, unmatched = export.export_moodle([grades], [roster], {}, {}, by_name=False)
    assert rows[1:] == [] and len(unmatched) == 4


def test_two_grades_for_one_row_refused(tmp_path):
    roster = tmp_path / "r.csv"
    roster.write_text(MOODLE_GRADES_EXPORT, encoding="utf-8")
    grades = export.read_grades(grades_csv(tmp_path, "00_orientation", [
        R("jane@example.org", "graded", score=1, max_score=6, cells={"a": 1}),
        R("JANE@example.org ", "graded", score=6, max_score=6, cells={"a": 6})]))
    with pytest.raises(export.ExportError, match="one roster row"):
        export.export_moodle([grades], [roster], {}, {})


def test_cp1252_roster_and_semicolons(tmp_path):
    """A roster re-saved by Excel on a western Windows: Windows-1252, semicolons, decimal commas."""
    roster = tmp_path / "r.csv"
    roster.write_bytes("Student;ID;SIS User ID;SIS Login ID;Section\r\n"
                       "\"Müller; Jürgen\";12347;S-78;jm;B\r\n".encode("cp1252"))
    grades = export.read_grades(grades_csv(tmp_path, "00_orientation", [
        R("12347", "graded", score=2.5, max_score=6, cells={"a": 2.5})]))
    rows, notes, _ = export.export_canvas([grades], roster, {})
    assert rows[2] == ["Müller; Jürgen", "12347", "S-78", "jm", "B", "2.5"]
    assert any("Windows-1252" in n for n in notes)


def test_moodle_xml(tmp_path):
    """Moodle's XML import: users by ID number, items by theirs, only results with a score, escaped."""
    sheet = tmp_path / "worksheet.csv"
    sheet.write_text(MOODLE_WORKSHEET, encoding="utf-8")
    roster = tmp_path / "grades_export.csv"
    roster.write_text(MOODLE_GRADES_EXPORT.replace("S-2,", "S-2&<x>,"), encoding="utf-8")
    grades = grades_csv(tmp_path, "00_orientation", MOODLE_CLASS)
    sam = R("sam@example.org", "graded", score=3, max_score=20, cells={"x": 3})   # an --id-regex read emails
    edge = grades_csv(tmp_path, "01_edge", [sam])
    out = tmp_path / "grades.xml"
    code = export.main(["moodle-xml", str(grades), str(edge), "--roster", str(roster), "--worksheet",
                        f"00_orientation={sheet}", "--assignment", "00_orientation=lab0", "--out", str(out),
                        "--no-names"])
    assert code == 3   # 5000 is not in Moodle
    results = [(r.findtext("assignment"), r.findtext("student"), r.findtext("score"))
               for r in ElementTree.parse(out).getroot()]
    # Jane has no 01_edge grade: no <result> at all (one without <score> would clear Moodle's grade)
    assert results == [("lab0", "S-1", "5.5"), ("lab0", "S-2&<x>", "0"), ("01_edge", "S-2&<x>", "3")]


def test_moodle_participant_ids_without_worksheet_say_why_not_matched(tmp_path, capsys):
    """Every student is in the roster, but bare participant ids with no worksheet match by name only: the list
    says "not matched" and why, never "not in the roster" (review 24b, 12)."""
    roster = tmp_path / "grades_export.csv"
    roster.write_text(MOODLE_GRADES_EXPORT, encoding="utf-8")
    nameless = [R("4711", "graded", score=5, max_score=6, cells={"a": 5})]
    grades = grades_csv(tmp_path, "00_orientation", nameless)
    code = export.main(["moodle", str(grades), "--roster", str(roster), "--out", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err
    assert code == 3 and "NOT IN THE ROSTER" not in err
    assert "not matched: a Moodle participant id (no worksheet given): matched by name only" in err


def real_cells(module: str) -> dict[str, float]:
    """A student's exercise points as grade.py writes them: the module's own grade ids."""
    return {name: 1.0 for name in export.module_exercises()[module]}


def test_copied_grades_csv_is_named_by_its_exercise_columns(tmp_path, canvas, capsys):
    """grades.csv copied to Downloads: the folder says "Downloads", its exercise columns say 00_orientation,
    so the roster's own Lab 0 column gets the grades (not a new Canvas assignment "Downloads")."""
    roster, _, out = canvas
    copy = tmp_path / "Downloads" / "grades.csv"
    copy.parent.mkdir()
    report.write_csv(copy, [R("12345", "graded", score=4, max_score=6, cells=real_cells("00_orientation"))])
    assert export.main(["canvas", str(copy), "--roster", str(roster), "--out", str(out)]) == 0
    assert rows_of(out)[0][5:] == ["Lab 0 00_orientation (9001)"] and rows_of(out)[2][5] == "4"
    assert "read from its exercise columns" in capsys.readouterr().err
    # a folder naming another module than the columns: refused
    wrong = grades_csv(tmp_path, "01_edge", [R("12345", "graded", score=4, max_score=6,
                                               cells=real_cells("00_orientation"))])
    with pytest.raises(export.ExportError, match="those of 00_orientation, not 01_edge"):
        export.read_grades(wrong)


def test_unknown_module_name_refused_unless_given(tmp_path, canvas, capsys):
    """No exercise columns (every student held or ungraded) and a folder that is no module id: refused
    (exit 2, nothing written) until MODULE=PATH names it."""
    roster, _, out = canvas
    copy = tmp_path / "ex" / "grades.csv"
    copy.parent.mkdir()
    report.write_csv(copy, [R("12350", "not gradable", score=0, max_score=6, detail="an empty file")])
    assert export.main(["canvas", str(copy), "--roster", str(roster), "--out", str(out)]) == 2
    assert "which module?" in capsys.readouterr().err and not out.exists()
    assert export.main(["canvas", f"00_orientation={copy}", "--roster", str(roster), "--out", str(out)]) == 0
    assert rows_of(out)[0][5:] == ["Lab 0 00_orientation (9001)"]


@pytest.mark.parametrize("content", ["", "student,name,score,max_score,percent,status,detail\n"])
def test_empty_grades_csv_refused(tmp_path, canvas, capsys, content):
    """An empty or header-only grades.csv (an unfinished run) is refused, not exported as a 0-point column."""
    roster, _, out = canvas
    grades = tmp_path / "grading" / "00_orientation" / "grades.csv"   # the fixture's folder
    grades.write_text(content)
    assert export.main(["canvas", str(grades), "--roster", str(roster), "--out", str(out)]) == 2
    assert "no grades in" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("maximum", ["10,00", "10.00", "1.000,00"])
def test_moodle_worksheet_other_maximum_refused(tmp_path, maximum):
    """The worksheet's Maximum Grade (comma or dot) must be grades.csv's, else Moodle records 6 of 10."""
    sheet = tmp_path / "worksheet.csv"
    sheet.write_text(MOODLE_WORKSHEET.replace("6.00", f'"{maximum}"'), encoding="utf-8")
    grades = export.read_grades(grades_csv(tmp_path, "00_orientation", MOODLE_CLASS))
    with pytest.raises(export.ExportError, match="Maximum Grade .* grades.csv 6: set"):
        export.export_moodle([grades], [sheet], {}, {})        # the worksheet as the roster
    roster = tmp_path / "grades_export.csv"
    roster.write_text(MOODLE_GRADES_EXPORT, encoding="utf-8")
    with pytest.raises(export.ExportError, match="Maximum Grade"):
        export.export_moodle([grades], [roster], {}, {"00_orientation": sheet})
    sheet.write_text(MOODLE_WORKSHEET.replace("6.00", '"6,00"'), encoding="utf-8")
    rows, _, _ = export.export_moodle([grades], [sheet], {}, {}, by_name=False)   # 6,00 is 6
    assert rows[1:] == [["jane@example.org", "5.5"], ["sam@example.org", "0"]]


# ---------------------------------------------------------------- hand grades and a lab hub's gradebook
# The gradebooks below are nbgrader's own (its Gradebook API, its schema): an assignment with one
# automatically graded code cell and one written answer, as 05b has, and what autograde writes per student
# (the code cell's automatic score; the written answer waiting for a hand grade). `hand_grade` is what
# formgrader's Grade API does when the instructor types a score (nbgrader's
# server_extensions/formgrader/apihandlers.py, GradeHandler.put).

MODULE_5B = "05b_federated_privacy"
ROSTER_5B = ('Student,ID,SIS User ID,SIS Login ID,Section,Lab 5b 05b_federated_privacy (9005)\r\n'
             'Points Possible,,,,,15.00\r\n'
             '"Doe, Jane",12345,S-1,jdoe,Lab A,\r\n'
             '"Roe, Rick",12346,S-2,rroe,Lab A,\r\n'
             '"Poe, Pat",12347,S-3,ppoe,Lab B,\r\n')


@functools.cache
def _alembic_head(ask) -> str:
    """nbgrader's schema version, which its Gradebook asks `alembic heads` (a subprocess, seconds) for each
    new database: asked once, with the venv's bin on PATH."""
    import os

    old = os.environ["PATH"]
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{old}"
    try:
        return ask()
    finally:
        os.environ["PATH"] = old


@pytest.fixture
def path_with_alembic(monkeypatch):
    from nbgrader import api
    ask = api.get_alembic_version
    monkeypatch.setattr(api, "get_alembic_version", lambda: _alembic_head(ask))


def make_gradebook(path: Path, assignment: str, autograded: dict[str, dict[str, float | None]],
                   code_points: float = 10, written_points: float = 5) -> Path:
    """`autograded`: student -> {"code": automatic score or None (autograde did not finish)}."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{path}") as gb:
        gb.update_or_create_assignment(assignment)
        gb.add_notebook(assignment, assignment)
        gb.add_grade_cell("code", assignment, assignment, max_score=code_points, cell_type="code")
        gb.add_grade_cell("written", assignment, assignment, max_score=written_points, cell_type="markdown")
        for student, scores in autograded.items():
            gb.update_or_create_student(student)
            gb.add_submission(assignment, student)
            code = gb.find_grade("code", assignment, assignment, student)
            code.auto_score = scores["code"]
            code.needs_manual_grade = scores["code"] is None                 # as SaveAutoGrades sets it
            gb.find_grade("written", assignment, assignment, student).needs_manual_grade = True
            gb.db.commit()
    return path


def hand_grade(path: Path, assignment: str, student: str, cell: str, manual=None, extra=None) -> None:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{path}") as gb:
        grade = gb.find_grade(cell, assignment, assignment, student)
        grade.manual_score, grade.extra_credit = manual, extra
        grade.needs_manual_grade = grade.manual_score is None and grade.auto_score is None
        gb.db.commit()


@pytest.fixture
def graded_5b(tmp_path, path_with_alembic):
    """`make grade`'s folder for 05b: grades.csv (written answers pending) and its gradebook.db beside it."""
    roster = tmp_path / "canvas.csv"
    roster.write_text(ROSTER_5B, encoding="utf-8")
    grades = grades_csv(tmp_path, MODULE_5B, [
        R("12345", "graded", score=10, max_score=15, name="doejane", cells={"code": 10}, manual_pending=5),
        R("12346", "graded", score=4, max_score=15, name="roerick", cells={"code": 4}, manual_pending=5),
        R("12347", "held for review", score=10, max_score=15, name="poepat", review=["exec"],
          manual_pending=5)])
    book = make_gradebook(grades.parent / "gradebook.db", MODULE_5B,
                          {"12345": {"code": 10}, "12346": {"code": 4}, "12347": {"code": 10}})
    return roster, grades, book, tmp_path / "import.csv"


def canvas_column(out: Path) -> dict[str, str]:
    return {r[1]: r[5] for r in rows_of(out)[2:]}


def test_hand_grades_from_the_gradebook_reach_the_lms(graded_5b, capsys):
    """Written answers graded in formgrader live in gradebook.db only: grades.csv alone would export 10/15
    for a student the instructor gave 14.5/15. The held student stays empty although the gradebook holds
    the provisional score."""
    roster, grades, book, out = graded_5b
    argv = ["canvas", str(grades), "--roster", str(roster), "--out", str(out)]
    assert export.main(argv) == 0                     # nothing graded by hand yet: the automatic scores
    assert canvas_column(out) == {"12345": "10", "12346": "4", "12347": ""}
    assert "graded, but: 05b_federated_privacy: 12345: 5 points wait for a hand grade in formgrader" in \
        capsys.readouterr().err
    before = book.read_bytes()
    hand_grade(book, MODULE_5B, "12345", "written", manual=4.5)
    hand_grade(book, MODULE_5B, "12346", "written", manual=0, extra=1)
    hand_grade(book, MODULE_5B, "12346", "code", manual=6)          # a test cell's score overridden by hand
    hand_grade(book, MODULE_5B, "12347", "written", manual=5)
    assert export.main(argv) == 0
    assert canvas_column(out) == {"12345": "14.5", "12346": "7", "12347": ""}
    err = capsys.readouterr().err
    assert "2 student(s)' hand grades read from" in err and "wait for a hand grade" not in err
    assert export.main([*argv, "--no-gradebook"]) == 0
    assert canvas_column(out) == {"12345": "10", "12346": "4", "12347": ""}
    edited = book.read_bytes()
    export.main(argv)
    assert book.read_bytes() == edited != before      # read from a snapshot, never written


@pytest.mark.parametrize("other", ["an automatic score", "a student"])
def test_gradebook_of_another_run_refused(graded_5b, capsys, other):
    roster, grades, book, out = graded_5b
    book.unlink()
    make_gradebook(book, MODULE_5B, {"12345": {"code": 7 if other == "an automatic score" else 10},
                                     **({"12346": {"code": 4}} if other == "an automatic score" else {})})
    assert export.main(["canvas", str(grades), "--roster", str(roster), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not of one grading run" in err and "--no-gradebook" in err and not out.exists()
    assert ("other automatic scores (code) for 12345" if other == "an automatic score"
            else "has no submission of 12346") in err


def test_a_lab_hubs_gradebook_with_ids(tmp_path, path_with_alembic, capsys):
    """A hub has no grades.csv: its gradebook is the source, its accounts mapped to the LMS by --ids. A
    learner with no submission and one whose autograde stopped get no grade (never 0); an account missing
    from --ids is listed, not dropped; an assignment nobody submitted is no column."""
    book = make_gradebook(tmp_path / "gradebook.db", MODULE_5B, {
        "sysml-learner01": {"code": 10}, "sysml-learner02": {"code": None}, "sysml-learner09": {"code": 3}})
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{book}") as gb:
        gb.update_or_create_student("sysml-learner03")      # fetched, never submitted
        gb.update_or_create_assignment("00_orientation")      # released, nothing collected
    hand_grade(book, MODULE_5B, "sysml-learner01", "written", manual=5)
    roster, out = tmp_path / "canvas.csv", tmp_path / "import.csv"
    roster.write_text(ROSTER_5B, encoding="utf-8")
    ids = tmp_path / "ids.csv"
    ids.write_text("account,login\nsysml-learner01,jdoe\nsysml-learner02,rroe\nsysml-learner03,ppoe\n")
    argv = ["canvas", str(book), "--roster", str(roster), "--out", str(out), "--ids", str(ids)]
    assert export.main(argv) == 3
    rows = rows_of(out)
    assert rows[0][5:] == ["Lab 5b 05b_federated_privacy (9005)"] and rows[1][5:] == ["15"]
    assert canvas_column(out) == {"12345": "15", "12346": "", "12347": ""}
    err = capsys.readouterr().err
    assert "autograde did not finish" in err and "no autograded submission" in err
    assert "has no line for sysml-learner09" in err
    assert "NOT MATCHED TO THE ROSTER (not written): sysml-learner09" in err
    assert export.main([*argv[:1], f"00_orientation={book}", *argv[2:]]) == 2   # nothing graded there
    assert "00_orientation" in capsys.readouterr().err
    ids.write_text("account,login\nsysml-learner01,jdoe\nsysml-learner01,rroe\n")
    assert export.main(argv) == 2 and "given two LMS ids" in capsys.readouterr().err


def test_a_hub_score_older_than_the_newest_submission_is_not_exported(tmp_path, path_with_alembic):
    """Review 24c #7: when the autograde of a newer submission fails, nbgrader removes only the autograded
    copy and keeps the old grades (`nbgrader export` reported 6/6 for a notebook replaced by a broken one);
    a submission collected after its autograde still shows the older score. In the course folder both are
    told from submitted/ and autograded/; a copied gradebook says it could not check."""
    course = tmp_path / "sysml"
    course.mkdir()
    book = make_gradebook(course / "gradebook.db", MODULE_5B, {
        "fresh": {"code": 10}, "failed_again": {"code": 10}, "resubmitted": {"code": 10}})
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{book}") as gb:
        for sub in gb.find_assignment(MODULE_5B).submissions:
            sub.timestamp = datetime.datetime(2026, 11, 30, 10, 0)
        gb.db.commit()
    for student, collected in (("fresh", "09:59"), ("failed_again", "10:30"), ("resubmitted", "11:00")):
        (course / "submitted" / student / MODULE_5B).mkdir(parents=True)
        (course / "submitted" / student / MODULE_5B / "timestamp.txt").write_text(
            f"2026-11-30 {collected}:00.000000 UTC")
        if student != "failed_again":
            (course / "autograded" / student / MODULE_5B).mkdir(parents=True)
    grades = {g.student: g for g in export.read_gradebook(book)[0].grades}
    assert grades["fresh"].points == 10
    assert grades["failed_again"].points is None
    assert "autograded copy is missing" in grades["failed_again"].why
    assert grades["resubmitted"].points is None and "submitted again since" in grades["resubmitted"].why
    copied = tmp_path / "gradebook.db"
    copied.write_bytes(book.read_bytes())
    module = export.read_gradebook(copied)[0]
    assert all(g.points == 10 for g in module.grades) and "is not checked" in module.note


@pytest.mark.parametrize("content", [b"", b"not a database at all", b"SQLite format 3\x00" + b"\x00" * 200])
def test_a_file_that_is_no_gradebook_refused(tmp_path, canvas, capsys, content):
    roster, _, out = canvas
    bad = tmp_path / "gradebook.db"
    bad.write_bytes(content)
    assert export.main(["canvas", str(bad), "--roster", str(roster), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "gradebook" in err and "Traceback" not in err and not out.exists()
