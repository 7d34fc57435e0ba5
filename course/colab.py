"""Google Colab: knowing we are on it, and the install cell that opens every notebook. Course infrastructure.

Colab has no `course` package and ships its own torch (a CUDA build), numpy and Python. The first code cell of
every solution notebook (cell id ``install``) installs this package with the notebook's extra (the pinned
libraries Colab lacks, see pyproject.toml's ``[project.optional-dependencies]``) when ``course`` cannot be
imported, and does nothing where it can (``make lab``, Binder, grading). One setting names where it installs
from: the environment variable ``COURSE_SOURCE`` (a pip direct reference: ``git+https://...``, or ``file://``
of a wheel or a checkout); its default, the course's GitHub repository, is written into the cells by::

    python -m course.colab --write     # (re)write the install cell of every solution notebook
    python -m course.colab --check     # exit 1 when a cell differs from what --write would write

The repository comes from pyproject.toml's ``[project.urls]``, read by course.links (the one place it is
named); tests/test_colab.py checks that the cells agree with it. `describe_install` turns pip's installation
report into the cell's summary."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

from course.links import DISTRIBUTION  # the package's name on an install line ([project] name)

#: The environment variable the install cell reads: where pip installs the course from.
SOURCE_VARIABLE = "COURSE_SOURCE"
#: Libraries whose version Colab chooses and loads: the install cell holds pip to their installed versions (a
#: constraints file), as pip must not swap what the kernel already imported (a Colab kernel loads numpy at its
#: start, colabtools issue #5197; a new ipykernel, ipython, tornado or pyzmq can crash the runtime,
#: bowang-lab/MedSAM issue #214; as of 2026-11).
COLAB_KEEPS = ("torch", "numpy", "pandas", "ipykernel", "ipython", "tornado", "pyzmq")

CELL_ID = "install"


def cell_id(module: str) -> str:
    """The install cell's id in notebook `module`: ``install`` in a folder's first notebook, ``install-04b``
    in its second (two notebooks of one folder may share no cell id: a submission is matched to its notebook
    by them, autograders/repair.py)."""
    prefix = module.split("_")[0]
    return CELL_ID if prefix.isdigit() else f"{CELL_ID}-{prefix}"


def is_install_cell_id(cell_id_: str | None) -> bool:
    """Whether a cell id is an install cell's (``install`` or ``install-<prefix>``)."""
    return bool(cell_id_) and (cell_id_ == CELL_ID or cell_id_.startswith(f"{CELL_ID}-"))
ROOT = Path(__file__).resolve().parents[1]


def on_colab() -> bool:
    """True inside a Google Colab runtime: ``google.colab`` is importable or ``COLAB_RELEASE_TAG`` is set
    (Colab sets it in every runtime's environment)."""
    if os.environ.get("COLAB_RELEASE_TAG"):
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ModuleNotFoundError, ValueError):  # no `google` namespace at all
        return False


def extra_name(module: str) -> str:
    """The pyproject extra of a notebook: its id normalised as PEP 685 says (``01_edge`` -> ``01-edge``)."""
    return re.sub(r"[-_.]+", "-", module).lower()


def default_source(pyproject: Path | None = None) -> str:
    """What the install cell installs from when COURSE_SOURCE is unset: the repository at the branch the links
    open, as course.links reads them from pyproject.toml (``[project.urls] Repository``, ``[tool.sysml-course]
    branch``), as a pip direct reference: ``git+`` the repository URL, ``.git@`` the branch."""
    from course.links import github_url, read_setting

    return f"git+{github_url(setting=read_setting(pyproject))}.git@{read_setting(pyproject).branch}"


CELL_TEMPLATE = '''\
# On Colab (or any Python without the course) this installs the course's helpers and the pinned libraries this
# notebook needs, keeping Colab's own torch, numpy and kernel (a minute or two); elsewhere it does nothing.
import importlib.util
if any(importlib.util.find_spec(name) is None for name in {needs}):
    import importlib.metadata as md, os, subprocess, sys, tempfile, time
    source = os.environ.get("{variable}", "{source}")
    work, start = tempfile.mkdtemp(), time.time()
    print(f"Installing the course and this notebook's libraries from {{source}} (a minute or two) ...")
    # pip may not change what the runtime has loaded (torch, numpy, the kernel): a constraints file holds them
    before = {{d.name: d.version for d in md.distributions() if d.name}}  # no name: a broken dist-info
    with open(os.path.join(work, "keep.txt"), "w") as keep:
        for name in {keep}:
            try:  # the version Python imports (one line per name, though two folders may list it)
                keep.write(f"{{name}}=={{md.version(name)}}\\n")
            except md.PackageNotFoundError:
                pass
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-c", keep.name, "--report",
                          os.path.join(work, "pip.json"), f"{distribution}[{extra}] @ {{source}}"],
                         capture_output=True, text=True)  # some kernels (Colab's) never show a child's output
    log = (pip.stdout or "") + (pip.stderr or "")
    if pip.returncode:
        print("\\n".join(log.strip().splitlines()[-15:]))
        has = lambda *words: any(word in log for word in words)
        where = ("set {variable} to where the course is (git+ and a repository's URL, or a wheel's "
                 "file:// path) in a cell before this one: import os; os.environ['{variable}'] = '...'")
        why = ("a version conflict with the packages this runtime holds (torch, numpy, the kernel; pip's "
               "lines above name them): ask the course staff" if has("ResolutionImpossible", "conflict")
               else "no internet: check that this runtime reaches it" if has(
                   "resolve host", "Network is unreachable", "Temporary failure")
               else "no course at that address: " + where if has(
                   "Repository not found", "could not read Username", "does not exist")
               else "see pip's lines above; check that this runtime reaches the internet, or " + where)
        raise RuntimeError(f"Could not install the course from {{source}}: {{why}}. Then run this cell "
                           "again.")
    import site  # pip may install to the user site, which Python skips when it was missing at start
    if os.path.isdir(site.getusersitepackages()) and site.getusersitepackages() not in sys.path:
        site.addsitedir(site.getusersitepackages())
    importlib.invalidate_caches()
    from course.colab import describe_install
    print(describe_install(os.path.join(work, "pip.json"), time.time() - start, source, before, log))'''


def extra_modules(module: str, pyproject: Path | None = None) -> list[str]:
    """The import names of what notebook `module`'s extra installs (pyproject.toml's
    ``[project.optional-dependencies]``): ``flwr[simulation]==1.42.0`` -> ``flwr``, ``ai-edge-litert`` ->
    ``ai_edge_litert``. The install cell runs when ``course`` or any of these cannot be imported, so a Python
    that has the course but not this notebook's libraries (another notebook's install) gets them too."""
    import tomllib

    path = pyproject or ROOT / "pyproject.toml"
    data = tomllib.loads(path.read_text()) if path.exists() else {}
    extras = data.get("project", {}).get("optional-dependencies", {})
    names = [re.split(r"[\[=<>!~; ]", requirement, maxsplit=1)[0]
             for requirement in extras.get(extra_name(module), [])]
    return list(dict.fromkeys(name.replace("-", "_").lower() for name in names))


def install_cell_source(module: str, source: str | None = None, pyproject: Path | None = None) -> str:
    """The code of notebook `module`'s install cell; identical in every notebook but for the extra and the
    import names that tell whether it is installed."""
    needs = ["course", *extra_modules(module, pyproject)]
    needs_tuple = "(" + ", ".join(f'"{name}"' for name in needs) + ("," if len(needs) == 1 else "") + ")"
    return CELL_TEMPLATE.format(variable=SOURCE_VARIABLE, source=source or default_source(),
                                distribution=DISTRIBUTION, extra=extra_name(module),
                                needs=needs_tuple,
                                keep="(" + ", ".join(f'"{name}"' for name in COLAB_KEEPS) + ")")


def describe_install(report: str | os.PathLike, seconds: float, source: str = "",
                     before: dict[str, str] | None = None, pip_output: str = "") -> str:
    """The install cell's summary, from pip's ``--report`` JSON and `before` ({distribution: version} as the
    runtime had them before pip ran): what was installed, how long it took, which of the runtime's own
    packages pip replaced, whether Colab's torch and numpy were kept, and what the learner must do next:
    restart when pip replaced a package this kernel had already imported (its old version stays in memory;
    Colab preloads numpy and pandas, colabtools issue #5197), else nothing. `pip_output` (what pip printed,
    captured by the cell): its "dependency conflicts" lines are shown here, as the cell shows nothing else."""
    try:
        installed = json.loads(Path(report).read_text()).get("install", [])
        known = True
    except (OSError, ValueError):
        installed, known = [], False
    names = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installed
             if item.get("metadata", {}).get("name")}
    course = names.pop(DISTRIBUTION, None)
    listed = f": {', '.join(f'{n} {v}' for n, v in sorted(names.items()))}" if names else "."
    if known and not course:  # another notebook's cell installed the course: only this one's extra is new
        plural = "s" if len(names) != 1 else ""
        lines = [f"The course was already installed; added {len(names)} package{plural} "
                 f"from {source or 'its repository'} in {seconds:.0f} s" + listed]
    else:
        lines = [f"Installed the course{f' {course}' if course else ''} from {source or 'its repository'} in "
                 f"{seconds:.0f} s, with {len(names)} other package{'s' if len(names) != 1 else ''}" + listed]
    output = pip_output.splitlines()
    start = next((i for i, line in enumerate(output) if "dependency conflicts" in line), None)
    conflicts = [line for line in output[start:start + 12] if line.strip()] if start is not None else []
    lines += conflicts
    old = {_norm(name): version for name, version in (before or {}).items() if name}
    replaced = {name: (old[_norm(name)], version) for name, version in sorted(names.items())
                if old.get(_norm(name)) not in (None, version)}
    if replaced:
        changes = ", ".join(f"{name} {was} -> {now}" for name, (was, now) in replaced.items())
        lines.append(f"Replaced this runtime's {changes} (this notebook's libraries need them).")
    kept = [f"{name} {_version(name)}" for name in COLAB_KEEPS[:2] if name not in names and _version(name)]
    if kept:
        lines.append(f"Kept this runtime's {', '.join(kept)}.")
    majors = [int(v.split(".")[0]) for v in replaced.get("protobuf", ("0", "0"))]
    if majors[0] < 6 <= majors[1]:
        # grpcio-status 1.71.2 requires protobuf<6 (its METADATA); tensorflow 2.20.0 only protobuf>=5.28.0
        lines.append(f"pip's 'dependency conflicts' ERROR{' above' if conflicts else ''} (grpcio-status "
                     "wants protobuf < 6) is expected and harmless here: grpcio-status serves Colab's Google "
                     "Cloud clients, which "
                     "this notebook does not use (for those, start a fresh runtime: Runtime > Disconnect and "
                     "delete runtime).")
    loaded = _loaded_before(names)
    new = {_norm(name): version for name, version in names.items()}
    newer = [name for name in loaded if _older(new.get(_norm(name), ""), old.get(_norm(name), ""))]
    restart = [name for name in loaded if name not in newer]
    if newer:
        lines.append(f"pip downgraded {', '.join(newer)}, which this kernel had already imported: "
                     "the newer version it loaded stays in use and serves what asked for the older one.")
    if restart:
        lines.append(f"RESTART NEEDED: pip changed {', '.join(restart)}, which this kernel had "
                     "already imported (the old version stays in memory). Do this now: Runtime > Restart "
                     "session, then run the notebook again from the top; this cell then finds the course "
                     "and skips at once.")
    else:
        lines.append("No restart needed: go on with the next cell." if names else "")
    return "\n".join(line for line in lines if line)


def _older(version: str, than: str) -> bool:
    """Whether `version` sorts before `than` (release numbers only, e.g. 4.12.2 < 4.16.0); False if either is
    unknown or not numeric."""
    def key(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:4])

    return bool(version and than) and key(version) < key(than)


def _norm(name: str) -> str:
    """A distribution's name as PEP 503 normalises it (typing_extensions == typing-extensions)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _loaded_before(names: dict[str, str]) -> list[str]:
    """Which of the distributions pip just installed or changed have a module this process already imported
    (its old version stays in memory until a restart); pip's names compared as PEP 503 normalises them."""
    import importlib.metadata

    wanted = {_norm(name) for name in names}
    found = {dist for module, dists in importlib.metadata.packages_distributions().items()
             if module in sys.modules for dist in dists if _norm(dist) in wanted}
    return sorted(found, key=str.lower)


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def solution_notebooks(root: Path = ROOT) -> list[Path]:
    return sorted((root / "solutions").glob("*/*.ipynb"))


def setup_index(nb, module: str) -> int:
    """Index of the notebook's setup cell: its first code cell calling ``setup("<module>")``."""
    return next(i for i, cell in enumerate(nb.cells)
                if cell.cell_type == "code" and f'setup("{module}"' in cell.source)


def write_install_cells(root: Path = ROOT, check: bool = False) -> list[Path]:
    """Put the install cell (id ``install``) right before the ``setup`` cell of every solution notebook, or
    bring its code up to date. Returns the notebooks that changed (with `check`: that would change)."""
    import nbformat

    changed = []
    for path in solution_notebooks(root):
        nb = nbformat.read(path, as_version=4)
        module = path.stem
        code = install_cell_source(module, default_source(root / "pyproject.toml"), root / "pyproject.toml")
        ids = [cell.get("id") for cell in nb.cells]
        for stale in [cell for cell in nb.cells
                      if is_install_cell_id(cell.get("id")) and cell.id != cell_id(module)]:
            nb.cells.remove(stale)  # an install cell under another id (before ids were per notebook)
        ids = [cell.get("id") for cell in nb.cells]
        if cell_id(module) in ids:
            cell = nb.cells[ids.index(cell_id(module))]
            if cell.source == code and ids.index(cell_id(module)) + 1 == setup_index(nb, module):
                continue
            nb.cells.remove(cell)
        cell = nbformat.v4.new_code_cell(code)
        cell.id = cell_id(module)
        nb.cells.insert(setup_index(nb, module), cell)
        changed.append(path)
        if not check:
            nbformat.write(nb, path)
    return changed


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m course.colab", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only report notebooks whose cell is out of date")
    parser.add_argument("--write", action="store_true", help="write the install cells (the default)")
    args = parser.parse_args(argv)
    changed = write_install_cells(check=args.check)
    for path in changed:
        print(f"{'out of date' if args.check else 'wrote'}: {path.relative_to(ROOT)}")
    if args.check and changed:
        print("run: python -m course.colab --write, then python -m autograders.release", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
