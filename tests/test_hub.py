"""The lab hub (autograders/hub, `make hub`): who runs as whom, who reads what, who gets formgrader, and that
the instructor's autograde runs submissions in the walled grading kernel. No browser: runuser, JupyterHub's
REST API and the servers' own APIs with per-user tokens (tests/test_hub_browser.py drives the pages).

One hub for the module (tests/hub_fixture.py): an instructor and two learners, 00_orientation released.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from autograders.hub import MARKER, Hub, HubError, hub_constraints, read_accounts, write_accounts
from tests import hub_fixture
from tests.hub_fixture import execute, run_as
from tests.notebooks import grade_cells, submission

MODULE = "00_orientation"
hub = hub_fixture.hub  # the module-scoped fixture: one hub for this file


def _get(lab, user: str, path: str, token: str) -> tuple[int, str]:
    request = urllib.request.Request(
        f"{lab.url}user/{user}/{path}", headers={"Authorization": f"token {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def _post(lab, user: str, path: str, token: str) -> tuple[int, str]:
    request = urllib.request.Request(
        f"{lab.url}user/{user}/{path}", method="POST", data=b"", headers={"Authorization": f"token {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


# ---------------------------------------------------------------- fast, no hub


def test_accounts_file_is_root_only_and_round_trips(tmp_path):
    path = tmp_path / "accounts.csv"
    write_accounts(path, {"a-learner01": ("learner", 'pw,with"odd')})
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert read_accounts(path) == {"a-learner01": ("learner", 'pw,with"odd')}


def test_constraints_relax_only_what_the_base_python_cannot_install(tmp_path):
    old = hub_constraints((3, 11, 2), tmp_path / "old.txt").read_text().splitlines()
    new = hub_constraints((3, 11, 7), tmp_path / "new.txt").read_text().splitlines()
    repo = (Path(__file__).parents[1] / "constraints.txt").read_text().splitlines()
    assert new == repo
    assert [line for line in old if line not in repo] == ["soupsieve==2.10"]


def test_a_root_closed_to_learners_is_refused_by_name(tmp_path):
    """pytest's tmp_path lies under /tmp/pytest-of-root (mode 700): learners could not run the environment."""
    if os.geteuid() != 0:
        pytest.skip("the hub runs as root only")
    closed = next(p for p in tmp_path.parents if p.stat().st_mode & 0o001 == 0)
    with pytest.raises(HubError, match=re.escape(str(closed))):
        Hub(tmp_path / "hub").up()
    assert not (tmp_path / "hub" / "env").exists()


def test_the_fixture_refuses_a_prefix_held_by_a_live_hub_of_another_root(tmp_path):
    """Two test runs at once: the second refuses before it makes or removes anything (tests/hub_fixture.py)."""
    if os.geteuid() != 0:
        pytest.skip("hubs run as root only")
    other = tmp_path / "other"
    (other / "hub").mkdir(parents=True)
    write_accounts(other / "accounts.csv", {"zqx-instructor": ("instructor", "pw")})
    fake = tmp_path / "bin" / "jupyterhub"  # a process that looks like that hub's JupyterHub in /proc
    fake.parent.mkdir()
    fake.write_text("import time\ntime.sleep(120)\n")
    process = subprocess.Popen([sys.executable, fake, "-f", other / "hub" / "jupyterhub_config.py"])
    try:
        deadline = time.monotonic() + 20
        while other.resolve() not in hub_fixture.live_hubs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hub_fixture.live_hubs()[other.resolve()] == process.pid
        assert "zqx-instructor" in (hub_fixture.conflict(tmp_path / "mine", "zqx-") or "")
        assert hub_fixture.conflict(tmp_path / "mine", "zqy-") is None  # another prefix: no clash
        assert "already running" in (hub_fixture.conflict(other, "zqy-") or "")  # its own root, live
    finally:
        process.kill()
        process.wait()
    assert other.resolve() not in hub_fixture.live_hubs()


# ---------------------------------------------------------------- the hub


@pytest.mark.slow
def test_each_server_runs_as_its_own_unix_user(hub):
    import psutil

    hub.start_server(hub.instructor, *hub.learners)
    for user in [hub.instructor, *hub.learners]:
        uid = hub.home(user).stat().st_uid
        servers = [
            p
            for p in psutil.process_iter(["cmdline", "uids"])
            if any("jupyterhub-singleuser" in part for part in p.info["cmdline"] or [])
            and p.info["uids"].real == uid
        ]
        assert len(servers) == 1, f"{user}: {len(servers)} servers run as uid {uid}"
    # and the hub itself only as root: no server of a learner runs as root
    root_servers = [
        p
        for p in psutil.process_iter(["cmdline", "uids"])
        if any("jupyterhub-singleuser" in part for part in p.info["cmdline"] or [])
        and p.info["uids"].real == 0
    ]
    assert root_servers == []
    for user in hub.accounts:
        assert MARKER in os.popen(f"getent passwd {user}").read()


@pytest.mark.slow
def test_learners_cannot_read_each_other_or_the_instructor(hub):
    a, b = hub.learners
    home_b = hub.home(b)
    assert run_as(hub, b, ["sh", "-c", "echo mine > notes.txt"]).returncode == 0
    denied = {
        "the other learner's home": ["ls", home_b],
        "the other learner's file": ["cat", home_b / "notes.txt"],
        "the instructor's course": ["ls", hub.course],
        "the gradebook": ["cat", hub.course / "gradebook.db"],
        "the instructor's repository copy": ["ls", hub.instructor_repo],
        "the solutions": ["cat", hub.instructor_repo / "solutions" / MODULE / f"{MODULE}.ipynb"],
        "the accounts file": ["cat", hub.accounts_file],
        "the hub's secrets": ["ls", hub.state_dir],
    }
    for what, argv in denied.items():
        done = run_as(hub, a, [str(x) for x in argv])
        assert done.returncode != 0 and "Permission denied" in done.stderr, (
            f"{a} can read {what}: {done.stdout}"
        )
    # the positive control: the same commands work for the owner (the checks can tell allowed from denied)
    assert run_as(hub, b, ["cat", str(home_b / "notes.txt")]).stdout == "mine\n"
    assert run_as(hub, hub.instructor, ["ls", str(hub.course)]).returncode == 0


@pytest.mark.slow
def test_formgrader_answers_the_instructor_only(hub):
    hub.start_server(hub.instructor, *hub.learners)
    token = hub.token(hub.instructor)
    status, body = _get(hub, hub.instructor, "formgrader/api/assignments", token)
    assert status == 200 and MODULE in body
    for learner in hub.learners:
        token = hub.token(learner)
        assert _get(hub, learner, "formgrader/api/assignments", token)[0] == 404
        assert _get(hub, learner, "formgrader", token)[0] == 404
        assert _get(hub, learner, "formgrader/api/submissions/" + MODULE, token)[0] == 404
        # their Assignments panel sees the release
        status, body = _get(hub, learner, "assignments?course_id=sysml", token)
        assert status == 200 and MODULE in body
        status, page = _get(hub, learner, "lab", token)
        disabled = json.loads(re.search(r'"disabledExtensions": (\[[^\]]*\])', page).group(1))
        assert {
            "@jupyter/nbgrader:formgrader",
            "@jupyter/nbgrader:create-assignment",
            "@jupyter/nbgrader:course-list",
        } <= set(disabled)
    status, page = _get(hub, hub.instructor, "lab", hub.token(hub.instructor))
    disabled = json.loads(re.search(r'"disabledExtensions": (\[[^\]]*\])', page).group(1))
    assert not any("nbgrader" in name for name in disabled)


@pytest.mark.slow
def test_a_learners_kernel_runs_as_them_and_cannot_read_secrets(hub):
    learner = hub.learners[0]
    hub.start_server(learner)
    out, err = execute(hub, learner, (f"import os\nprint(os.getuid())\nopen({str(hub.accounts_file)!r})\n"))
    assert out.strip() == str(hub.home(learner).stat().st_uid)
    assert "PermissionError" in err


@pytest.mark.slow
def test_submissions_are_walled_and_autograded_in_the_grading_kernel(hub):
    """A learner fetches and submits with nbgrader; the instructor collects and autogrades with formgrader.

    The notebook answers nothing and probes: a cell prints whether the gradebook, the solutions and the
    exchange's inbound can be seen from the kernel that grades it, and two controls beside them. First, as
    the instructor outside any kernel, all three are asserted to exist and be readable: a False in the
    kernel is then the wall, not a wrong path. Which wall: the solutions (instructor-repo/solutions) and the
    inbound (<root>/exchange) are hidden only by the kernel spec's hide list, which the controls show:
    instructor-repo's course/ and the root's wheels/, their siblings, are visible in the same kernel. This
    needs a root outside /tmp (tests/hub_fixture.py: the kernel's /tmp is always private, which would hide
    the exchange whatever the hide list says). The gradebook lies in the instructor's home, which the
    kernel's private home already covers: it is hidden twice, and its probe cannot tell the two apart, so
    the kernel spec's argv is checked to hide the course folder too. The notebook keeps only its test cells
    besides the probe (nbgrader grades what is there; the lesson's cells would cost minutes of CI): every
    test fails, and the score must be 0 of the module's points.
    """
    a, b = hub.learners
    gradebook = hub.course / "gradebook.db"
    inbound = hub.exchange / "sysml" / "inbound"
    solution = hub.instructor_repo / "solutions" / MODULE / f"{MODULE}.ipynb"
    beside_solutions = hub.instructor_repo / "course"  # kept visible in the kernel (the course's code)
    beside_exchange = hub.root / "wheels"  # nothing hides it
    # the controls outside the kernel: the instructor reads all of them (the probe's paths are right)
    for path, test in ((gradebook, "-r"), (solution, "-r"), (inbound, "-x"), (beside_solutions, "-x")):
        done = run_as(hub, hub.instructor, ["test", "-e", path, "-a", test, path, "-a", "-r", path])
        assert done.returncode == 0, f"the instructor cannot read {path}: the probe would prove nothing"
    assert beside_exchange.is_dir() and beside_exchange.stat().st_mode & 0o005 == 0o005
    # the grading kernel's spec hides the course folder (gradebook, other submissions), solutions, exchange
    spec = json.loads((hub.home(hub.instructor) / ".local/share/jupyter/kernels/course-grading/kernel.json")
                      .read_text())
    hidden = {Path(spec["argv"][i + 1]).resolve() for i, arg in enumerate(spec["argv"]) if arg == "--hide"}
    walled = {hub.course, hub.instructor_repo / "solutions", hub.exchange}
    assert {path.resolve() for path in walled} <= hidden, spec["argv"]
    probe = (
        f"import os\nprint('PROBE', os.path.exists({str(gradebook)!r}), "
        f"os.path.exists({str(solution)!r}), os.access({str(inbound)!r}, os.R_OK), "
        f"os.path.isdir({str(beside_solutions)!r}), os.path.isdir({str(beside_exchange)!r}))"
    )
    release = submission(MODULE)
    tests = {c["id"] for c in grade_cells(release)}
    nb = submission(MODULE, drop=tuple(c["id"] for c in release["cells"] if c["id"] not in tests))
    nb["cells"].insert(
        0,
        {
            "cell_type": "code",
            "id": "probe",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": probe,
        },
    )
    done = run_as(hub, b, ["nbgrader", "fetch_assignment", MODULE, "--course", "sysml"])
    assert done.returncode == 0, done.stderr
    run_as(hub, b, ["tee", str(hub.home(b) / MODULE / f"{MODULE}.ipynb")], input=json.dumps(nb))
    done = run_as(hub, b, ["nbgrader", "submit", MODULE, "--course", "sysml"])
    assert done.returncode == 0, done.stderr
    # inbound takes submissions but lists none of them to anyone but the instructor
    listing = run_as(hub, a, ["ls", str(inbound)])
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    assert run_as(hub, hub.instructor, ["ls", str(inbound)]).stdout.count(f"{b}+{MODULE}+") == 1

    # as formgrader's Collect and Autograde buttons do: its API, in the instructor's own server
    course = hub.course
    hub.start_server(hub.instructor)
    token = hub.token(hub.instructor)
    for path in (f"assignment/{MODULE}/collect", f"submission/{MODULE}/{b}/autograde"):
        status, body = _post(hub, hub.instructor, f"formgrader/api/{path}", token)
        assert status == 200 and json.loads(body)["success"], body[-2000:]
    graded = json.loads((course / "autograded" / b / MODULE / f"{MODULE}.ipynb").read_text())
    printed = "".join(
        "".join(o.get("text", "")) for c in graded["cells"] if c.get("id") == "probe" for o in c["outputs"]
    )
    assert printed.strip().endswith("True True"), (
        f"{printed}: the controls beside the hidden paths are out of the grading kernel's sight too; a hub "
        f"root under /tmp or a home ({hub.root}) is private in the kernel whatever its hide list: use one "
        "outside")
    assert printed.strip() == "PROBE False False False True True", printed
    with sqlite3.connect(gradebook) as db:
        (score,) = db.execute(
            "SELECT SUM(g.auto_score) FROM grade g JOIN submitted_notebook n ON g.notebook_id = n.id "
            "JOIN submitted_assignment s ON n.assignment_id = s.id JOIN student st ON s.student_id = st.id "
            "WHERE st.id = ?",
            (b,),
        ).fetchone()
    assert score == 0
    # the tests did run (each test cell has an output: the failure), in the walled kernel
    failed = [c for c in graded["cells"] if c["id"] in tests and c["cell_type"] == "code"]
    assert failed and all(any(o["output_type"] == "error" for o in c["outputs"]) for c in failed)


@pytest.mark.slow
def test_memory_per_learner(hub):
    """PSS of the hub with its proxy, and of a learner's server idle and with 00's first cells run (MiB):
    recorded in test-artifacts/hub-memory.json; INSTRUCTORS.md quotes them."""
    learner = hub.learners[0]
    hub.start_server(learner)
    figures = {"hub+proxy": hub.memory()["hub+proxy"], "learner idle": hub.memory()[learner]}
    setup = (
        "from course import setup\nfrom course.data import load_digit_splits\nimport torch\n"
        f"ctx = setup({MODULE!r})\nprint('ready')"
    )

    def measure():
        figures["learner with 00's kernel"] = hub.memory()[learner]

    out, err = execute(hub, learner, setup, then=measure)
    assert "ready" in out, err
    out_dir = Path(__file__).parents[1] / "test-artifacts"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "hub-memory.json").write_text(json.dumps({k: round(v) for k, v in figures.items()}, indent=1))
    print("hub memory (PSS, MiB):", {k: round(v) for k, v in figures.items()})
    assert 30 < figures["learner idle"] < 600
    assert figures["learner with 00's kernel"] > figures["learner idle"] + 50
