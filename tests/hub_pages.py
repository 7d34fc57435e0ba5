"""Playwright helpers that drive nbgrader's panels in JupyterLab as a learner or an instructor would.

Course infrastructure (tests only): tests/test_hub_browser.py uses them against the lab hub
(`make hub`). Every helper takes a Playwright `Page` (or the formgrader's `Frame`) already at a user's
JupyterLab, waits on conditions (never fixed sleeps; timeouts in milliseconds, generous for two shared
cores) and raises Playwright's TimeoutError, or AssertionError with what the page showed, when the
panel does not do what it should.

Selectors are nbgrader 0.9.6's own, read from its lab extension (the Assignments panel's list ids
``released_assignments_list`` / ``fetched_assignments_list`` / ``submitted_assignments_list``, rows
``.list_item`` with ``.item_name`` and an ``.item_status button``; the dialogs ``.nbgrader-SuccessDialog``
/ ``.nbgrader-ErrorDialog``; the toolbar's ``.validate-button`` with its "Validation Results" dialog),
its Playwright UI tests (nbgrader/tests/ui-tests/assignment_list.spec.ts, formgrader.spec.ts) and its
formgrader's pages (server_extensions/formgrader/static/js/manage_assignments.js, manage_submissions.js:
table cells ``td.collect``, ``td.num-submissions``, ``td.autograde``, ``td.score``, ``td.generate-feedback``,
``td.release-feedback``, and the Bootstrap modals ``#success-modal`` / ``#error-modal``). JupyterHub's login
form (share/jupyterhub/templates/login.html): ``#username_input``, ``#password_input``, ``#login_submit``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

LONG = 240_000  # ms: a notebook run (Validate, autograde) on two shared cores
MEDIUM = 90_000  # ms: a server spawn, an exchange operation
SHORT = 20_000  # ms: a click's effect

NBGRADER_MENU = '#jp-MainMenu .lm-MenuBar-itemLabel:text-is("Nbgrader")'
MENU_ITEM = '#jp-mainmenu-nbgrader li[data-command="{command}"]'


def shoot(page, folder: Path, name: str) -> None:
    """Save a screenshot of `page` as folder/name.png (folder created); never fails the test."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(folder / f"{name}.png"))
    except Exception:  # noqa: BLE001 - a screenshot is evidence, not a check
        pass


def login(page, hub_url: str, name: str, password: str) -> str:
    """Sign in at the hub's login page and wait until `name`'s JupyterLab has loaded; returns its base URL.

    The hub spawns the user's server on first login (spawn-pending page), then redirects to
    /user/<name>/lab. Raises TimeoutError when JupyterLab does not appear within MEDIUM ms.
    """
    page.goto(hub_url.rstrip("/") + "/hub/login", wait_until="domcontentloaded")
    page.fill("#username_input", name)
    page.fill("#password_input", password)
    page.click("#login_submit")
    base = f"{hub_url.rstrip('/')}/user/{name}/"
    page.wait_for_url(re.compile(re.escape(base) + r"lab.*"), timeout=MEDIUM)
    wait_for_lab(page)
    return base


def wait_for_lab(page) -> None:
    """Wait until JupyterLab's main menu bar and file browser have rendered."""
    page.locator("#jp-MainMenu").wait_for(timeout=MEDIUM)
    page.locator(".jp-DirListing").first.wait_for(timeout=MEDIUM)


def menu_commands(page) -> set[str]:
    """The commands the Nbgrader main menu shows (empty when there is no such menu); closes the menu again."""
    menu = page.locator(NBGRADER_MENU)
    if menu.count() == 0:
        return set()
    menu.click()
    # nbgrader's menu plugin adds every item; Lumino collapses (display: none) those whose command no
    # enabled plugin registered, so only the visible ones are what this user has
    items = page.locator("#jp-mainmenu-nbgrader li[data-command]")
    items.first.wait_for(state="attached", timeout=SHORT)
    commands = {item.get_attribute("data-command") for item in items.all() if item.is_visible()}
    opened = page.locator("#jp-mainmenu-nbgrader")
    for attempt in range(3):  # a busy page can miss an Escape (the menu stays open): then click its title
        if attempt == 0:
            page.keyboard.press("Escape")
        else:
            menu.click()  # Lumino's menu bar closes an open menu when its title is clicked again
        try:
            opened.wait_for(state="hidden", timeout=SHORT // 3)
            break
        except Exception:  # noqa: BLE001 - Playwright's TimeoutError: try once more
            continue
    opened.wait_for(state="hidden", timeout=SHORT)
    return commands


def open_from_menu(page, command: str, tab_label: str) -> None:
    """Nbgrader menu -> the item of `command`; wait for the main-area tab called `tab_label` to be current.

    Clicks the menu again while its item has not shown (a click that lands while the menu bar is still
    closing a menu only closes it).
    """
    item = page.locator(MENU_ITEM.format(command=command))
    deadline = time.monotonic() + SHORT / 1000
    while not item.is_visible():
        assert time.monotonic() < deadline, f"the Nbgrader menu shows no {command}"
        page.locator(NBGRADER_MENU).click()
        try:
            item.wait_for(state="visible", timeout=3000)
        except Exception:  # noqa: BLE001 - click the menu again
            pass
    item.click()
    current = page.locator("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel")
    current.filter(has_text=tab_label).wait_for(timeout=SHORT)


# --- the learner's Assignments panel -------------------------------------------------------------

def open_assignments(page) -> None:
    """Open nbgrader's Assignments panel from the Nbgrader menu and wait until its lists have loaded."""
    open_from_menu(page, "nbgrader:open-assignment-list", "Assignments")
    for name in ("released", "fetched", "submitted"):
        page.locator(f"#{name}_assignments_list").wait_for(state="attached", timeout=SHORT)
        page.locator(f"#{name}_assignments_list_loading").wait_for(state="hidden", timeout=MEDIUM)


def refresh_assignments(page) -> None:
    """Click the panel's refresh button and wait for the three lists to finish loading."""
    page.click("#refresh_assignments_list")
    for name in ("released", "fetched", "submitted"):
        page.locator(f"#{name}_assignments_list_loading").wait_for(state="hidden", timeout=MEDIUM)


def assignment_row(page, listing: str, assignment: str):
    """The top-level row of `assignment` in one of the panel's lists ("released", "fetched", "submitted")."""
    rows = page.locator(f"#{listing}_assignments_list > .list_item")
    return rows.filter(has=page.locator(".item_name", has_text=assignment)).first


def _list_error(page) -> str:
    errors = page.locator(".alert-danger:visible, .nbgrader-ErrorDialog")
    return " | ".join(errors.all_inner_texts())


def fetch(page, assignment: str) -> None:
    """Fetch `assignment` from the released list; wait until it shows under "Downloaded assignments"."""
    row = assignment_row(page, "released", assignment)
    row.wait_for(timeout=MEDIUM)
    row.locator(".item_status button").click()
    try:
        assignment_row(page, "fetched", assignment).wait_for(timeout=MEDIUM)
    except Exception as err:
        raise AssertionError(f"{assignment} was not fetched; the panel says: {_list_error(page)!r}") from err


def _submissions(page, assignment: str) -> int:
    """How many submissions of `assignment` the panel's "Submitted assignments" list shows (one row each)."""
    return assignment_row(page, "submitted", assignment).locator(".nested_list_item").count()


def submit(page, assignment: str) -> None:
    """Submit the fetched `assignment`; wait until one more submission of it is listed as submitted."""
    before = _submissions(page, assignment)
    row = assignment_row(page, "fetched", assignment)
    row.locator('.item_status button:text-is("Submit")').click()
    deadline = time.monotonic() + MEDIUM / 1000
    while time.monotonic() < deadline:
        if page.locator(".nbgrader-ErrorDialog, #submission-message").count():
            raise AssertionError(f"submitting {assignment} failed: {_list_error(page)!r}")
        if _submissions(page, assignment) > before:
            return
        page.wait_for_timeout(500)
    raise AssertionError(f"{assignment} did not appear as submitted; the panel says: {_list_error(page)!r}")


def fetch_feedback(page, assignment: str) -> None:
    """Click "Fetch Feedback" on the submitted `assignment`; wait until "(view feedback)" shows."""
    row = assignment_row(page, "submitted", assignment)
    row.wait_for(timeout=MEDIUM)
    row.locator('.item_status button:text-is("Fetch Feedback")').click()
    page.locator("#submitted_assignments_list a", has_text="(view feedback)").first.wait_for(timeout=MEDIUM)


# --- notebooks, files and the Jupyter API with the user's own session -------------------------------

def api(page, base: str, method: str, path: str, body: dict | None = None) -> tuple[int, str]:
    """Call the user's Jupyter server REST API from inside the page, with the browser's session cookies.

    `path` is relative to `base` (the user's server URL, ending in /). Sends the _xsrf cookie back as
    X-XSRFToken, as JupyterLab itself does. Returns (HTTP status, response text).
    """
    return tuple(page.evaluate(
        """async ([url, method, body]) => {
               const xsrf = (document.cookie.match('\\\\b_xsrf=([^;]*)') || [])[1];
               const headers = {'Content-Type': 'application/json'};
               if (xsrf) headers['X-XSRFToken'] = decodeURIComponent(xsrf);
               const r = await fetch(url, {method, headers, credentials: 'same-origin',
                                           body: body === null ? undefined : JSON.stringify(body)});
               return [r.status, await r.text()];
           }""", [base + path, method, body]))


def read_notebook(page, base: str, path: str) -> dict:
    """The notebook at `path` (relative to the user's home) through the contents API."""
    status, text = api(page, base, "GET", f"api/contents/{path}?content=1&type=notebook")
    assert status == 200, f"GET {path}: {status} {text[:300]}"
    return json.loads(text)["content"]


def write_file(page, base: str, path: str, content: dict | str) -> None:
    """Save a notebook (dict) or a text file (str) at `path` in the user's home through the contents API."""
    if isinstance(content, dict):
        model = {"type": "notebook", "format": "json", "content": content}
    else:
        model = {"type": "file", "format": "text", "content": content}
    status, text = api(page, base, "PUT", f"api/contents/{path}", model)
    assert status in (200, 201), f"PUT {path}: {status} {text[:300]}"


def open_notebook(page, base: str, path: str) -> None:
    """Open the notebook at `path` in JupyterLab and wait for its kernel to be idle."""
    page.goto(base + "lab/tree/" + path, wait_until="domcontentloaded")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").first.wait_for(timeout=MEDIUM)
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status='idle'],"
                 " :text('| Idle')").first.wait_for(timeout=LONG)


def replace_cell_text(page, index: int, text: str) -> None:
    """Type `text` into the editor of the `index`th cell of the notebook in view, replacing what it held.

    Uses the real CodeMirror editor: click into it, select all, and insert the text as one input event
    (keyboard typing would have the editor auto-indent every line again).
    """
    cell = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(index)
    cell.scroll_into_view_if_needed()
    editor = cell.locator(".cm-content")
    editor.click()
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(text)
    editor.filter(has_text=text.splitlines()[0]).wait_for(timeout=SHORT)


def validate_in_toolbar(page) -> str:
    """Click the notebook toolbar's Validate (which saves first); return the text of its results dialog,
    once it shows a verdict ("Success! Your notebook passes all the tests.", the failed cells or an error)."""
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-NotebookPanel-toolbar .validate-button").click()
    dialog = page.locator(".jp-Dialog", has_text="Validation Results")
    dialog.wait_for(timeout=LONG)
    dialog.locator(".validation-success, .validation-failed, pre").first.wait_for(timeout=LONG)
    return dialog.inner_text()


def close_dialog(page) -> None:
    """Press the OK button of the JupyterLab dialog on top and wait for it to go."""
    page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept").last.click()
    page.locator(".jp-Dialog").wait_for(state="detached", timeout=SHORT)


# --- the instructor's formgrader -----------------------------------------------------------------

def open_formgrader(page, base: str, in_lab: bool = False):
    """Formgrader's Manage Assignments, as a Frame/Page to drive with the helpers below.

    `in_lab`: open it from the Nbgrader menu into JupyterLab's Formgrader panel and return the panel's
    iframe. JupyterHub 4.1 and later forbid framing a user's server (Content-Security-Policy
    frame-ancestors; nbgrader issue #1870), so on the hub the panel stays blank and the instructor opens
    ``<server>/formgrader`` itself: the default, in `page`.
    """
    if not in_lab:
        manage_assignments(page, base)
        return page
    open_from_menu(page, "nbgrader:open-formgrader", "Formgrader")
    deadline = time.monotonic() + MEDIUM / 1000
    while time.monotonic() < deadline:
        for frame in page.frames:
            if "/formgrader" in frame.url:
                frame.locator("ol.breadcrumb").wait_for(timeout=MEDIUM)
                return frame
        page.wait_for_timeout(250)
    raise AssertionError("the Formgrader tab has no formgrader frame")


def _modal(frame, timeout: int) -> tuple[str, str]:
    """Wait for formgrader's success or error modal; return (its id, its text) and close it."""
    modal = frame.locator("#success-modal.in, #error-modal.in").first
    modal.wait_for(timeout=timeout)
    kind, text = modal.get_attribute("id"), modal.inner_text()
    modal.locator(".modal-footer button").click()
    modal.wait_for(state="detached", timeout=SHORT)
    return kind, text


def manage_assignments(frame, base: str) -> None:
    """Show formgrader's Manage Assignments page in `frame`."""
    frame.goto(base + "formgrader/manage_assignments", wait_until="domcontentloaded")
    frame.locator("#main-table td.name").first.wait_for(timeout=MEDIUM)


def _assignment_cell(frame, assignment: str, column: str):
    row = frame.locator("#main-table tr").filter(has=frame.locator(f'td.name[data-order="{assignment}"]'))
    return row.locator(f"td.{column}")


def assignment_action(frame, assignment: str, column: str, timeout: int = LONG) -> str:
    """Click the link in `column` ("collect", "generate-feedback", "release-feedback") of `assignment`'s
    row of Manage Assignments; return the success modal's text. AssertionError with the text on an error."""
    _assignment_cell(frame, assignment, column).locator("a").click()
    kind, text = _modal(frame, timeout)
    assert kind == "success-modal", f"{column} of {assignment} failed: {text}"
    return text


def submissions_count(frame, assignment: str) -> int:
    """The "# Submissions" of `assignment` on Manage Assignments."""
    return int(_assignment_cell(frame, assignment, "num-submissions").get_attribute("data-order"))


def manage_submissions(frame, base: str, assignment: str) -> None:
    """Show the submissions of `assignment` (one row per student) in `frame`."""
    frame.goto(f"{base}formgrader/manage_submissions/{assignment}", wait_until="domcontentloaded")
    frame.locator("#main-table td.student-id").first.wait_for(timeout=MEDIUM)


def _submission_row(frame, student: str):
    return frame.locator("#main-table tr").filter(has=frame.locator(f'td.student-id[data-order="{student}"]'))


def autograde(frame, student: str) -> tuple[str, str]:
    """Click Autograde on `student`'s row; return (modal id, modal text): "success-modal" or "error-modal"."""
    row = _submission_row(frame, student)
    row.locator("td.autograde a").click()
    return _modal(frame, LONG)


def submission_rows(frame) -> dict[str, dict[str, str]]:
    """student id -> {"status": ..., "score": ...} as Manage Submissions shows them now."""
    frame.locator("#main-table td.student-id").first.wait_for(timeout=MEDIUM)
    rows = {}
    for row in frame.locator("#main-table tr").all():
        if row.locator("td.student-id").count():
            rows[row.locator("td.student-id").inner_text().strip()] = {
                "status": row.locator("td.status").inner_text().strip(),
                "score": row.locator("td.score").inner_text().strip()}
    return rows


def feedback_score(text: str, notebook: str) -> tuple[float, float]:
    """(score, max score) from the heading "<notebook> (Score: 6.0 / 6.0)" of nbgrader's feedback page
    (nbgrader/server_extensions/formgrader/templates/feedback/index.html.j2). AssertionError if absent."""
    found = re.search(re.escape(notebook) + r"\s*\(Score:\s*([\d.]+)\s*/\s*([\d.]+)\)", text)
    assert found, f"no score for {notebook} in the feedback page: {text[:500]!r}"
    return float(found[1]), float(found[2])


def read_feedback(page, assignment: str, contains: str = "Score:") -> str:
    """Open the fetched feedback of `assignment` as a learner does and return the feedback page's text.

    Clicks "(view feedback)" in the Assignments panel (the file browser goes to the feedback folder),
    opens the notebook's .html there with a double-click (JupyterLab's HTML viewer) and reads its frame:
    the first that holds `contains` (nbgrader's pages: their score; the hub's page for an ungradable
    submission: "could not be graded").
    """
    row = assignment_row(page, "submitted", assignment)
    row.locator("a", has_text="(view feedback)").last.click()
    page.locator(".jp-FileBrowser-crumbs", has_text="feedback").wait_for(timeout=SHORT)
    item = page.locator(".jp-DirListing-item", has_text=f"{assignment}.html")
    item.wait_for(timeout=SHORT)
    item.dblclick()
    deadline = time.monotonic() + MEDIUM / 1000
    while time.monotonic() < deadline:
        for frame in page.frames:
            try:
                text = frame.locator("body").inner_text(timeout=1000)
            except Exception:  # noqa: BLE001 - a frame still loading or gone
                continue
            if contains in text:
                return text
        page.wait_for_timeout(500)
    raise AssertionError(f"no feedback page of {assignment} holding {contains!r} opened")
