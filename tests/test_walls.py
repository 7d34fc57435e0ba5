"""Issue 18, cases 11 and 12, through the real grader: nothing a submission starts outlives its
grading, kernel hooks that would turn the tests into `pass` are undone, and a flagged score is
held until the instructor accepts that very notebook.

One grading run (a folder export of 00_orientation) serves every test here; the acceptance test
at the end grades the same folder again, so it runs last.
"""

import csv
import json

import psutil
import pytest

from autograders import grade, report, sandbox
from course.processes import stop_tree
from tests.test_grading_modules import recorded
from tests.notebooks import load, reference_answers, solution_path, source, submission

MODULE = "00_orientation"
FULL = 6.0
MARKER = "987654"  # `sleep 987654`: the submission's processes, told apart from any other

# 150 processes in sessions of their own, then a fork-bomb-ish loop that stops at the cap; the
# loop's extra processes are ended (a real bomb would not, but then the tests below it could not
# start a thread either), the 150 are left running for the grader to deal with.
SPAWN = f"""import subprocess
_kept = [subprocess.Popen(["sleep", "{MARKER}"], start_new_session=True) for _ in range(150)]
_more = []
try:
    while len(_more) < 1000:
        _more.append(subprocess.Popen(["sleep", "{MARKER}"], start_new_session=True))
    print("not capped at", len(_kept) + len(_more))
except OSError as _err:
    print("capped at", len(_kept) + len(_more), _err.errno)
for _p in _more:
    _p.kill()
    _p.wait()
"""

PASS_AST = ("import ast\n"
            "class _Pass(ast.NodeTransformer):\n"
            "    def visit_Module(self, node):\n"
            "        node.body = [ast.Pass()]\n"
            "        return node\n")
HOOKS = {  # each kind of kernel hook that turns a test cell into `pass` (or hides its failure)
    "cleanup": ("get_ipython().input_transformers_cleanup.append(lambda lines: ['pass\\n'])\n",
                "an input transformer (cleanup) added"),
    "post": ("get_ipython().input_transformers_post.append(lambda lines: ['pass\\n'])\n",
             "an input transformer (post) added"),
    "ast": (PASS_AST + "get_ipython().ast_transformers.append(_Pass())\n", "an AST transformer added"),
    "event": (PASS_AST + "def _again(*args):\n"
              "    if not any(isinstance(t, _Pass) for t in get_ipython().ast_transformers):\n"
              "        get_ipython().ast_transformers.append(_Pass())\n"
              "get_ipython().events.register('pre_run_cell', _again)\n",
              "an event callback added (pre_run_cell"),
    "custom": ("get_ipython().set_custom_exc((Exception,), lambda *args, **kwargs: None)\n",
               "a custom exception handler set"),
    "method": ("from IPython.core.interactiveshell import InteractiveShell\n"
               "InteractiveShell.transform_cell = lambda self, cell: 'pass\\n'\n",
               "InteractiveShell.transform_cell replaced"),
    "instance": ("get_ipython().transform_cell = lambda cell: 'pass\\n'\n",
                 "the IPython shell's transform_cell replaced"),
    "blocker": ("get_ipython().input_transformers_cleanup.append(lambda lines: ['pass\\n'])\n"
                "get_ipython().user_expressions = lambda expressions: {}\n",
                "not run, the grader could not restore the kernel"),
}
# An import finder that hands every test a `course.checks` whose failures do nothing (from a newcomer's
# review): with wrong answers everywhere, it must score 0, named and held.
IMPORTER = """import sys, importlib.util
class _Finder:
    def find_spec(self, name, path=None, target=None):
        if name != "course.checks":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            module._fail = lambda *args, **kwargs: None
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, _Finder())
sys.modules.pop("course.checks", None)
"""
# flagged (gc), but an honest score: what an instructor accepts after a look
FLAGGED = "import gc\n"


def write(path, nb):
    path.write_text(json.dumps(nb))


def hooked(code):
    """A blank notebook whose first (setup) cell installs `code` first."""
    nb = submission(MODULE)
    for cell in nb["cells"]:
        if cell["id"] == "setup":
            cell["source"] = code + source(cell)
    return nb


def solution(cell_id):
    return next(source(c) for c in load(solution_path(MODULE))["cells"] if c["id"] == cell_id)


def sleepers():
    return [p for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [])[-2:] == ["sleep", MARKER]]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("walls")
    export, out = base / "export", base / "course"
    export.mkdir()
    ok = reference_answers(MODULE)
    write(export / "ace.ipynb", submission(MODULE, ok))
    write(export / "spawner.ipynb", submission(MODULE, {**ok, "model_size": SPAWN + solution("model_size")}))
    write(export / "flagged.ipynb",
          submission(MODULE, {**ok, "model_size": FLAGGED + solution("model_size")}))
    for name, (code, _) in HOOKS.items():
        write(export / f"hook_{name}.ipynb", hooked(code))
    wrong = recorded(MODULE, "wrong")
    write(export / "importer.ipynb", submission(MODULE, {**wrong, "setup": IMPORTER + source(
        next(c for c in load(solution_path(MODULE))["cells"] if c["id"] == "setup"))}))
    write(export / "wrong.ipynb", submission(MODULE, wrong))
    assert sleepers() == []  # nothing of ours is running before
    results = grade.grade(MODULE, export, out, cell_timeout_s=30, student_timeout_s=300, jobs=2)
    return export, out, {r.student: r for r in results}


def printed(out, student):
    nb = json.loads((out / "autograded" / student / MODULE / f"{MODULE}.ipynb").read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


def test_nothing_a_submission_started_survives_its_grading(graded):
    _, out, results = graded
    survivors = sleepers()
    stop_tree(*survivors, grace_s=0)  # leave the machine clean even when the test fails
    assert survivors == [], f"{len(survivors)} of the submission's processes outlived its grading"
    spawner = results["spawner"]
    assert (spawner.status, spawner.score, spawner.review) == ("graded", FULL, [])  # the rest graded normally


def test_a_fork_bomb_stops_at_the_process_cap(graded):
    _, out, _ = graded
    line = next(line for line in printed(out, "spawner").splitlines() if "capped at" in line)
    words = line.split()
    assert words[0] == "capped", line
    assert 150 <= int(words[2]) <= sandbox.MAX_TASKS and words[3] == "11", line  # EAGAIN


def test_honest_work_is_graded_without_flags(graded):
    ace = graded[2]["ace"]
    assert (ace.status, ace.score, ace.review) == ("graded", FULL, [])


@pytest.mark.parametrize("kind", sorted(HOOKS))
def test_a_kernel_hook_cannot_turn_the_tests_into_pass(graded, kind):
    result = graded[2][f"hook_{kind}"]
    assert result.score == 0, (kind, result.score, result.review)
    assert result.status == report.HELD
    assert any(HOOKS[kind][1] in flag for flag in result.review), result.review


def ace_page(results):
    return results["ace"].feedback.read_text(encoding="utf-8")


def test_a_flagged_score_is_held_and_not_exported_as_final(graded):
    _, out, results = graded
    flagged = results["flagged"]
    assert (flagged.status, flagged.score) == (report.HELD, FULL)
    assert any("gc" in flag for flag in flagged.review)
    assert "--accept flagged" in flagged.detail
    rows = {r["student"]: r for r in csv.DictReader(open(out / "grades.csv"))}
    assert (rows["flagged"]["score"], rows["flagged"]["percent"], rows["flagged"]["provisional_score"]) == (
        "", "", "6")
    assert (rows["ace"]["score"], rows["ace"]["provisional_score"]) == ("6", "")
    assert rows["flagged"]["median_time_tests"] == "" and rows["ace"]["median_time_tests"] == "2"
    page = flagged.feedback.read_text(encoding="utf-8")
    assert "Your score is provisional" in page and "provisional" not in ace_page(results)
    assert rows["hook_cleanup"]["score"] == "" and rows["hook_cleanup"]["status"] == report.HELD
    assert "held for review" in report.summary_table(list(results.values()))


def test_accepting_releases_that_notebook_only(graded, capsys):
    export, out, _ = graded
    with pytest.raises(SystemExit, match="nobody"):
        grade.main([MODULE, str(export), "--out", str(out), "--accept", "nobody"])
    command = [MODULE, str(export), "--out", str(out), "--cell-timeout", "30"]
    assert grade.main([*command, "--accept", "flagged"]) == 0
    assert "flagged: accepted after review" in capsys.readouterr().out
    rows = {r["student"]: r for r in csv.DictReader(open(out / "grades.csv"))}
    assert (rows["flagged"]["status"], rows["flagged"]["score"], rows["flagged"]["provisional_score"]) == (
        "graded", "6", "")
    assert rows["hook_cleanup"]["status"] == report.HELD  # accepting one student releases no other
    # the student hands in a changed notebook: it must be looked at again
    changed = FLAGGED + "# v2\n" + solution("model_size")
    write(export / "flagged.ipynb", submission(MODULE, {**reference_answers(MODULE), "model_size": changed}))
    results = {r.student: r for r in grade.grade(MODULE, export, out, cell_timeout_s=30, jobs=2)}
    flagged = results["flagged"]
    assert (flagged.status, flagged.score) == (report.HELD, FULL)
    assert "changed since you accepted" in flagged.detail


def test_an_import_hook_cannot_doctor_the_test_helpers(graded):
    """Wrong answers with a finder that disarms `course.checks`: as low as the same wrong answers alone."""
    results = graded[2]
    importer, plain = results["importer"], results["wrong"]
    assert plain.score < FULL and importer.score == plain.score, (importer.cells, plain.cells)
    assert importer.status == report.HELD
    assert any("import hook added (sys.meta_path" in flag for flag in importer.review), importer.review
    assert any("changes the import system (sys.meta_path)" in flag for flag in importer.review)  # read, too
