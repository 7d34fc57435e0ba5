"""The lab hub's exchange (autograders/hub/exchange.py, HubCollect; the environment's ExchangeSubmit.strict).

Fast tests (root, no hub): HubCollect in this process on an inbound folder whose entries root hands to two
system accounts (``nobody`` and ``daemon``). Hub tests: learners submit with their own nbgrader and the
instructor collects with theirs, as `nbgrader collect --update` in the course folder (formgrader's Collect
uses the same class). Every check here fails on nbgrader's default collect and submit: a forged entry is
collected (the newest wins), an oversized one or a badly named one makes the collect raise for everyone after
it (and the oversized one deletes the earlier copy), a symlink's target is copied, and a renamed notebook is
submitted with a warning.
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
import urllib.request
from pathlib import Path

import pytest

from tests import hub_fixture
from tests.hub_fixture import run_as

MODULE = "00_orientation"
hub = hub_fixture.hub  # the module-scoped fixture: one hub for this file

root_only = pytest.mark.skipif(
    os.geteuid() != 0, reason="the owner checks need entries of other accounts (root)"
)


# ---------------------------------------------------------------- fast, no hub


def _stamp(minutes: int) -> str:
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(minutes=minutes)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f %Z")


def _entry(inbound: Path, student: str, owner: str, minutes: int, text: str, extra=None) -> Path:
    stamp = _stamp(minutes)
    entry = inbound / f"{student}+a1+{stamp}+r{minutes}"
    entry.mkdir()
    (entry / "a1.ipynb").write_text(text)
    (entry / "timestamp.txt").write_text(stamp)
    for name, size in (extra or {}).items():
        with open(entry / name, "wb") as handle:
            handle.truncate(size)  # sparse: its size counts, no disk is used
    uid = pwd.getpwnam(owner).pw_uid
    for path in [entry, *entry.rglob("*")]:
        os.lchown(path, uid, uid)
    return entry


def _collect(tmp_path: Path, **settings) -> tuple[object, list[tuple[str, str]]]:
    from nbgrader.auth import Authenticator
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config

    from autograders.hub.exchange import HubCollect

    config = Config()
    config.CourseDirectory.root = str(tmp_path / "course")
    config.CourseDirectory.course_id = "sysml"
    config.CourseDirectory.assignment_id = "a1"
    config.Exchange.root = str(tmp_path / "exchange")
    config.ExchangeCollect.update = True
    for key, value in settings.items():
        setattr(config.CourseDirectory, key, value)
    coursedir = CourseDirectory(config=config)
    collect = HubCollect(coursedir=coursedir, authenticator=Authenticator(config=config), config=config)
    collect.start()
    return collect, collect.refused


def _collected(tmp_path: Path, student: str) -> str | None:
    path = tmp_path / "course" / "submitted" / student / "a1" / "a1.ipynb"
    return path.read_text() if path.exists() else None


@pytest.fixture
def inbound(tmp_path):
    folder = tmp_path / "exchange" / "sysml" / "inbound"
    folder.mkdir(parents=True)
    (tmp_path / "course").mkdir()
    return folder


@root_only
def test_an_entry_in_another_students_name_is_dropped_and_the_genuine_one_wins(tmp_path, inbound):
    _entry(inbound, "nobody", "nobody", 1, "nobody's own")
    forged = _entry(inbound, "nobody", "daemon", 2, "daemon's, as nobody")  # newer: nbgrader's newest wins
    _entry(inbound, "daemon", "daemon", 3, "daemon's own")
    (inbound / "daemon+a1+not a time").mkdir()  # any learner may drop any name: nbgrader's collect raises
    _, refused = _collect(tmp_path)
    assert _collected(tmp_path, "nobody") == "nobody's own"
    assert _collected(tmp_path, "daemon") == "daemon's own"
    why = dict(refused)
    assert sorted(why) == sorted([forged.name, "daemon+a1+not a time"])
    assert "in the name of nobody by daemon" in why[forged.name]
    assert "no submission time" in why["daemon+a1+not a time"]


@root_only
@pytest.mark.parametrize("stamp", [None, "not a time"])
def test_an_unfinished_submit_is_skipped_and_the_finished_one_collected(tmp_path, inbound, stamp):
    """nbgrader's submit writes timestamp.txt after the files: a submit that failed part way (a symlink to
    a file the learner may not read, review 24c #6) leaves an entry without one. nbgrader's collect took it
    (graded, though the learner saw the submit fail) and release_feedback then raised for every later
    student. A hand-written timestamp.txt that holds no time would do the same."""
    _entry(inbound, "nobody", "nobody", 1, "nobody's finished submit")
    unfinished = _entry(inbound, "nobody", "nobody", 2, "nobody's failed submit")
    if stamp is None:
        (unfinished / "timestamp.txt").unlink()
    else:
        (unfinished / "timestamp.txt").write_text(stamp)
    _, refused = _collect(tmp_path)
    assert _collected(tmp_path, "nobody") == "nobody's finished submit"
    assert [entry for entry, _ in refused] == [unfinished.name]
    assert ("no timestamp.txt" if stamp is None else "holds no time") in refused[0][1]


def test_release_feedback_tells_an_ungradable_submission_why_and_one_broken_folder_stops_no_one(tmp_path):
    """nbgrader's release gave a learner whose notebook could not be autograded nothing ("Could not find
    feedback", review 24c #7), and raised at the first feedback folder without timestamp.txt, so nobody after
    it got feedback (#3). HubReleaseFeedback releases a page saying why to the first, logs the second by name,
    and releases everyone else's, each under nbgrader's own name for it (the hash a learner's fetch looks
    for)."""
    from nbgrader.auth import Authenticator
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.utils import notebook_hash
    from traitlets.config import Config

    from autograders.hub.exchange import HubReleaseFeedback

    course, exchange = tmp_path / "course", tmp_path / "exchange"
    (course / "release" / "a1").mkdir(parents=True)
    (course / "release" / "a1" / "a1.ipynb").write_text("{}")
    (exchange / "sysml").mkdir(parents=True)
    secrets = {}
    for student, notebook in (("ann", '{"cells": [ broken'), ("bob", "{}"), ("cat", "{}"), ("dan", "{}")):
        folder = course / "submitted" / student / "a1"
        folder.mkdir(parents=True)
        (folder / "a1.ipynb").write_text(notebook)
        (folder / "timestamp.txt").write_text(_stamp(1))
        (folder / "submission_secret.txt").write_text(secrets.setdefault(student, f"secret-{student}"))
        if student != "ann":   # ann's autograde failed: nbgrader removed her autograded copy
            (course / "autograded" / student / "a1").mkdir(parents=True)
            feedback = course / "feedback" / student / "a1"
            feedback.mkdir(parents=True)
            (feedback / "a1.html").write_text(f"<p>Score for {student}</p>")
            (feedback / "submission_secret.txt").write_text(secrets[student])
            if student != "cat":   # cat's folder lost its timestamp.txt
                (feedback / "timestamp.txt").write_text(_stamp(1))
    config = Config()
    config.CourseDirectory.root = str(course)
    config.CourseDirectory.course_id = "sysml"
    config.CourseDirectory.assignment_id = "a1"
    config.Exchange.root = str(exchange)
    coursedir = CourseDirectory(config=config)
    errors = []
    auth = Authenticator(config=config)
    release = HubReleaseFeedback(coursedir=coursedir, authenticator=auth, config=config)
    release.log.error = lambda message, *args: errors.append(message % args)
    release.start()
    out = exchange / "sysml" / "feedback"

    def page(student):
        path = out / f"{notebook_hash(secret=secrets[student], notebook_id='a1')}.html"
        return path.read_text() if path.exists() else None

    assert page("bob") == "<p>Score for bob</p>" and page("dan") == "<p>Score for dan</p>"   # after cat's
    assert page("cat") is None and any("cat" in e and "timestamp.txt" in e for e in errors)
    assert "could not be graded" in page("ann") and "not a readable notebook" in page("ann")
    release.start()                         # again: ann's page is kept, not written anew
    assert "could not be graded" in page("ann")


@root_only
def test_an_oversized_entry_is_skipped_others_collected_and_the_earlier_copy_kept(tmp_path, inbound):
    _entry(inbound, "nobody", "nobody", 1, "nobody v1")
    _collect(tmp_path)
    assert _collected(tmp_path, "nobody") == "nobody v1"
    big = _entry(inbound, "nobody", "nobody", 2, "nobody v2", extra={"big.bin": 150_000_000})
    _entry(inbound, "daemon", "daemon", 3, "daemon's own")
    _, refused = _collect(tmp_path)  # nbgrader's default limit: max_dir_size 100000 kB
    assert _collected(tmp_path, "daemon") == "daemon's own"
    assert _collected(tmp_path, "nobody") == "nobody v1"
    assert [entry for entry, _ in refused] == [big.name]
    assert "more than 100000000 bytes" in refused[0][1] and "big.bin" in refused[0][1]
    # the course's own limit is the one applied
    _entry(inbound, "nobody", "nobody", 4, "nobody v3", extra={"data.bin": 20_000})
    _, refused = _collect(tmp_path, max_dir_size=10)
    assert _collected(tmp_path, "nobody") == "nobody v1" and "more than 10000 bytes" in refused[-1][1]
    assert not list((tmp_path / "course" / "submitted" / "nobody").glob(".collecting-*"))


@root_only
def test_symlinks_and_fifos_in_an_entry_are_refused_never_followed(tmp_path, inbound):
    secret = tmp_path / "solution.ipynb"
    secret.write_text("the solution")
    linked = _entry(inbound, "nobody", "nobody", 1, "nobody's")
    (linked / "sol.ipynb").symlink_to(secret)
    os.lchown(linked / "sol.ipynb", pwd.getpwnam("nobody").pw_uid, -1)
    fifo = _entry(inbound, "daemon", "daemon", 2, "daemon's")
    os.mkfifo(fifo / "pipe")  # nbgrader's copytree would block on it
    os.chown(fifo / "pipe", pwd.getpwnam("daemon").pw_uid, -1)
    _, refused = _collect(tmp_path)
    assert _collected(tmp_path, "nobody") is None and _collected(tmp_path, "daemon") is None
    why = dict(refused)
    assert "is a symlink" in why[linked.name] and "not a regular file" in why[fifo.name]
    # a file of someone else's inside the student's own entry (a hard link, a planted file) is refused too
    planted = _entry(inbound, "nobody", "nobody", 3, "nobody's")
    os.chown(planted / "a1.ipynb", pwd.getpwnam("daemon").pw_uid, -1)
    _, refused = _collect(tmp_path)
    assert "a1.ipynb is daemon's" in dict(refused)[planted.name]


# ---------------------------------------------------------------- the hub


def _notebook(lab, learner: str, text: str) -> None:
    """Mark `learner`'s fetched notebook with `text` (in its metadata)."""
    path = lab.home(learner) / MODULE / f"{MODULE}.ipynb"
    nb = json.loads(path.read_text())
    nb["metadata"]["sysml_test"] = text
    run_as(lab, learner, ["tee", str(path)], input=json.dumps(nb), check=True)


def _submit(lab, learner: str, *extra: str):
    return run_as(lab, learner, ["nbgrader", "submit", MODULE, "--course", "sysml", *extra])


def _newest_entry(lab, student: str) -> Path:
    return max((lab.exchange / "sysml" / "inbound").glob(f"{student}+{MODULE}+*"), key=lambda p: p.name)


def _collect_as_instructor(lab) -> str:
    done = run_as(lab, lab.instructor, ["nbgrader", "collect", "--update", MODULE], cwd=lab.course)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def _collected_mark(lab, student: str) -> str | None:
    path = lab.course / "submitted" / student / MODULE / f"{MODULE}.ipynb"
    return json.loads(path.read_text())["metadata"].get("sysml_test") if path.exists() else None


@pytest.mark.slow
def test_collect_keeps_each_learners_own_work(hub):
    """A forges a submission as B, then submits an oversized one and one with a symlink to the solution: B's
    own newest work is collected, A's earlier collected copy stays, and the collect names each refusal."""
    a, b = hub.learners
    for learner in (a, b):
        done = run_as(hub, learner, ["nbgrader", "fetch_assignment", MODULE, "--course", "sysml"])
        assert done.returncode == 0, done.stderr
    _notebook(hub, b, "b v1")
    assert _submit(hub, b).returncode == 0
    _notebook(hub, a, "a v1")
    assert _submit(hub, a).returncode == 0
    _collect_as_instructor(hub)
    assert (_collected_mark(hub, a), _collected_mark(hub, b)) == ("a v1", "b v1")

    _notebook(hub, a, "forged by a")
    done = _submit(hub, a, "--student", b)
    assert done.returncode == 0, done.stderr  # nbgrader's submit lets anyone name anyone
    forged = _newest_entry(hub, b)
    _notebook(hub, a, "a v2, oversized")
    assert _submit(hub, a).returncode == 0
    oversized = _newest_entry(hub, a)
    run_as(hub, a, ["truncate", "-s", "150M", str(oversized / "big.bin")], check=True)  # sparse
    _notebook(hub, a, "a v3, with a symlink")
    assert _submit(hub, a).returncode == 0
    linked = _newest_entry(hub, a)
    solution = hub.instructor_repo / "solutions" / MODULE / f"{MODULE}.ipynb"
    run_as(hub, a, ["ln", "-s", str(solution), str(linked / "solution.ipynb")], check=True)

    log = _collect_as_instructor(hub)
    assert _collected_mark(hub, b) == "b v1"  # not the forged, newer entry
    assert _collected_mark(hub, a) == "a v1"  # the earlier copy, kept
    assert f"{forged.name}: submitted in the name of {b} by {a}" in log, log
    assert oversized.name in log and "more than 100000000 bytes" in log, log
    assert linked.name in log and "solution.ipynb is a symlink" in log, log
    assert not (hub.course / "submitted" / a / MODULE / "solution.ipynb").exists()

    # B submits again: collected, whatever A's entries hold; by formgrader's Collect (its API, in the
    # instructor's own server, which loads the hub's collect as the terminal's nbgrader does)
    _notebook(hub, b, "b v2")
    assert _submit(hub, b).returncode == 0
    hub.start_server(hub.instructor)
    request = urllib.request.Request(
        f"{hub.url}user/{hub.instructor}/formgrader/api/assignment/{MODULE}/collect",
        method="POST",
        data=b"",
        headers={"Authorization": f"token {hub.token(hub.instructor)}"},
    )
    with urllib.request.urlopen(request, timeout=600) as answer:
        result = json.loads(answer.read())
    assert result["success"], result
    # A's broken entries are skipped again (B's forged one is older than B's own newest: not looked at)
    assert "solution.ipynb is a symlink" in result["log"] and "more than 100000000 bytes" in result["log"]
    assert f"Updating submission: {b}" in result["log"], result["log"]
    assert (_collected_mark(hub, a), _collected_mark(hub, b)) == ("a v1", "b v2")


@pytest.mark.slow
def test_a_renamed_notebook_is_refused_at_submit(hub):
    learner = hub.learners[0]
    folder = hub.home(learner) / MODULE
    if not folder.exists():
        done = run_as(hub, learner, ["nbgrader", "fetch_assignment", MODULE, "--course", "sysml"])
        assert done.returncode == 0, done.stderr
    before = set((hub.exchange / "sysml" / "inbound").glob(f"{learner}+*"))
    renamed = f"{MODULE}-Copy1.ipynb"
    run_as(hub, learner, ["mv", f"{MODULE}.ipynb", renamed], cwd=folder, check=True)
    try:
        done = _submit(hub, learner)
        refused = done.returncode != 0 and "MISSING" in done.stderr and "not submitted" in done.stderr
        assert refused, done.stderr
        assert set((hub.exchange / "sysml" / "inbound").glob(f"{learner}+*")) == before
    finally:
        run_as(hub, learner, ["mv", renamed, f"{MODULE}.ipynb"], cwd=folder, check=True)
