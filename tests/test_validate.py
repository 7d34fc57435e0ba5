"""JupyterLab's Validate button, `make check` and grading agree on the same notebooks (issue 18, case 7).

Three copies of 00_orientation: every answer correct but each one writing to stderr as real code does
(``logging.warning``, ``warnings.warn``, torch's implicit-dim warning, a print to stderr, a write on
file descriptor 2), one wrong answer, and the blank student copy. Each is judged three ways, through
the paths a learner and an instructor use:

- Validate as JupyterLab runs it: a Jupyter server set up by the command `make lab` and Binder's
  postBuild run (``python -m autograders.validate``, here into a scratch user config), started from a
  folder with no nbgrader_config.py (as on Binder or a hub), answering nbgrader's
  ``POST /assignments/validate``, the request the Validate button sends;
- `check.run` (`make check`);
- `grade.grade` (`make grade`), one run for the three.

and the pass/fail of every test cell must be the same in all three. Before the course served Validate,
nbgrader's handler failed the warning copy's test cells (stderr counts as a failure there), and only there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from autograders import check, grade, settings
from tests.notebooks import (
    grade_cells,
    load,
    nbgrader_meta,
    reference_answers,
    solution_path,
    source,
    submission,
)
from tests.processes import stop_session

pytestmark = pytest.mark.slow

MODULE = "00_orientation"
TOKEN = "validate-test"
# Correct answers that talk on stderr, in the ways libraries and learners do: each test cell that calls one
# gets stderr output (warnings.warn's message changes per call, so Python shows it every time).
STDERR_PREFIX = {
    "median_time": "import logging\nlogging.warning('median_time: timing the calls')\n",
    "model_size": ("import sys, warnings\n"
                   "import torch\n"
                   "torch.nn.functional.softmax(torch.ones(2, 3))  # torch: implicit dimension choice\n"
                   "warnings.warn(f'counting {len(list(model.parameters()))} parameter tensors')\n"
                   "print('model_size_bytes: debugging', file=sys.stderr)\n"),
    "train_one_epoch": ("import os, sys\n"
                        "sys.stderr.write('train_one_epoch: starting\\n')\n"
                        "os.write(2, b'train_one_epoch: a C library writes on fd 2\\n')\n"),
}
WRONG_MODEL_SIZE = ("def model_size_bytes(model):\n"
                    "    return sum(p.numel() * p.element_size() for p in model.parameters())")


def _with_stderr(cell_id: str) -> str:
    """The reference answer of `cell_id`, writing to stderr each time the function is called."""
    answer = next(source(c) for c in load(solution_path(MODULE))["cells"] if c["id"] == cell_id)
    body = "".join("    " + line + "\n" for line in STDERR_PREFIX[cell_id].splitlines())
    head, marker, rest = answer.partition("    ### BEGIN SOLUTION\n")
    assert marker, f"no solution region in {cell_id}"
    return head + marker + body + rest


def copies() -> dict[str, dict]:
    """The three learners' notebooks, by name, and what each test cell should come to (True: passes)."""
    answers = reference_answers(MODULE)
    assert set(STDERR_PREFIX) == set(answers), "an exercise of 00 without a stderr variant"
    return {
        "noisy": submission(MODULE, {**answers, **{cid: _with_stderr(cid) for cid in answers}}),
        "wrong": submission(MODULE, {**answers, "model_size": WRONG_MODEL_SIZE}),
        "blank": submission(MODULE),
    }


EXPECTED = {  # a fair instructor's verdict per test cell
    "noisy": {"median_time_tests": True, "model_size_params_tests": True, "model_size_buffers_tests": True,
              "train_one_epoch_tests": True},
    "wrong": {"median_time_tests": True, "model_size_params_tests": True, "model_size_buffers_tests": False,
              "train_one_epoch_tests": True},
    "blank": {"median_time_tests": False, "model_size_params_tests": False, "model_size_buffers_tests": False,
              "train_one_epoch_tests": False},
}


def _test_cells(nb: dict) -> dict[str, str]:
    """grade_id -> source of each test cell (graded, not an answer)."""
    return {nbgrader_meta(c)["grade_id"]: source(c).strip() for c in grade_cells(nb)
            if not nbgrader_meta(c).get("solution")}


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory) -> dict[str, Path]:
    """Each copy in its own folder of a Lab root, as a learner's file (and a class export for grading)."""
    root = tmp_path_factory.mktemp("validate") / "lab"
    paths = {}
    for name, nb in copies().items():
        path = root / name / f"{MODULE}.ipynb"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(nb))
        paths[name] = path
    return paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None, timeout_s: float = 5) -> bytes:
    request = urllib.request.Request(url, data=data, headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:
        return answer.read()


@pytest.fixture(scope="module")
def lab_server(notebooks, tmp_path_factory):
    """JupyterLab set up as `make lab` sets it up, started from a folder with no course config."""
    scratch = tmp_path_factory.mktemp("jupyter")
    elsewhere = scratch / "elsewhere"  # the server's working folder: not the repository, no course config
    elsewhere.mkdir()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(scratch / "config"),
           "JUPYTER_DATA_DIR": str(scratch / "data"), "JUPYTER_RUNTIME_DIR": str(scratch / "runtime"),
           # read that user config before the environment's, as the real install's --sys-prefix config is read
           "JUPYTER_PREFER_ENV_PATH": "0",
           # the course's packages, as the editable install provides them (this checkout's, not another's)
           "PYTHONPATH": os.pathsep.join(filter(None, [str(settings.REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("NBGRADER_EXECUTION", None)
    settings.tools_on_path(env)
    # what `make lab` and Binder's postBuild run, here into the scratch user config, not the environment's
    subprocess.run([sys.executable, "-m", "autograders.validate", "--user"], cwd=settings.REPO, env=env,
                   check=True, capture_output=True)
    settings_dir = scratch / "lab-settings"  # no news pop-up over the toolbar in the browser test
    (settings_dir / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings_dir / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = _free_port()
    log_path = scratch / "server.log"
    root = next(iter(notebooks.values())).parents[1]
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
             "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
             f"--LabApp.user_settings_dir={settings_dir}",
             f"--LabApp.workspaces_dir={scratch / 'workspaces'}",
             *(["--allow-root"] if os.getuid() == 0 else [])],
            cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {server.returncode}:\n"
                                   f"{log_path.read_text()[-3000:]}")
            try:
                _request(url + "/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer:\n{log_path.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield url, root, log_path
    finally:
        stop_session(server)


def validate_button(url: str, root: Path, path: Path, log_path: Path) -> dict[str, bool]:
    """Pass/fail per test cell, as the Validate button gets it from the Lab server."""
    body = json.dumps({"path": str(path.relative_to(root))}).encode()
    answer = json.loads(_request(url + "/assignments/validate", body, timeout_s=900))
    assert answer["success"], f"Validate could not run:\n{answer['value']}\n{log_path.read_text()[-3000:]}"
    value = answer["value"]
    assert not value.get("changed") and not value.get("type_changed"), value
    failed = {cell["source"].strip() for cell in value.get("failed", [])}
    return {grade_id: src not in failed for grade_id, src in _test_cells(load(path)).items()}


@pytest.fixture(scope="module")
def validated(lab_server, notebooks) -> dict[str, dict[str, bool]]:
    url, root, log_path = lab_server
    return {name: validate_button(url, root, path, log_path) for name, path in notebooks.items()}


@pytest.fixture(scope="module")
def checked(notebooks) -> dict[str, dict[str, bool]]:
    return {name: {r.name: r.outcome == "passed" for r in check.run(path)}
            for name, path in notebooks.items()}


@pytest.fixture(scope="module")
def graded(notebooks, tmp_path_factory) -> dict[str, dict[str, bool]]:
    """One grading run of the three copies, as `make grade` runs it; full points on a test cell: passed."""
    export = tmp_path_factory.mktemp("export")
    for name, path in notebooks.items():
        shutil.copy(path, export / f"{name}.ipynb")
    results = grade.grade(MODULE, export, tmp_path_factory.mktemp("graded") / "out")
    points = {nbgrader_meta(c)["grade_id"]: float(nbgrader_meta(c)["points"])
              for c in grade_cells(load(solution_path(MODULE)))}
    by_student = {r.student: r for r in results}
    assert set(by_student) == set(notebooks), by_student
    verdicts = {}
    for name, r in by_student.items():
        assert r.status == "graded", (name, r.status, r.detail)
        verdicts[name] = {gid: r.cells.get(gid) == points[gid] for gid in EXPECTED[name]}
    return verdicts


def test_validate_judges_each_test_cell_fairly(validated):
    """Correct answers that write to stderr pass Validate; a wrong answer and a blank copy fail where due."""
    assert validated == EXPECTED


def test_check_judges_each_test_cell_fairly(checked):
    assert checked == EXPECTED


def test_grading_judges_each_test_cell_fairly(graded):
    assert graded == EXPECTED


def test_validate_check_and_grading_agree(validated, checked, graded):
    for name in EXPECTED:
        assert validated[name] == checked[name] == graded[name], name


def test_validate_uses_the_course_limits(tmp_path, monkeypatch):
    """Validate's configuration, loaded as the Lab server loads it: the course's limits and stderr rule."""
    from autograders import validate

    monkeypatch.chdir(tmp_path)  # nbgrader's loader reads the server's working folder: here, no course config
    config = validate.load_config()
    assert config.Execute.timeout == settings.DEFAULT_CELL_TIMEOUT_S
    assert config.IgnorePattern.pattern == settings.IGNORE_STDERR_PATTERN
    assert validate.IgnorePattern in validate.CourseValidator().preprocessors


def test_the_validate_button_passes_a_correct_answer_that_warns(lab_server, notebooks):
    """The real button in a browser (Debian's Chromium, as in tests/test_browser.py), on the noisy copy."""
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        why = "Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    url, root, _ = lab_server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            tab.goto(f"{url}/lab/tree/{notebooks['noisy'].relative_to(root)}?token={TOKEN}",
                     wait_until="domcontentloaded")
            button = tab.locator(".jp-NotebookPanel:not(.lm-mod-hidden) "
                                 ".jp-NotebookPanel-toolbar .validate-button")
            button.first.wait_for(timeout=120_000)
            tab.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
            button.first.click()
            verdict = tab.locator("#validation-message")  # the body of nbgrader's "Validation Results" dialog
            verdict.first.wait_for(timeout=600_000)
            text = verdict.first.inner_text()
        finally:
            browser.close()
    assert "Success! Your notebook passes all the tests." in text, text


def test_make_lab_and_binder_install_the_course_validate():
    """`make lab` and Binder's postBuild run the install the server test above runs, and the Lab server
    (started outside the repository) can import it: autograders is part of the editable install."""
    makefile = (settings.REPO / "Makefile").read_text()
    assert re.search(r"^lab: .*\$\(LAB_VALIDATE\)", makefile, re.M)
    assert "$(BIN)/python -m autograders.validate --sys-prefix" in makefile
    post = (settings.REPO / "binder" / "postBuild").read_text()
    assert "\npython -m autograders.validate --sys-prefix\n" in post
    assert post.index("pip install") < post.index("-m autograders.validate")
    packages = tomllib.loads((settings.REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert "autograders" in packages["find"]["include"]
