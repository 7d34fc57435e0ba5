"""The lab hub end to end in a real browser (issue 24, item 2): nbgrader's round trip, as people click it.

On the hub of tests/hub_fixture.py (`make hub`'s `Hub`: an instructor and two learners, 00_orientation
released), Playwright's client drives Debian's headless Chromium (no browser download) through:

1. learner A signs in at the hub's login page, fetches 00_orientation in the Assignments panel, answers it
   (the reference answers saved through the Jupyter contents API with A's own session, and one answer typed
   into its cell in the real editor), presses Validate in the notebook's toolbar and sees it pass, submits;
2. learner B fetches and submits a notebook that is no longer JSON (an editor that died mid-save);
3. the instructor signs in, has Formgrader in the Nbgrader menu, collects, autogrades both (A full marks;
   B not gradable: formgrader's error dialog and "needs autograding", nothing broken), generates and
   releases feedback;
4. A fetches the feedback in the Assignments panel and reads the score on the feedback page; B reaches
   none of A's feedback (A's server refuses B's session, the exchange's feedback folder cannot be listed),
   and for the broken notebook B fetches a page saying it could not be graded and why (the hub's release;
   nbgrader's own released nothing, so Fetch Feedback fetched nothing); where grading repairs the notebook,
   B's feedback shows 0;
5. through A's browser session: no Formgrader (menu or server), and neither B's files, B's server nor the
   instructor's course folder can be reached by URL (with A's own files as the control that does open).
   What these URL checks prove: the hub gives A's session to A's server only, and jupyter_server serves
   nothing outside A's home, the server's root. They do not test the Unix modes of B's home or the course:
   jupyter_server refuses a path outside its root (``..``, ``%2F``, ``%2e%2e``) whatever the modes, so they
   pass even with B's home world-readable (review 24a, T2). tests/test_hub.py's runuser checks guard the
   modes.

The steps depend on each other and run in file order. Screenshots of every step go to test-artifacts/hub/,
with the wall time of each step in timings.json there.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
from pathlib import Path

import pytest

from autograders.settings import REPO
from tests import hub_pages as hp
from tests.hub_fixture import hub  # noqa: F401 - the module-scoped hub
from tests.hub_fixture import run_as
from tests.notebooks import grade_cells, load, nbgrader_meta, solution_path, source
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "test-artifacts" / "hub"
MODULE = "00_orientation"
NOTEBOOK = f"{MODULE}/{MODULE}.ipynb"  # where nbgrader's fetch puts it, in the learner's home
TYPED = "model_size"  # the exercise answered by typing into the editor (a short one), as a learner writes it:
TYPED_ANSWER = (
    "def model_size_bytes(model):\n"
    "    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}  # a shared tensor once\n"
    "    return sum(t.numel() * t.element_size() for t in tensors.values())\n")
TIMINGS: dict[str, float] = {}
RESULTS: dict[str, bool] = {}  # what an earlier step found that a later one checks


def _full_marks() -> float:
    return float(sum(nbgrader_meta(c)["points"] for c in grade_cells(load(solution_path(MODULE)))))


@pytest.fixture(scope="module")
def browser(hub):  # noqa: F811 - the fixture imported above
    if not Path(CHROMIUM).exists():
        why = "Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(why)  # CI must run this test, not skip it
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    started = time.monotonic()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()
            TIMINGS["total"] = round(time.monotonic() - started, 1)
            (ARTIFACTS / "timings.json").write_text(json.dumps(TIMINGS, indent=1) + "\n")


class Person:
    """One person's browser session (own cookies) signed in at the hub: `page` at their JupyterLab, `base`."""

    sessions: dict[str, Person] = {}

    def __init__(self, browser, hub, name: str):  # noqa: F811
        self.name = name
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.base = hp.login(self.page, hub.url, name, hub.accounts[name])

    @classmethod
    def of(cls, browser, hub, name: str) -> Person:  # noqa: F811
        if name not in cls.sessions:
            cls.sessions[name] = cls(browser, hub, name)
        return cls.sessions[name]

    def shot(self, name: str) -> None:
        hp.shoot(self.page, ARTIFACTS, name)


@pytest.fixture(scope="module")
def people(browser, hub):  # noqa: F811
    """name -> Person, signed in on first use; every context closed at the end."""
    Person.sessions = {}
    yield lambda name: Person.of(browser, hub, name)
    for person in Person.sessions.values():
        person.context.close()


def _timed(step: str, started: float) -> None:
    TIMINGS[step] = round(time.monotonic() - started, 1)


def test_1_learner_fetches_answers_validates_and_submits(hub, people):  # noqa: F811
    started = time.monotonic()
    a = people(hub.learners[0])
    a.shot("01_learner_signed_in")
    assert "nbgrader:open-assignment-list" in hp.menu_commands(a.page)
    hp.open_assignments(a.page)
    a.shot("02_assignments_panel")
    hp.fetch(a.page, MODULE)
    a.shot("03_fetched")

    # every exercise but one answered as a learner's finished notebook would be, saved with A's session
    fetched = hp.read_notebook(a.page, a.base, NOTEBOOK)
    reference = {c["id"]: source(c) for c in load(solution_path(MODULE))["cells"]}
    ids = [c["id"] for c in fetched["cells"]]
    assert TYPED in ids, f"the fetched notebook has no cell {TYPED!r}: {ids}"
    for cell in fetched["cells"]:
        if nbgrader_meta(cell).get("solution") and cell["id"] != TYPED:
            cell["source"] = reference[cell["id"]]
    hp.write_file(a.page, a.base, NOTEBOOK, fetched)

    # the last one typed into the editor; Validate saves the notebook, then runs it as grading would
    hp.open_notebook(a.page, a.base, NOTEBOOK)
    hp.replace_cell_text(a.page, ids.index(TYPED), TYPED_ANSWER)
    a.shot("04_answer_typed")
    result = hp.validate_in_toolbar(a.page)
    a.shot("05_validated")
    assert "Success! Your notebook passes all the tests." in result, result
    hp.close_dialog(a.page)
    saved = hp.read_notebook(a.page, a.base, NOTEBOOK)
    assert source(saved["cells"][ids.index(TYPED)]).strip() == TYPED_ANSWER.strip()  # what was typed

    hp.open_assignments(a.page)
    hp.submit(a.page, MODULE)
    a.shot("06_submitted")
    _timed("learner A: sign in, fetch, answer, validate, submit", started)


def test_2_second_learner_submits_a_broken_notebook(hub, people):  # noqa: F811
    started = time.monotonic()
    b = people(hub.learners[1])
    hp.open_assignments(b.page)
    hp.fetch(b.page, MODULE)
    text = json.dumps(hp.read_notebook(b.page, b.base, NOTEBOOK))
    hp.write_file(b.page, b.base, NOTEBOOK, text[: len(text) // 2])  # cut off mid-save: not JSON any more
    hp.refresh_assignments(b.page)
    hp.submit(b.page, MODULE)
    b.shot("07_broken_notebook_submitted")
    _timed("learner B: sign in, fetch, break, submit", started)


def test_3_instructor_collects_autogrades_and_releases_feedback(hub, people):  # noqa: F811
    started = time.monotonic()
    a, b = hub.learners
    teacher = people(hub.instructor)
    commands = hp.menu_commands(teacher.page)
    assert {"nbgrader:open-formgrader", "nbgrader:open-assignment-list"} <= commands, commands
    grader = hp.open_formgrader(teacher.page, teacher.base)
    teacher.shot("08_formgrader")

    collected = hp.assignment_action(grader, MODULE, "collect", timeout=hp.MEDIUM)
    assert f"Successfully collected submissions of '{MODULE}'" in collected, collected
    hp.manage_assignments(grader, teacher.base)
    assert hp.submissions_count(grader, MODULE) == 2

    hp.manage_submissions(grader, teacher.base, MODULE)
    assert set(hp.submission_rows(grader)) == {a, b}
    kind, text = hp.autograde(grader, a)
    assert kind == "success-modal", text
    kind, text = hp.autograde(grader, b)
    hp.manage_submissions(grader, teacher.base, MODULE)
    rows = hp.submission_rows(grader)
    teacher.shot("09_autograded")
    full = _full_marks()
    assert rows[a] == {"status": "graded", "score": f"{full:g} / {full:g}"}, rows
    # B's notebook cannot be read: formgrader says so and leaves it ungraded (or, if grading repairs it, 0)
    RESULTS["b graded"] = kind != "error-modal"
    if kind == "error-modal":
        assert f"There was an error autograding '{MODULE}' for student '{b}'" in text, text
        assert rows[b]["status"] == "needs autograding", rows
    else:
        assert rows[b]["score"] == f"0 / {full:g}", rows

    hp.manage_assignments(grader, teacher.base)
    generated = hp.assignment_action(grader, MODULE, "generate-feedback")
    assert f"Successfully generated feedback of '{MODULE}'" in generated, generated
    released = hp.assignment_action(grader, MODULE, "release-feedback", timeout=hp.MEDIUM)
    assert f"Successfully released feedback of '{MODULE}'" in released, released
    teacher.shot("10_feedback_released")
    _timed("instructor: sign in, collect, autograde 2, feedback", started)


def test_4_learner_reads_their_score_in_the_feedback(hub, people):  # noqa: F811
    started = time.monotonic()
    a = people(hub.learners[0])
    hp.open_assignments(a.page)
    hp.refresh_assignments(a.page)
    hp.fetch_feedback(a.page, MODULE)
    a.shot("11_feedback_fetched")
    page = hp.read_feedback(a.page, MODULE)
    a.shot("12_feedback_page")
    full = _full_marks()
    assert hp.feedback_score(page, MODULE) == (full, full)
    _timed("learner A: fetch and read feedback", started)


def _submissions(person: Person) -> list[dict]:
    """`person`'s submissions of MODULE as their Assignments panel lists them (nbgrader's assignments API,
    with their session): timestamp, has_local_feedback, has_exchange_feedback, local_feedback_path..."""
    status, text = hp.api(person.page, person.base, "GET", "assignments?course_id=sysml")
    assert status == 200, text
    listing = json.loads(text)
    assert listing["success"], listing
    return [s for item in listing["value"]
            if item["assignment_id"] == MODULE and item["status"] == "submitted" for s in item["submissions"]]


def test_4b_the_other_learner_reaches_none_of_As_feedback_and_sees_what_B_got(hub, people):  # noqa: F811
    started = time.monotonic()
    a, b = people(hub.learners[0]), people(hub.learners[1])
    fetched = [s for s in _submissions(a) if s["has_local_feedback"]]
    assert fetched, _submissions(a)
    folder = fetched[-1]["local_feedback_path"]  # in A's home, relative to A's server's root
    page = f"{a.base}files/{folder}/{MODULE}.html"
    assert _status(a, page) == 200  # the control: A's session opens A's feedback
    for url in (page, f"{a.base}api/contents/{folder}", f"{a.base}api/contents/{folder}/{MODULE}.html"):
        assert _status(b, url) in (403, 404), f"B's session reaches A's feedback: {url}"
    # the released feedback in the exchange: A's file is there (the instructor lists it), B cannot list it;
    # nbgrader names each file by a hash of the submission's own secret, which only its owner's copy holds
    released = hub.exchange / "sysml" / "feedback"
    assert run_as(hub, hub.instructor, ["ls", released]).stdout.split(), "no feedback was released"
    listing = run_as(hub, b.name, ["ls", released])
    assert listing.returncode != 0 and "Permission denied" in listing.stderr, listing.stdout

    # what B sees for the broken notebook, in B's own Assignments panel
    hp.open_assignments(b.page)
    hp.refresh_assignments(b.page)
    mine = _submissions(b)
    assert mine, "B's submission is not listed"
    row = hp.assignment_row(b.page, "submitted", MODULE)
    row.wait_for(timeout=hp.MEDIUM)
    b.shot("12b_broken_notebook_feedback_as_b_sees_it")
    if RESULTS.get("b graded"):  # grading repaired it: B's feedback shows 0
        hp.fetch_feedback(b.page, MODULE)
        assert hp.feedback_score(hp.read_feedback(b.page, MODULE), MODULE)[0] == 0
    else:  # not gradable: the hub's release (autograders/hub/exchange.py, HubReleaseFeedback) sends B a
        # page saying why, under the name B's fetch looks for; nbgrader's own sent nothing (review 24c #7)
        hp.fetch_feedback(b.page, MODULE)
        b.shot("12c_broken_notebook_feedback_fetched")
        text = hp.read_feedback(b.page, MODULE, contains="could not be graded")
        b.shot("12d_broken_notebook_feedback_page")
        assert "could not be graded" in text and "not a readable notebook" in text, text[:500]
    _timed("learner B: A's feedback refused, own result", started)


def _status(person: Person, url: str) -> int:
    """HTTP status of a GET of `url` with `person`'s cookies, redirects followed (the hub's 403 page: 403)."""
    return person.page.request.get(url, max_redirects=10).status


def test_5_a_learner_reaches_neither_others_work_nor_formgrader(hub, people):  # noqa: F811
    """The hub refuses A's session at B's server; A's own server serves nothing outside A's home.

    The `..` URLs prove the second for jupyter_server's root check only: it refuses any path outside its
    root whatever the Unix modes (B's home made world-readable still gives 403/404 here). Whether the modes
    keep A out of B's home and the course is tests/test_hub.py's runuser check.
    """
    started = time.monotonic()
    a, b = people(hub.learners[0]), people(hub.learners[1])
    mine = f"{a.base}files/{NOTEBOOK}"
    assert _status(a, mine) == 200  # the control: the same kind of URL opens A's own file
    assert _status(b, f"{b.base}files/{NOTEBOOK}") == 200  # and B's file is there to be found

    # B's server: the hub refuses A's session (B's files, B's API, B's JupyterLab)
    for url in (f"{b.base}files/{NOTEBOOK}", f"{b.base}api/contents/{NOTEBOOK}", f"{b.base}lab"):
        assert _status(a, url) in (403, 404), url
    response = a.page.goto(f"{b.base}lab/tree/{NOTEBOOK}", wait_until="domcontentloaded")
    a.shot("13_other_learners_lab_refused")
    assert response.status in (403, 404) or not a.page.url.startswith(b.base), (response.status, a.page.url)

    # out of A's own server by path: B's home and the instructor's course folder
    home_a = Path(hub.home(a.name))
    targets = {"B's notebook": Path(hub.home(b.name)) / NOTEBOOK,
               "the gradebook": Path(hub.course) / "gradebook.db",
               "the course's source": Path(hub.course) / "source" / MODULE / f"{MODULE}.ipynb"}
    for what, target in targets.items():
        relative = os.path.relpath(target, home_a)
        for form in (relative, urllib.parse.quote(relative, safe=""), relative.replace("..", "%2e%2e")):
            for url in (f"{a.base}files/{form}", f"{a.base}api/contents/{form}"):
                assert _status(a, url) in (400, 403, 404), f"{what}: {url} opened"

    # no formgrader, in the menu or on the server
    a.page.goto(a.base + "lab", wait_until="domcontentloaded")
    hp.wait_for_lab(a.page)
    commands = hp.menu_commands(a.page)
    assert "nbgrader:open-formgrader" not in commands and "nbgrader:open-create-assignment" not in commands, \
        commands
    for path in ("formgrader", "formgrader/manage_assignments", "formgrader/api/assignments"):
        assert _status(a, a.base + path) in (403, 404), path
    teacher = people(hub.instructor)
    assert _status(teacher, teacher.base + "formgrader/api/assignments") == 200  # the control
    a.shot("14_learner_menu_without_formgrader")
    _timed("isolation checks", started)
