"""Colab support: the install cell, the package's extras and files, setup's version report (course/colab.py).

The heavy check, every notebook's first cells in a Colab-like environment, is `make colab-check`
(tests/colab_like.py); these are the fast ones.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import os
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
    return env.requirement_pins(REPO / "requirements.txt")


def bare(name: str) -> str:
    return re.sub(r"\[.*\]", "", name).lower().replace("_", "-")


def install_cell(path: Path):
    nb = nbformat.read(path, as_version=4)
    ids = [cell.get("id") for cell in nb.cells]
    assert colab.cell_id(path.stem) in ids, f"{path.name}: no install cell (python -m course.colab --write)"
    index = ids.index(colab.cell_id(path.stem))
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

    def generic(source: str, module: str) -> str:  # the extra's name and its import names made generic
        source = source.replace(colab.extra_name(module), "X")
        return re.sub(r'for name in \("course"[^)]*\)', 'for name in NEEDS', source)

    assert generic(cell.source, path.stem) == generic(other.source, NOTEBOOKS[0].stem)
    assert all(f'"{name}"' in cell.source for name in colab.extra_modules(path.stem))


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


def run_cell(source: str, monkeypatch, *, course_missing: bool, pip_fails: bool = False,
             missing: tuple[str, ...] = (), pip_output: str = "", installed: tuple[str, ...] = (
                 "sysml-course 0.1.0", "snntorch 1.0.0")):
    """Execute the cell's code as a kernel would, with pip replaced by a recorder (exiting 1 with
    `pip_fails`) that returns `pip_output` as its captured stderr and reports `installed` ("name version");
    `missing` (plus ``course`` with `course_missing`) not importable; (pip calls, printed)."""
    import importlib.util

    calls = []
    real_find_spec = importlib.util.find_spec
    missing = (*missing, "course") if course_missing else missing

    def find_spec(name, *args):
        return None if name in missing else real_find_spec(name, *args)

    def fake_run(args, **kwargs):
        calls.append((list(args), Path(args[args.index("-c") + 1]).read_text()))
        assert kwargs.get("capture_output") and kwargs.get("text"), "pip's output must be captured as text"
        if pip_fails:
            return subprocess.CompletedProcess(args, 1, "", pip_output or "ERROR: pip's own message")
        report = args[args.index("--report") + 1]
        Path(report).write_text(json.dumps({"install": [
            {"metadata": dict(zip(("name", "version"), item.split()))} for item in installed]}))
        return subprocess.CompletedProcess(args, 0, "", pip_output)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(subprocess, "run", fake_run)
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            exec(compile(source, "install", "exec"), {})
    except Exception as error:  # what the cell printed before it raised
        error.printed = out.getvalue()
        raise
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


#: pip's last lines for three causes of failure, and what the cell's advice must then say (review 23b, B1).
PIP_FAILURES = {
    "conflict": ("ERROR: Cannot install sysml-course because these package versions have conflicting "
                 "dependencies.\nERROR: ResolutionImpossible: for help visit https://pip.pypa.io/",
                 "a version conflict with the packages this runtime holds"),
    "network": ("WARNING: Retrying ... NewConnectionError: Failed to establish a new connection: [Errno -3] "
                "Temporary failure in name resolution\nfatal: unable to access 'https://github.com/x/': Could "
                "not resolve host: github.com", "no internet"),
    "source": ("fatal: could not read Username for 'https://github.com': No such device or address\n"
               "error: subprocess-exited-with-error", "no course at that address: set COURSE_SOURCE"),
}


@pytest.mark.parametrize("cause", PIP_FAILURES)
def test_install_cell_says_what_failed_from_pips_captured_output(monkeypatch, cause):
    """pip's output is captured (Colab's kernel may never show a child's), its last 15 lines are printed,
    and the advice follows from them: resolver conflict, no network, or no course at the source."""
    output, advice = PIP_FAILURES[cause]
    output = "\n".join(f"noise {i}" for i in range(30)) + "\n" + output
    monkeypatch.setenv("COURSE_SOURCE", "git+https://github.com/nobody/nothing.git@main")
    with pytest.raises(RuntimeError) as raised:
        run_cell(colab.install_cell_source("02_snn"), monkeypatch, course_missing=True, pip_fails=True,
                 pip_output=output)
    text = str(raised.value)
    assert text.startswith("Could not install the course from git+https://github.com/nobody/nothing.git@main")
    assert advice in text and text.endswith("run this cell again.") and "-m pip" not in text
    assert ("internet" in text) == (cause == "network") and ("COURSE_SOURCE" in text) == (cause == "source")
    announced, *shown = raised.value.printed.splitlines()  # the cell says it is installing, then pip's tail
    assert announced.startswith("Installing the course and this notebook's libraries from ")
    assert shown[-1] == output.splitlines()[-1] and len(shown) == 15 and "noise 14" not in shown


def test_install_cell_says_what_to_do_when_pip_fails(monkeypatch):
    """An unrecognised failure: pip's lines, then one paragraph naming both remedies (not pip's command)."""
    monkeypatch.setenv("COURSE_SOURCE", "git+https://github.com/nobody/nothing.git@main")
    with pytest.raises(RuntimeError) as raised:
        run_cell(colab.install_cell_source("02_snn"), monkeypatch, course_missing=True, pip_fails=True)
    text = str(raised.value)
    assert text.startswith("Could not install the course from git+https://github.com/nobody/nothing.git@main")
    assert "internet" in text and "os.environ['COURSE_SOURCE'] = " in text and "run this cell again" in text
    assert "-m pip" not in text and len(text) < 400


def test_install_cell_shows_pips_conflict_lines_and_skips_nameless_dists(monkeypatch, tmp_path):
    """After a successful pip the summary shows pip's 'dependency conflicts' lines itself (B1); a dist-info
    without METADATA (an interrupted pip) is skipped, not a TypeError (m1)."""
    (tmp_path / "broken-1.0.dist-info").mkdir()
    monkeypatch.setattr(sys, "path", sys.path + [str(tmp_path)])
    conflicts = ("ERROR: pip's dependency resolver does not currently take into account all the packages that "
                 "are installed. This behaviour is the source of the following dependency conflicts.\n"
                 "grpcio-status 1.71.2 requires protobuf<6.0dev,>=5.26.1, but you have protobuf 7.36.2 which "
                 "is incompatible.")
    _, printed = run_cell(colab.install_cell_source("01_edge"), monkeypatch, course_missing=True,
                          pip_output=conflicts, installed=("sysml-course 0.1.0", "protobuf 7.36.2"))
    assert conflicts in printed
    report = tmp_path / "pip.json"
    report.write_text(json.dumps({"install": [{"metadata": {"name": "protobuf", "version": "7.36.2"}}]}))
    text = colab.describe_install(report, 1, "x", {None: None, "protobuf": "5.29.6"}, conflicts)
    assert text.index("grpcio-status 1.71.2 requires") < text.index("'dependency conflicts' ERROR above")


def test_install_summary_says_when_the_course_was_already_there(monkeypatch, tmp_path):
    """02's cell after 00's in one Python: pip adds snntorch only; the summary does not claim the course (m2)."""
    _, printed = run_cell(colab.install_cell_source("02_snn"), monkeypatch, course_missing=False,
                          missing=("snntorch",), installed=("snntorch 1.0.0",))
    assert printed.splitlines()[1].startswith("The course was already installed; added 1 package from ")
    assert "snntorch 1.0.0" in printed and "Installed the course" not in printed


def test_install_cell_puts_a_new_user_site_on_sys_path(monkeypatch, tmp_path):
    """pip fell back to --user and created the user site after Python started: the cell adds it (m10)."""
    import site

    user = tmp_path / "user-site"
    monkeypatch.setattr(site, "getusersitepackages", lambda: str(user))
    monkeypatch.setattr(sys, "path", list(sys.path))
    user.mkdir()
    run_cell(colab.install_cell_source("02_snn"), monkeypatch, course_missing=True)
    assert str(user) in sys.path


def test_constraints_hold_each_kept_package_once(monkeypatch, tmp_path):
    """Two dist-infos of numpy on sys.path (Colab's /usr/local and /usr/lib dist-packages): one line each,
    the version Python imports (importlib.metadata.version), or pip finds the constraints unsatisfiable."""
    import importlib.metadata as md

    for name in ("numpy", "torch"):
        info = tmp_path / f"{name}-1.0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n")
    monkeypatch.setattr(sys, "path", sys.path + [str(tmp_path)])
    assert sorted(d.version for d in md.distributions() if d.name == "numpy") != [md.version("numpy")]
    (_, constraints), = run_cell(colab.install_cell_source("02_snn"), monkeypatch, course_missing=True)[0]
    lines = constraints.splitlines()
    assert len(lines) == len({line.split("==")[0] for line in lines})
    assert f"numpy=={md.version('numpy')}" in lines and "numpy==1.0.0" not in lines


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


def test_describe_install_tells_what_to_do_after_replacing_the_runtimes_packages(tmp_path, monkeypatch):
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
    # protobuf and onnx not imported by this process (the whole suite may have imported them)
    for module in ("google", "onnx"):
        monkeypatch.delitem(sys.modules, module, raising=False)
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
               "pydantic": "fastapi", "uvicorn": "uvicorn", "httpx": "httpx", "cloudpickle": "cloudpickle",
               "sklearn": "scikit-learn"}
#: Imports a notebook reaches in the scan but never runs, with the reason.
NOT_NEEDED = {
    "pynvml": "course.accelerators reads NVML only when pynvml imports (Colab ships nvidia-ml-py)",
    "nbformat": "course.colab's cell writer only: a maintainer's tool (python -m course.colab --write)",
    "google": "course.colab.on_colab asks whether google.colab exists (Colab's own package)",
    "02_snn:onnx": "course.edge imports these inside 01's export and quantization functions; 02 uses its "
                   "energy table and distillation loss only",
    "02_snn:onnxruntime": "as onnx", "02_snn:torchao": "as onnx",
}


#: Calls that import (or locate) a module named by a string: find_spec("sklearn") is how course.data finds the
#: digits file scikit-learn ships without importing it.
STRING_IMPORTS = {"find_spec", "import_module", "__import__"}


def imports_of(source: str) -> set[str]:
    """Module names `source` imports: import statements (inside functions too) and `STRING_IMPORTS` calls
    with a literal name."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "course":
                found |= {f"course.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and node.args[0].value \
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in STRING_IMPORTS:
            found.add(node.args[0].value)
    return found


def third_party_imports(path: Path) -> set[str]:
    """Top-level names a notebook imports, itself or through the course modules it imports (transitively,
    imports inside functions included)."""
    from IPython.core.inputtransformer2 import TransformerManager

    names = set()
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code" and not colab.is_install_cell_id(cell.get("id")):
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


def missing_imports(path: Path, dependencies: list[str]) -> list[str]:
    """What notebook `path` imports (itself or through course/) that neither `dependencies` nor its extra
    installs."""
    provided = {bare(re.split(r"[<>=!~ ;]", r)[0]) for r in dependencies}
    provided |= {bare(r.split("==")[0]) for r in EXTRAS[colab.extra_name(path.stem)]}
    missing = []
    for name in sorted(third_party_imports(path)):
        if name in NOT_NEEDED or f"{path.stem}:{name}" in NOT_NEEDED:
            continue
        if PROVIDED_BY.get(name) not in provided:
            missing.append(f"{name} ({PROVIDED_BY.get(name, 'unknown: add it to PROVIDED_BY')})")
    return missing


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_import_is_colabs_or_in_the_notebooks_extra(path):
    missing = missing_imports(path, PYPROJECT["project"]["dependencies"])
    assert not missing, f"{path.stem} imports {', '.join(missing)}: add to its extra in pyproject.toml"


def test_scan_sees_string_imports_and_flags_the_old_dependencies():
    """course.data finds scikit-learn's digits with find_spec("sklearn"): the scan sees it, and the
    dependencies before scikit-learn was added (review of issue 23, item 10) fail the coverage check."""
    path = REPO / "solutions/00_orientation/00_orientation.ipynb"
    assert "sklearn" in third_party_imports(path)
    old = ["torch", "numpy>=2.0", "matplotlib", "scipy", "psutil", "tqdm", "ipython", "ipywidgets"]
    assert missing_imports(path, old) == ["sklearn (scikit-learn)"]
    assert imports_of('import importlib\nimportlib.import_module("onnx")\nfind_spec(name)') == \
        {"importlib", "onnx"}


def test_scan_sees_imports_through_course_modules():
    """The scan is what the coverage test leans on: 02 imports snntorch only through course.snn."""
    names = third_party_imports(REPO / "solutions/02_snn/02_snn.ipynb")
    assert "snntorch" in names and "flwr" not in names
    assert "ray" in third_party_imports(REPO / "solutions/05_federated/05_federated.ipynb")


# Tracked under autograders/ but never in the wheel: the lab hub's own tooling (`make hub` runs it from the
# repository as root, and its Kubernetes files build an image from the repository). A learner's install, the hub's
# learner environment included, needs none of it.
NOT_SHIPPED = ("autograders/hub/",)


def shipped_tracked_files() -> list[str]:
    """Every file git tracks under course/ and autograders/, less NOT_SHIPPED."""
    tracked = subprocess.run(["git", "ls-files", "course", "autograders"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    return [f for f in tracked if not f.startswith(NOT_SHIPPED)]


def test_setuptools_ships_every_subpackage_and_data_file():
    """A non-editable install ships only what pyproject.toml lists: every folder of course/ with Python in
    it, and every file git tracks under course/ (corpus, Flower's app pyproject.toml files, the project's
    brief); the lab hub's tooling (NOT_SHIPPED) stays out."""
    from setuptools import find_packages

    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(REPO), include=find["include"])
    assert {"course", "course.fl_project", "autograders"} <= set(packages)
    assert "autograders.hub" not in packages
    tracked = shipped_tracked_files()
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
    assert [f for f in shipped_tracked_files() if f not in names] == []
    assert not [name for name in names if name.startswith(NOT_SHIPPED)]


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
    monkeypatch.setattr(env, "package_versions", lambda names: {"torch": "0.0.1"})
    env.setup("unit")
    out = capsys.readouterr().out
    assert "torch 0.0.1 (pinned" in out and "On Google Colab" in out


def test_version_notes_leave_out_data_only_packages():
    """Colab's scikit-learn differs from the pin, but the course only reads its digits file: no warning."""
    assert env.version_notes({**env.PINNED, "scikit-learn": "1.6.1"}, colab=False) == []
    assert "scikit-learn" in env.REPORTED_PACKAGES and "scikit-learn" in env.DATA_ONLY


REQUIRES = ["torch", "numpy>=2.0", "scikit-learn", 'snntorch==1.0.0; extra == "02-snn"',
            'flwr[simulation]==1.42.0; extra == "05b-federated-privacy"',
            'opacus==1.6.0 ; extra == "05b-federated-privacy"']


def test_extra_packages_come_from_the_installed_metadata():
    assert env.extra_packages("05b_federated_privacy", REQUIRES) == ["flwr", "opacus"]
    assert env.extra_packages("02_snn", REQUIRES) == ["snntorch"]
    assert env.extra_packages("00_orientation", REQUIRES) == []


def test_setup_on_colab_reports_torch_numpy_and_the_notebooks_extra(capsys, monkeypatch):
    """On Colab the setup line names what this notebook runs on, not 'nbgrader missing | flwr missing'."""
    monkeypatch.setenv("COLAB_RELEASE_TAG", "x")
    monkeypatch.setattr(env, "extra_packages", lambda module: [] if module == "unit" else ["snntorch"])
    assert env.reported_packages("02_snn") == ("torch", "numpy", "snntorch")
    ctx = env.setup("unit")
    assert list(ctx.versions) == ["torch", "numpy"]
    out = capsys.readouterr().out
    assert "nbgrader" not in out and "flwr" not in out and "scikit-learn" not in out
    monkeypatch.delenv("COLAB_RELEASE_TAG")
    monkeypatch.setattr(env, "_on_colab", lambda: False)
    assert env.reported_packages("02_snn") == env.REPORTED_PACKAGES


def test_environment_report_on_colab_checks_what_this_notebook_needs(monkeypatch):
    """00's environment check on Colab: torch, numpy and the notebook's extra (a missing one of those is a
    fault); snntorch or nbgrader, which other notebooks' install cells bring, are not listed."""
    monkeypatch.setattr(env, "_on_colab", lambda: True)
    monkeypatch.setattr(env, "extra_packages", lambda module: ["no-such-package-xyz"] if module == "x" else [])
    rows = {name: (ok, detail) for name, ok, detail in env.environment_report(module="x")}
    assert rows["no-such-package-xyz"] == (False, "missing")
    assert rows["torch"][0] is True and rows["numpy"][0] is True
    assert "snntorch" not in rows and "nbgrader" not in rows and "scikit-learn" not in rows
    monkeypatch.setattr(env, "_on_colab", lambda: False)
    monkeypatch.setattr(env.package_versions, "__defaults__", (("torch", "no-such-package-xyz"),))
    monkeypatch.setattr(env, "REPORTED_PACKAGES", ("torch", "no-such-package-xyz"))
    rows = {name: (ok, detail) for name, ok, detail in env.environment_report()}
    assert rows["no-such-package-xyz"] == (False, "missing")


# ---------------------------------------------------------------- make colab-check's own guards

def test_colab_like_finds_its_python_or_says_how_to_give_one(monkeypatch, tmp_path):
    """tests/colab_like.py: the runtime's pyenv Python, else python3.X on PATH, else exit 2 with a sentence
    (not a FileNotFoundError traceback); an explicit one must exist."""
    from tests import colab_like

    monkeypatch.delenv("COLAB_LIKE_PYTHON", raising=False)
    fake = tmp_path / "bin" / "python3.13"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    runtime = {"version": "3.13", "python": str(tmp_path / "no-pyenv" / "python")}
    monkeypatch.setenv("PATH", str(fake.parent))
    assert colab_like.find_python(runtime) == str(fake)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(colab_like.Refused, match="needs a Python 3.13.*--python.*COLAB_LIKE_PYTHON"):
        colab_like.find_python(runtime)
    monkeypatch.setenv("COLAB_LIKE_PYTHON", str(tmp_path / "python3.12-nope"))
    with pytest.raises(colab_like.Refused, match="no Python at .*python3.12-nope .from COLAB_LIKE_PYTHON"):
        colab_like.find_python({**runtime, "python": str(fake)})
    assert colab_like.find_python(runtime, str(fake)) == str(fake)
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # main() drops it; restored after
    assert colab_like.main(["--venv", str(tmp_path / "v")]) == 2


def test_colab_like_never_deletes_a_folder_that_is_not_its_venv(tmp_path):
    from tests import colab_like

    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "precious.txt").write_text("x")
    with pytest.raises(colab_like.Refused, match="not empty and is no colab-check venv"):
        colab_like.ensure_base(mine, sys.executable, ["pip"])
    assert (mine / "precious.txt").exists()


def test_colab_like_runs_do_not_share_a_venv(tmp_path):
    """A second run on the same venv (another process holding the lock) is refused; after it ends, allowed."""
    from tests import colab_like

    venv = tmp_path / "venv"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); print('held', "
        "flush=True); time.sleep(30)"), str(tmp_path / "venv.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(colab_like.Refused, match="another run is using"):
            colab_like.lock(venv)
    finally:
        holder.kill()
        holder.wait()
    colab_like.lock(venv).close()


def test_install_cell_runs_where_the_course_is_but_this_notebooks_libraries_are_not(monkeypatch):
    """A Python that has the course (another notebook's install) but not snntorch: 02's cell installs its extra;
    where every library is importable (this venv) no cell of any notebook runs pip."""
    for path in colab.solution_notebooks():
        assert all(importlib.util.find_spec(name) for name in colab.extra_modules(path.stem)), path.stem
    calls, _ = run_cell(colab.install_cell_source("02_snn"), monkeypatch, course_missing=False,
                        missing=("snntorch",))
    assert len(calls) == 1 and calls[0][0][-1].startswith("sysml-course[02-snn] @ ")
    assert colab.extra_modules("05b_federated_privacy") == ["flwr", "opacus"]
    assert "ai_edge_litert" in colab.extra_modules("01_edge") and colab.extra_modules("00_orientation") == []
