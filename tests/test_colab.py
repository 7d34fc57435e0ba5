"""Colab support: the install cell, the package's extras and files, setup's version report (course/colab.py).

The heavy check, every notebook's first cells in a Colab-like environment, is `make colab-check`
(tests/colab_like.py); these are the fast ones.
"""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from contextlib import redirect_stdout
from pathlib import Path

import nbformat
import pytest

from course import colab, env

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
NOTEBOOKS = colab.solution_notebooks(REPO)


def requirement_pins() -> dict[str, str]:
    """requirements.txt as {name: version}, under its name as written (lower case, extras and all) and
    bare."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = pins[bare(name.strip())] = version.strip()
    return pins


def bare(name: str) -> str:
    return re.sub(r"\[.*\]", "", name).lower().replace("_", "-")


def install_cell(path: Path):
    nb = nbformat.read(path, as_version=4)
    ids = [cell.get("id") for cell in nb.cells]
    assert colab.CELL_ID in ids, f"{path.name}: no install cell (python -m course.colab --write)"
    index = ids.index(colab.CELL_ID)
    assert index + 1 == colab.setup_index(nb, path.stem), f"{path.name}: the install cell goes before setup"
    return nb.cells[index]


# ---------------------------------------------------------------- the install cell

@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_install_cell_is_the_same_in_every_notebook_but_for_the_extra(path):
    cell = install_cell(path)
    assert cell.source == colab.install_cell_source(path.stem, colab.default_source(REPO / "pyproject.toml"))
    assert f"sysml-course[{colab.extra_name(path.stem)}] @ " in cell.source
    assert colab.extra_name(path.stem) in EXTRAS, f"pyproject.toml has no extra for {path.stem}"
    assert not cell.get("metadata", {}).get("nbgrader"), "the install cell is no graded or solution cell"
    other = install_cell(NOTEBOOKS[0])
    assert cell.source.replace(colab.extra_name(path.stem), "X") == \
        other.source.replace(colab.extra_name(NOTEBOOKS[0].stem), "X")


def test_cells_are_up_to_date_with_the_generator():
    assert colab.write_install_cells(REPO, check=True) == []


def test_default_source_is_the_repository_named_in_pyproject(tmp_path):
    """One place names the repository: pyproject.toml's [project.urls] (the links helper writes it there)."""
    expected = PYPROJECT["project"]["urls"]["Repository"]
    assert colab.default_source(REPO / "pyproject.toml").startswith(f"git+{expected.rstrip('/')}")
    other = tmp_path / "pyproject.toml"
    other.write_text('[project]\nname = "x"\n[project.urls]\nRepository = "https://github.com/me/fork/"\n')
    assert colab.default_source(other) == "git+https://github.com/me/fork.git@main"
    other.write_text(other.read_text() + '[tool.sysml-course]\nbranch = "v2"\n')
    assert colab.default_source(other) == "git+https://github.com/me/fork.git@v2"


def run_cell(source: str, monkeypatch, *, course_missing: bool):
    """Execute the cell's code as a kernel would, with pip replaced by a recorder; (pip calls, printed)."""
    import importlib.util

    calls = []
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if course_missing and name == "course" else real_find_spec(name, *args)

    def fake_run(args, **kwargs):
        calls.append((list(args), Path(args[args.index("-c") + 1]).read_text()))
        report = args[args.index("--report") + 1]
        Path(report).write_text(json.dumps({"install": [
            {"metadata": {"name": "sysml-course", "version": "0.1.0"}},
            {"metadata": {"name": "snntorch", "version": "1.0.0"}}]}))
        return subprocess.CompletedProcess(args, 0)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(subprocess, "run", fake_run)
    out = io.StringIO()
    with redirect_stdout(out):
        exec(compile(source, "install", "exec"), {})
    return calls, out.getvalue()


def test_install_cell_does_nothing_where_the_course_is_importable(monkeypatch):
    calls, printed = run_cell(colab.install_cell_source("02_snn"), monkeypatch, course_missing=False)
    assert calls == [] and printed == ""


def test_install_cell_installs_from_course_source_and_holds_torch(monkeypatch):
    """Without `course`, pip installs the course with the module's extra from COURSE_SOURCE, under constraints
    that hold the runtime's torch and numpy, and the cell says what it installed and kept."""
    import numpy
    import torch

    monkeypatch.setenv("COURSE_SOURCE", "file:///wheels/sysml_course-0.1.0-py3-none-any.whl")
    calls, printed = run_cell(colab.install_cell_source("02_snn"), monkeypatch, course_missing=True)
    (args, constraints), = calls
    assert args[:4] == [sys.executable, "-m", "pip", "install"]
    assert args[-1] == "sysml-course[02-snn] @ file:///wheels/sysml_course-0.1.0-py3-none-any.whl"
    assert f"torch=={torch.__version__}" in constraints.splitlines()
    assert f"numpy=={numpy.__version__}" in constraints.splitlines()
    assert "Installed the course 0.1.0 from file:///wheels" in printed and "snntorch 1.0.0" in printed
    assert f"Kept this runtime's torch {torch.__version__}" in printed


def test_install_cell_default_source_is_the_repository(monkeypatch):
    monkeypatch.delenv("COURSE_SOURCE", raising=False)
    calls, _ = run_cell(colab.install_cell_source("07b_serving"), monkeypatch, course_missing=True)
    assert calls[0][0][-1] == f"sysml-course[07b-serving] @ {colab.default_source()}"


def test_describe_install_names_what_pip_changed_under_the_running_kernel(tmp_path):
    """A library this process had imported before pip replaced it: the note says so (its old version stays
    loaded); a distribution nothing here imported gets no note."""
    report = tmp_path / "pip.json"
    report.write_text(json.dumps({"install": [
        {"metadata": {"name": "typing_extensions", "version": "4.12.2"}},
        {"metadata": {"name": "numpy", "version": "9.9.9"}}]}))
    assert "numpy" in sys.modules and "typing_extensions" in sys.modules
    text = colab.describe_install(report, 3.2)
    assert "pip changed numpy, typing_extensions, which this kernel had already imported" in text
    assert "Kept this runtime's torch" in text and "numpy" not in text.split("Kept")[1].split(".")[0]
    report.write_text(json.dumps({"install": [{"metadata": {"name": "sysml-course", "version": "0.1.0"}},
                                              {"metadata": {"name": "no-such-dist", "version": "1.0"}}]}))
    text = colab.describe_install(report, 3.2, "git+https://x")
    assert "already imported" not in text and "in 3 s, with 1 other package: no-such-dist 1.0" in text
    assert "No restart needed" in text and "RESTART" not in text


def test_describe_install_tells_what_to_do_after_replacing_the_runtimes_packages(tmp_path):
    """01_edge on Colab (tests/colab_like.py, 2026-08 runtime): pip replaces Colab's protobuf 5 by 7 (onnx)
    and downgrades typing_extensions; the summary names both with their old versions and explains pip's red
    conflict ERROR. A loaded package pip downgraded needs no restart (the newer one stays loaded); one it
    upgraded does, and the summary says exactly how."""
    report = tmp_path / "pip.json"
    report.write_text(json.dumps({"install": [
        {"metadata": {"name": "protobuf", "version": "7.36.2"}},
        {"metadata": {"name": "typing_extensions", "version": "4.12.2"}},
        {"metadata": {"name": "onnx", "version": "1.23.2"}}]}))
    assert "typing_extensions" in sys.modules
    before = {"protobuf": "5.29.6", "typing-extensions": "4.16.0", "torch": "2.11.0"}
    text = colab.describe_install(report, 20, "x", before)
    assert "Replaced this runtime's protobuf 5.29.6 -> 7.36.2, typing_extensions 4.16.0 -> 4.12.2 (" in text
    assert "onnx" not in text.split("Replaced")[1].split("\n")[0]
    assert "grpcio-status wants protobuf < 6" in text
    assert "pip downgraded typing_extensions" in text and "RESTART" not in text
    assert "No restart needed" in text
    text = colab.describe_install(report, 20, "x", {**before, "typing_extensions": "4.10.0"})
    assert "RESTART NEEDED: pip changed typing_extensions" in text
    assert "Runtime > Restart session, then run the notebook again from the top" in text
    text = colab.describe_install(report, 20, "x", {"protobuf": "7.0.0"})
    assert "protobuf 7.0.0 -> 7.36.2" in text and "grpcio-status" not in text
    assert "Replaced" not in colab.describe_install(report, 20, "x")


def test_on_colab_follows_colab_release_tag(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert colab.on_colab() is False  # no google.colab here
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260819-060048_RC00")
    assert colab.on_colab() is True


# ---------------------------------------------------------------- extras and the wheel

def test_extras_pin_what_requirements_txt_pins():
    """Each extra's library carries requirements.txt's exact pin (extras too: flwr[simulation])."""
    pins = requirement_pins()
    assert EXTRAS, "pyproject.toml has no [project.optional-dependencies]"
    for extra, requirements in EXTRAS.items():
        for requirement in requirements:
            name, _, version = requirement.partition("==")
            assert version, f"{extra}: {requirement} is not pinned exactly"
            assert pins.get(name.lower()) == version, (
                f"{extra}: {requirement}, but requirements.txt pins {name}=={pins.get(name.lower())}")


def test_dependencies_leave_colabs_libraries_unpinned():
    """What Colab ships (torch, numpy, ...) carries at most a lower bound, so pip keeps Colab's build."""
    for requirement in PYPROJECT["project"]["dependencies"]:
        assert "==" not in requirement and "<" not in requirement, requirement
    names = {bare(re.split(r"[<>=!~ ;]", r)[0]) for r in PYPROJECT["project"]["dependencies"]}
    assert {"torch", "numpy"} <= names


def test_extra_names_are_pep685_normalised_notebook_ids():
    assert sorted(EXTRAS) == sorted(colab.extra_name(p.stem) for p in NOTEBOOKS)
    for extra in EXTRAS:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", extra), extra


#: Top-level import -> the distribution (in `dependencies` or the notebook's extra) that provides it.
PROVIDED_BY = {"torch": "torch", "numpy": "numpy", "matplotlib": "matplotlib", "scipy": "scipy",
               "psutil": "psutil", "tqdm": "tqdm", "IPython": "ipython", "ipywidgets": "ipywidgets",
               "snntorch": "snntorch",
               "flwr": "flwr", "ray": "flwr", "opacus": "opacus", "torchao": "torchao", "onnx": "onnx",
               "onnxscript": "onnxscript", "onnxruntime": "onnxruntime", "litert_torch": "litert-torch",
               "ai_edge_litert": "ai-edge-litert", "fastapi": "fastapi", "starlette": "fastapi",
               "pydantic": "fastapi", "uvicorn": "uvicorn", "httpx": "httpx", "cloudpickle": "cloudpickle"}
#: Imports a notebook reaches in the scan but never runs, with the reason.
NOT_NEEDED = {
    "pynvml": "course.accelerators reads NVML only when pynvml imports (Colab ships nvidia-ml-py)",
    "nbformat": "course.colab's cell writer only: a maintainer's tool (python -m course.colab --write)",
    "02_snn:onnx": "course.edge imports these inside 01's export and quantization functions; 02 uses its "
                   "energy table and distillation loss only",
    "02_snn:onnxruntime": "as onnx", "02_snn:torchao": "as onnx",
}


def imports_of(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "course":
                found |= {f"course.{alias.name}" for alias in node.names}
    return found


def third_party_imports(path: Path) -> set[str]:
    """Top-level names a notebook imports, itself or through the course modules it imports (transitively,
    imports inside functions included)."""
    from IPython.core.inputtransformer2 import TransformerManager

    names = set()
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code" and cell.get("id") != colab.CELL_ID:
            names |= imports_of(TransformerManager().transform_cell(cell.source))
    seen, todo, third = set(), sorted(names), set()
    while todo:
        name = todo.pop()
        top = name.split(".")[0]
        if top == "course":
            if name in seen:
                continue
            seen.add(name)
            path = REPO / name.replace(".", "/")
            for candidate in (path.with_suffix(".py"), path / "__init__.py"):
                if candidate.exists():
                    todo += sorted(imports_of(candidate.read_text()))
        elif top not in sys.stdlib_module_names and top != "__future__":
            third.add(top)
    return third


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_import_is_colabs_or_in_the_notebooks_extra(path):
    provided = {bare(re.split(r"[<>=!~ ;]", r)[0]) for r in PYPROJECT["project"]["dependencies"]}
    provided |= {bare(r.split("==")[0]) for r in EXTRAS[colab.extra_name(path.stem)]}
    missing = []
    for name in sorted(third_party_imports(path)):
        if name in NOT_NEEDED or f"{path.stem}:{name}" in NOT_NEEDED:
            continue
        if PROVIDED_BY.get(name) not in provided:
            missing.append(f"{name} ({PROVIDED_BY.get(name, 'unknown: add it to PROVIDED_BY')})")
    assert not missing, f"{path.stem} imports {', '.join(missing)}: add to its extra in pyproject.toml"


def test_scan_sees_imports_through_course_modules():
    """The scan is what the coverage test leans on: 02 imports snntorch only through course.snn."""
    names = third_party_imports(REPO / "solutions/02_snn/02_snn.ipynb")
    assert "snntorch" in names and "flwr" not in names
    assert "ray" in third_party_imports(REPO / "solutions/05_federated/05_federated.ipynb")


def test_setuptools_ships_every_subpackage_and_data_file():
    """A non-editable install ships only what pyproject.toml lists: every folder of course/ with Python in
    it, and every file git tracks under course/ (corpus, Flower's app pyproject.toml files, the project's
    brief)."""
    from setuptools import find_packages

    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(REPO), include=find["include"])
    assert {"course", "course.fl_project", "autograders"} <= set(packages)
    tracked = subprocess.run(["git", "ls-files", "course", "autograders"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    for file in tracked:
        if file.endswith(".py"):
            package = ".".join(Path(file).parent.parts)
            assert package in packages, f"{file}: its folder is no package in the wheel"
            continue
        owner = max((p for p in data if file.startswith(p.replace(".", "/") + "/")), key=len, default=None)
        relative = file[len(owner.replace(".", "/")) + 1:] if owner else file
        assert owner and any(Path(relative).match(pattern) and relative.count("/") == pattern.count("/")
                             for pattern in data[owner]), f"{file} is not in the wheel: add it to package-data"  # noqa: E501


@pytest.mark.slow
def test_built_wheel_holds_every_tracked_file(tmp_path):
    """The same, on a real wheel (pip wheel, as `pip install git+...` builds it)."""
    from tests.colab_like import build_wheel

    names = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    tracked = subprocess.run(["git", "ls-files", "course", "autograders"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    assert [f for f in tracked if f not in names] == []


# ---------------------------------------------------------------- setup's version report

def test_pinned_versions_are_requirements_txt_pins():
    pins = requirement_pins()
    for name, version in env.PINNED.items():
        assert pins[name] == version, f"course.env.PINNED[{name!r}] = {version}, requirements {pins[name]}"


def test_version_notes_name_what_differs_and_colab():
    same = {name: version for name, version in env.PINNED.items()}
    assert env.version_notes({**same, "torch": env.PINNED["torch"] + "+cpu"}, colab=False) == []
    notes = env.version_notes({**same, "torch": "2.11.0+cu128", "numpy": "2.1.3", "nbgrader": "missing"},
                              colab=True)
    assert len(notes) == 2
    assert f"torch 2.11.0+cu128 (pinned {env.PINNED['torch']})" in notes[0] and "numpy 2.1.3" in notes[0]
    assert "nbgrader" not in notes[0] and "verified with the pinned" in notes[0]
    assert "Colab" in notes[1]


def test_setup_prints_the_notes(capsys, monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "x")
    monkeypatch.setattr(env, "package_versions", lambda: {"torch": "0.0.1"})
    env.setup("unit")
    out = capsys.readouterr().out
    assert "torch 0.0.1 (pinned" in out and "On Google Colab" in out


def test_environment_report_on_colab_passes_libraries_other_notebooks_install(monkeypatch):
    """00's environment check on Colab: snntorch or nbgrader missing there is no fault (each notebook's
    install cell brings its own); torch missing still is."""
    monkeypatch.setattr(env.package_versions, "__defaults__", (("torch", "snntorch", "no-such-package-xyz"),))
    monkeypatch.setattr(env, "_on_colab", lambda: True)
    rows = {name: (ok, detail) for name, ok, detail in env.environment_report()}
    assert rows["no-such-package-xyz"] == (True, "not installed: the notebook that uses it installs it")
    assert rows["torch"][0] is True
    monkeypatch.setattr(env, "_on_colab", lambda: False)
    rows = {name: (ok, detail) for name, ok, detail in env.environment_report()}
    assert rows["no-such-package-xyz"] == (False, "missing")
