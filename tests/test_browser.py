"""The course as a learner meets it: `make lab` serves JupyterLab, a real browser runs the orientation.

Starts JupyterLab with the README's own command (`make lab`, pointed at a copy of the course so
nothing in the repository is saved over), drives Debian's headless Chromium with Playwright's
client (no browser download: `.ci/run` installs the `chromium` package), opens the start page,
runs every cell of a learner's finished orientation notebook, and checks that the outputs and the
plots appear, that nothing failed, and that nbgrader's Validate button is in the toolbar.
Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from autograders.settings import REPO
from tests.notebooks import reference_answers, submission
from tests.processes import stop_session

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts" / "browser"
START = "modules/00_orientation/00_orientation.ipynb"
BLANK = "modules/00_orientation/blank_copy.ipynb"
# Chromium on a closed network: no background calls home, no sandbox as root (the probe's flags)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, server: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"make lab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`make lab` serving a copy of the course, with a learner's finished orientation notebook."""
    if not Path(CHROMIUM).exists():
        why = "Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(why)  # CI must run this test, not skip it
        pytest.skip(why)
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(REPO / "modules" / "00_orientation", root / "modules" / "00_orientation")
    shutil.copy(REPO / "README.md", root / "README.md")
    finished = submission("00_orientation", reference_answers("00_orientation"))
    (root / START).write_text(json.dumps(finished))
    shutil.copy(REPO / START, root / BLANK)  # the student copy as released: no exercise answered
    # no autosave (nothing is written back), and every cell in the page, not only those scrolled to
    for plugin, values in {"docmanager-extension/plugin": {"autosave": False},
                           "notebook-extension/tracker": {"windowingMode": "none"}}.items():
        folder, name = plugin.split("/")
        (root / "settings" / "@jupyterlab" / folder).mkdir(parents=True, exist_ok=True)
        target = root / "settings" / "@jupyterlab" / folder / f"{name}.jupyterlab-settings"
        target.write_text(json.dumps(values))

    port = _free_port()
    # No news or update settings here: the course's own (binder/overrides.json, installed by make lab)
    # must keep Jupyter's "get notified about news?" pop-up away, and a test below looks for it.
    lab_args = (f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token= "
                f"--ServerApp.password= --LabApp.user_settings_dir={root}/settings "
                f"--LabApp.workspaces_dir={root}/workspaces")
    log = open(root / "lab.log", "w")
    command = ["make", "-s", "lab", f"LAB_ROOT={root}", f"LAB_ARGS={lab_args}"]
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the suite's Agg would hide the plots
    server = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env=env)
    try:
        _wait_for(f"http://127.0.0.1:{port}/api/status", server, root / "lab.log", timeout_s=120)
        yield f"http://127.0.0.1:{port}", root
    finally:
        stop_session(server)
        log.close()


@pytest.fixture(scope="module")
def page(lab):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.goto(lab[0] + "/", wait_until="domcontentloaded")  # where `make lab` opens: the start page
        yield tab
        browser.close()


def _cells_not_run(tab) -> int:
    """Code cells of the notebook in view whose prompt shows no execution count yet ("[ ]:" or "[*]:")."""
    return tab.evaluate("""() => [...document.querySelectorAll(
                                   '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-CodeCell .jp-InputPrompt')]
                                 .filter(p => !/\\[\\d+\\]/.test(p.textContent)).length""")


def _run_all(tab, timeout_s: float = 240) -> None:
    """Run → Run All Cells on the notebook in view, once its kernel is idle; wait until every code cell ran."""
    tab.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)  # the kernel has started
    tab.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").first.click()
    tab.get_by_role("menuitem", name="Run", exact=True).click()
    tab.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    deadline = time.monotonic() + timeout_s
    while _cells_not_run(tab) and time.monotonic() < deadline:
        time.sleep(1)


def test_the_start_page_opens_the_orientation_notebook(page):
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
    notebook.wait_for(timeout=120_000)
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
    heading = page.locator(".jp-Notebook .jp-MarkdownOutput h1").first
    heading.wait_for(timeout=30_000)
    assert "Orientation" in heading.inner_text()
    page.screenshot(path=str(ARTIFACTS / "01_start_page.png"))
    assert page.url.endswith("/lab/tree/" + START)  # where `make lab` lands: the orientation notebook
    tab = page.locator("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current")
    assert "00_orientation.ipynb" in tab.inner_text()


def test_the_validate_button_is_in_the_toolbar(page):
    button = page.locator(".jp-NotebookPanel-toolbar .validate-button")
    button.first.wait_for(timeout=30_000)
    assert "Validate" in button.first.inner_text()


def test_running_every_cell_shows_outputs_and_plots(page):
    _run_all(page)
    assert _cells_not_run(page) == 0, "some cells had not run after 4 minutes"
    outputs = page.locator(".jp-Notebook .jp-OutputArea-output")
    plots = page.locator(".jp-Notebook .jp-OutputArea-output img")
    text = "\n".join(outputs.all_inner_texts())
    page.screenshot(path=str(ARTIFACTS / "02_after_run_all.png"), full_page=True)
    assert outputs.count() > 15 and plots.count() >= 2, (outputs.count(), plots.count())
    assert "Traceback" not in text and "NotImplementedError" not in text
    assert "all visible checks passed" in text
    page.screenshot(path=str(ARTIFACTS / "02_after_run_all.png"))
    plots.first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "03_first_plot.png"))
    plots.last.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "04_last_plot.png"))


def test_stuck_hints_reveal_more_in_steps(page):
    first = page.locator(".jp-Notebook details").first
    first.scroll_into_view_if_needed()
    second = first.locator("details").first
    assert not second.is_visible()  # closed: only the first summary shows
    first.locator("summary").first.click()
    second.wait_for(state="visible", timeout=10_000)
    assert "Still stuck?" in second.locator("summary").first.inner_text()
    page.screenshot(path=str(ARTIFACTS / "05_stuck_hint_opened.png"))


def test_no_news_pop_up_greets_the_learner(page):
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
    toasts = page.locator(".Toastify__toast")
    texts = " ".join(toasts.all_inner_texts())
    assert "news" not in texts.lower(), f"JupyterLab asks about news: {texts!r}"


def test_run_all_on_a_blank_copy_reaches_every_demo(lab, page):
    """A learner's first Run All on the student copy: unanswered test cells fail, and Run All goes on past
    them (they are tagged raises-exception), so every demo below runs, as the instructors' guide promises."""
    page.goto(lab[0] + "/lab/tree/" + BLANK, wait_until="domcontentloaded")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
    _run_all(page)
    page.screenshot(path=str(ARTIFACTS / "06_blank_copy_run_all.png"))
    assert _cells_not_run(page) == 0, "Run All stopped before the end of the student copy"
    text = "\n".join(page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output").all_inner_texts())
    assert "NotImplementedError" in text  # the unanswered exercises' test cells say so
    plots = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output img")
    assert plots.count() >= 2, "the demos after the exercises drew no plots"  # they ran past the exercises
