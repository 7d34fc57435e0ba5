"""The instructor's grading command, end to end, on honest and hostile submissions.

One run grades every student of one LMS-style zip, two at a time; the honest ones' scores are
pinned, and each hostile one must get a clear result without touching anyone else's. A second
run over the same export must change nothing. Every test below reads those two runs.
"""

import csv
import hashlib
import io
import json
import socket
import threading
import zipfile

import pytest

from autograders import grade, report, sandbox, settings
from tests.notebooks import load, reference_answers, release_path, solution_path, source, submission

MODULE = "00_orientation"
CELL_TIMEOUT_S = 20
FULL = 6.0

WRONG_ANSWERS = {
    "median_time": "def median_time(fn, repeats=20, warmup=3, clock=None):\n    return 0.0",
    "model_size": "def model_size_bytes(model):\n    return 0",
    "train_one_epoch": "def train_one_epoch(model, loader, optimizer, device=None):\n    return 0.0",
}
PARAMS_ONLY = ("def model_size_bytes(model):\n"
               "    return sum(p.numel() * p.element_size() for p in model.parameters())")
NOISY = ("import sys, warnings\n"
         "print('debugging output on stderr', file=sys.stderr)\n"
         "warnings.warn('a library grumbles', UserWarning)\n")


def notebook_bytes(nb):
    return json.dumps(nb).encode()


def solution(cell_id):
    return next(source(c) for c in load(solution_path(MODULE))["cells"] if c["id"] == cell_id)


def leaking(answer, port):
    """`answer`, preceded by code that sends the grader's machine a message over its loopback."""
    return ("import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=5).sendall(b'leaked')\n"
            "except OSError:\n"
            "    pass\n" + answer)


PATCH_HELPERS = """import course.checks
for _name in dir(course.checks):
    if callable(getattr(course.checks, _name)):
        setattr(course.checks, _name, lambda *args, **kwargs: None)
get_ipython().showtraceback = lambda *args, **kwargs: None
"""
FAKE_PASSES = ("print('median_time: all tests passed (2/2)')\n"
               "from IPython.display import display, HTML\n"
               "display(HTML('<b>passed</b>: every test of this module'))\n")
FLOOD = "for _ in range(50):\n    print('x' * 1_000_000)\n"


def vandal(answer, targets):
    """`answer`, preceded by code that tries to write into every file in `targets` and reports."""
    return (f"import os\nfor _path in {sorted(map(str, targets))!r}:\n"
            "    try:\n"
            "        with open(_path, 'ab') as _f:\n"
            "            _f.write(b'vandal')\n"
            "        print('WROTE', _path)\n"
            "    except OSError as _err:\n"
            "        print('blocked', _path, _err.strerror, os.path.exists(_path))\n" + answer)


def targets(out):
    """Files a submission must not change: the course, the source, the gradebook, other students' work."""
    return [settings.REPO / "course" / "checks.py", solution_path(MODULE), release_path(MODULE),
            out / "gradebook.db", out / "submitted" / "ace" / MODULE / f"{MODULE}.ipynb",
            out / "autograded" / "ace" / MODULE / f"{MODULE}.ipynb", out / "nbgrader_config.py"]


def build_export(path, listener_port, out):
    """An LMS export: notebooks, a folder, a nested zip, and junk."""
    ok = reference_answers(MODULE)
    reference = submission(MODULE, ok)
    noisy = submission(MODULE, ok)
    for cell in noisy["cells"]:
        if cell["id"] in ok:
            cell["source"] = NOISY + "".join(cell["source"])
    loop = submission(MODULE, {**ok, "median_time":
                               "def median_time(fn, repeats=20, warmup=3, clock=None):\n"
                               "    while True:\n        pass"})
    tamper = submission(MODULE, {**WRONG_ANSWERS, "median_time_tests": "pass",
                                 "model_size_params_tests": "print('all good')"},
                        drop=("model_size_buffers_tests",))
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("work/00_orientation.ipynb", notebook_bytes(tamper))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ace.ipynb", notebook_bytes(reference))
        zf.writestr("00731.ipynb", notebook_bytes(submission(MODULE)))  # LMS ids: numeric
        zf.writestr("partial/00_orientation.ipynb", notebook_bytes(
            submission(MODULE, {"median_time": None, "model_size": PARAMS_ONLY})))
        zf.writestr("tamper.zip", inner.getvalue())
        zf.writestr("loop.ipynb", notebook_bytes(loop))
        zf.writestr("noisy.ipynb", notebook_bytes(noisy))
        zf.writestr("syntax.ipynb", notebook_bytes(
            submission(MODULE, {**ok, "model_size": "def model_size_bytes(model)\n    return 1"})))
        zf.writestr("crash.ipynb", notebook_bytes(
            submission(MODULE, {**ok, "model_size": "import os\nos._exit(3)"})))
        zf.writestr("broken.ipynb", b"{\"cells\": [ this is not json")
        zf.writestr("bomb.ipynb", notebook_bytes(
            submission(MODULE, {**ok, "model_size": "hog = bytearray(6 * 2**30)\n"
                                                    + solution("model_size")})))
        zf.writestr("leak.ipynb", notebook_bytes(
            submission(MODULE, {**ok, "median_time": leaking(solution("median_time"), listener_port)})))
        zf.writestr("../evil.ipynb", notebook_bytes(reference))
        zf.writestr("exit.ipynb", notebook_bytes(
            submission(MODULE, {**ok, "model_size": "import sys\nsys.exit(0)"})))
        zf.writestr("segv.ipynb", notebook_bytes(
            submission(MODULE, {**ok, "model_size": "import ctypes\nctypes.string_at(0)"})))
        zf.writestr("patcher.ipynb", notebook_bytes(
            submission(MODULE, {**WRONG_ANSWERS,
                                "median_time": PATCH_HELPERS + WRONG_ANSWERS["median_time"]})))
        zf.writestr("faker.ipynb", notebook_bytes(
            submission(MODULE, {k: FAKE_PASSES + v for k, v in WRONG_ANSWERS.items()})))
        zf.writestr("flood.ipynb", notebook_bytes(
            submission(MODULE, {**ok, "median_time": FLOOD + solution("median_time")})))
        zf.writestr("empty.ipynb", b"")
        zf.writestr("other.ipynb", notebook_bytes(load(release_path("01_edge"))))
        if sandbox.namespaces_available():  # without walls it would really write into the course
            zf.writestr("vandal.ipynb", notebook_bytes(
                submission(MODULE, {**ok, "median_time": vandal(solution("median_time"), targets(out))})))


class Listener(threading.Thread):
    """A TCP server on the grader's loopback that records whatever reaches it."""

    def __init__(self):
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received = []

    def run(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                self.received.append(conn.recv(100))


def digests(paths):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.exists()}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("grading")
    export = base / "export.zip"
    out = base / "course"
    listener = Listener()
    listener.start()
    build_export(export, listener.port, out)
    course_files = [settings.REPO / "course" / "checks.py", solution_path(MODULE), release_path(MODULE)]
    before = digests(course_files)
    try:
        results = grade.grade(MODULE, export, out, cell_timeout_s=CELL_TIMEOUT_S, student_timeout_s=300,
                              jobs=2)
    finally:
        listener.server.close()
    assert digests(course_files) == before  # whatever ran, the course itself is unchanged
    return out, {r.student: r for r in results}, listener.received


@pytest.fixture(scope="module")
def regraded(graded):
    """The same export graded again into the same folder."""
    out = graded[0]
    before = (out / "grades.csv").read_text()
    results = grade.grade(MODULE, out.parent / "export.zip", out, cell_timeout_s=CELL_TIMEOUT_S,
                          student_timeout_s=300, jobs=2)
    return before, {r.student: r for r in results}


def test_every_student_is_graded_once(graded):
    _, results, _ = graded
    walled = ["vandal"] if sandbox.namespaces_available() else []
    assert sorted(results) == sorted(["00731", "ace", "bomb", "broken", "crash", "empty", "exit", "faker",
                                      "flood", "leak", "loop", "noisy", "other", "partial", "patcher", "segv",
                                      "syntax", "tamper", *walled])
    assert all(r.max_score == FULL for r in results.values())


def test_reference_answers_score_full_marks(graded):
    ace = graded[1]["ace"]
    assert (ace.status, ace.score, ace.detail) == ("graded", FULL, "")
    assert all(score > 0 for score in ace.cells.values()) and len(ace.cells) == 4


def test_blank_release_scores_zero(graded):
    blank = graded[1]["00731"]  # also: a numeric id with a leading zero stays a string
    assert blank.status == "graded" and blank.score == 0


def test_half_right_scores_partial_marks_per_test_cell(graded):
    partial = graded[1]["partial"]
    assert partial.score == 3.0  # median_time 2, model size parameters 1, buffers 0, training 0
    assert partial.cells["median_time_tests"] == 2 and partial.cells["model_size_params_tests"] == 1
    assert partial.cells["model_size_buffers_tests"] == 0


def test_edited_and_deleted_tests_are_restored(graded):
    out, results, _ = graded
    assert results["tamper"].score == 0
    autograded = json.loads((out / "autograded" / "tamper" / MODULE / f"{MODULE}.ipynb").read_text())
    cells = {c["metadata"].get("nbgrader", {}).get("grade_id"): "".join(c["source"])
             for c in autograded["cells"]}
    assert "ScriptedWork" in cells["median_time_tests"]  # edited to `pass`, restored
    assert "BEGIN HIDDEN TESTS" in cells["median_time_tests"]  # hidden tests ran
    assert "nn.BatchNorm1d(8)" in cells["model_size_buffers_tests"]  # deleted, put back


def test_endless_loop_times_out_that_cell_only(graded):
    loop = graded[1]["loop"]
    assert loop.status == "timed out" and "median_time_tests" in loop.detail
    assert loop.score == FULL - 2  # every other exercise still graded


def test_stderr_noise_and_warnings_cost_nothing(graded):
    noisy = graded[1]["noisy"]
    assert (noisy.status, noisy.score) == ("graded", FULL)


def test_syntax_error_costs_only_its_exercise(graded):
    syntax = graded[1]["syntax"]
    assert syntax.status == "graded" and syntax.score == FULL - 2


def test_dead_kernel_and_unreadable_files_get_clear_results(graded):
    _, results, _ = graded
    assert results["crash"].status == "grading failed" and "kernel died" in results["crash"].detail
    broken = results["broken"]
    assert broken.status == "not gradable" and "not a readable notebook" in broken.detail
    assert results["crash"].score == results["broken"].score == 0


def test_feedback_page_for_every_student(graded):
    out, results, _ = graded
    for student, result in results.items():
        page = out / "feedback" / student / MODULE / f"{MODULE}.html"
        assert page.exists() and result.feedback == page, student
    assert "6" in (out / "feedback" / "ace" / MODULE / f"{MODULE}.html").read_text()
    assert "could not be graded" in (out / "feedback" / "broken" / MODULE / f"{MODULE}.html").read_text()


def test_grades_csv_matches_results(graded):
    out, results, _ = graded
    rows = list(csv.DictReader(open(out / "grades.csv")))
    assert {r["student"]: float(r["score"] or r["provisional_score"]) for r in rows} == {
        s: r.score for s, r in results.items()}
    assert all((r["score"] == "") == (r["status"] == report.HELD) for r in rows)  # flagged: not final
    assert {r["student"]: r["status"] for r in rows}["loop"] == "timed out"
    assert "median_time_tests" in rows[0]


def test_zip_slip_member_never_leaves_the_grading_folder(graded):
    out, _, _ = graded
    assert not (out.parent / "evil.ipynb").exists()
    assert not (out / "evil.ipynb").exists()


def test_summary_table_lists_everyone(graded):
    table = report.summary_table(list(graded[1].values()))
    for student in graded[1]:
        assert student in table
    assert "6 / 6" in table and "REVIEW" in table


def test_command_line_prints_the_summary_and_writes_csv(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "zoe.ipynb").write_text("not a notebook")
    assert grade.main([MODULE, str(folder), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "zoe" in printed and "0 / 6" in printed and "not gradable" in printed
    assert "1 submissions in" in printed
    assert (tmp_path / "out" / "grades.csv").read_text().splitlines()[1].startswith("zoe,zoe,0,6,0.0,0,")


def test_a_memory_bomb_costs_only_its_exercise(graded):
    bomb = graded[1]["bomb"]
    assert (bomb.status, bomb.score) == ("graded", FULL - 2)  # MemoryError in its cell; the kernel lives


def test_the_grading_kernel_cannot_reach_the_graders_network(graded):
    if not sandbox.namespaces_available():
        pytest.skip("user namespaces are not allowed here: grading kernels keep the network (README)")
    leak = graded[1]["leak"]
    assert (leak.status, leak.score) == ("graded", FULL)
    assert graded[2] == []  # nothing arrived from inside the sandbox


def test_sys_exit_costs_only_its_exercise(graded):
    assert (graded[1]["exit"].status, graded[1]["exit"].score) == ("graded", FULL - 2)


def test_a_segfault_kills_only_that_students_kernel(graded):
    segv = graded[1]["segv"]
    assert segv.status == "grading failed" and "kernel died" in segv.detail and segv.score == 0


def test_patched_test_helpers_and_hidden_tracebacks_earn_nothing(graded):
    patcher = graded[1]["patcher"]
    assert (patcher.status, patcher.score) == (report.HELD, 0)
    assert any("course.checks" in flag for flag in patcher.review)
    assert any("IPython kernel" in flag for flag in patcher.review)


def test_printed_passes_earn_nothing(graded):
    faker = graded[1]["faker"]
    assert (faker.status, faker.score, faker.review) == ("graded", 0, [])


def test_honest_work_is_never_flagged(graded):
    for student in ("ace", "partial", "noisy", "00731"):
        assert graded[1][student].review == [], student


def test_an_output_flood_is_cut_and_costs_nothing(graded):
    out, results, _ = graded
    assert (results["flood"].status, results["flood"].score) == ("graded", FULL)
    autograded = out / "autograded" / "flood" / MODULE / f"{MODULE}.ipynb"
    assert autograded.stat().st_size < 1_000_000
    assert "the grader cut this cell's output" in autograded.read_text()


def test_empty_file_and_another_modules_notebook_are_named(graded):
    results = graded[1]
    assert results["empty"].status == "not gradable" and "empty" in results["empty"].detail
    assert results["other"].status == "not gradable" and "01_edge" in results["other"].detail


def test_a_submission_cannot_write_or_see_the_course_gradebook_or_other_students(graded):
    if not sandbox.namespaces_available():
        pytest.skip("user namespaces are not allowed here: grading kernels see the files (README)")
    out, results, _ = graded
    assert (results["vandal"].status, results["vandal"].score) == ("graded", FULL)
    nb = json.loads((out / "autograded" / "vandal" / MODULE / f"{MODULE}.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "WROTE" not in printed
    for path in targets(out):
        assert f"blocked {path}" in printed, path
    for hidden in ("gradebook.db", "submitted/ace", "autograded/ace", "nbgrader_config.py"):
        line = next(line for line in printed.splitlines() if hidden in line)
        assert line.endswith("False"), line  # not even visible
    assert results["ace"].score == FULL


def test_parallel_grading_leaves_every_grade_in_the_gradebook(graded):
    out, results, _ = graded
    with grade._gradebook(out) as gb:
        for student, result in results.items():
            if result.status in ("graded", report.HELD):
                assert gb.find_submission_notebook(MODULE, MODULE, student).score == result.score, student



def test_grades_export_reads_this_runs_gradebook_and_hand_grades(graded, tmp_path):
    """The export (autograders/export.py) checks grades.csv against the gradebook.db beside it, cell by
    cell: a real run's pair must agree (no false refusal), and a score typed in formgrader afterwards
    (what its Grade API writes) must reach the export while a held student stays without a grade."""
    import shutil

    from autograders import export

    out, results, _ = graded
    copy = tmp_path / "grading" / MODULE
    copy.mkdir(parents=True)
    for name in ("grades.csv", "gradebook.db"):
        shutil.copy(out / name, copy / name)
    read = {g.student: g.points for g in export.read_grades(copy / "grades.csv").grades}
    assert read == {s: (r.score if r.status in export.GRADED else None) for s, r in results.items()}
    assert read["partial"] == 3.0 and read["patcher"] is None         # held for review: no grade exported
    with grade._gradebook(copy) as gb:
        cell = gb.find_grade("model_size_buffers_tests", MODULE, MODULE, "partial")
        cell.manual_score, cell.needs_manual_grade = 1.5, False        # formgrader's GradeHandler.put
        gb.db.commit()
    again = {g.student: g.points for g in export.read_grades(copy / "grades.csv").grades}
    assert again["partial"] == 4.5 and again["patcher"] is None and again["ace"] == read["ace"]


def test_per_exercise_summary(graded):
    out, results, _ = graded
    rows = {r["exercise"]: r for r in csv.DictReader(open(out / "exercises.csv"))}
    assert set(rows) == set(results["ace"].cells)
    ran = [r for r in results.values() if r.cells]
    for name, row in rows.items():
        assert float(row["mean"]) == pytest.approx(sum(r.cells[name] for r in ran) / len(ran), abs=0.01)
        assert int(row["full"]) == sum(r.cells[name] == float(row["points"]) for r in ran)


def test_grading_again_keeps_every_grade_and_runs_only_what_failed(regraded, graded):
    before, again = regraded
    out, first, _ = graded
    assert (out / "grades.csv").read_text() == before
    for student, result in again.items():
        assert (result.score, result.status) == (first[student].score, first[student].status), student
        assert result.reused == (first[student].status in ("graded", "not gradable", report.HELD)), student
