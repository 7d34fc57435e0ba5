"""Every notebook as Google Colab meets it: `make colab-check` (minutes; not part of `make test`).

Colab opens one .ipynb, with no `course` package, on its own Python, torch (a CUDA build) and numpy. This
builds (once; reused while its spec is unchanged) a virtual environment like that under /tmp: Python 3.12,
torch and numpy at versions other than requirements.txt's pins, and Colab's usual libraries at Colab's
versions (facts as of 2026-08-19 from github.com/googlecolab/backend-info, pip-freeze.gpu.txt: pandas 2.2.3,
matplotlib 3.10, scikit-learn 1.6.1, psutil 5.9.5, ipywidgets 7.7.1, cloudpickle, fastapi, httpx, pydantic).
It builds the course's wheel and points the install cell's one setting (COURSE_SOURCE) at it, then for every
solution notebook, starting each time from that same base environment, runs in a kernel of that Python, in an
empty folder (Colab's /content): the install cell, the setup cell, every cell up to the first exercise's test
cell, and that test (the solution is in). COLAB_RELEASE_TAG is set, so `course.colab.on_colab()` is true as on
Colab. It prints a table: notebook, install seconds, what pip installed, setup, exercise, the first error.

    python -m tests.colab_like [--only 02_snn 07b_serving] [--rebuild] [--venv DIR]

Differences from Colab it cannot remove: no GPU (torch's CUDA build sees none), pip's download cache is this
machine's (Colab downloads everything: its install times are longer), Python 3.12 (Colab moved to 3.13 in
2026-08; its pinned 2026.07 runtime is 3.12), IPython 8/9 and ipykernel 7 (Colab: IPython 7.34, ipykernel
6.17)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
PYTHON = os.environ.get("COLAB_LIKE_PYTHON", "/root/.pyenv/versions/3.12.1/bin/python")
VENV = Path(os.environ.get("COLAB_LIKE_VENV", "/tmp/colab-like/venv"))
#: Wheels pip's index lacks here (torch's CUDA build needs nvidia-* wheels); empty elsewhere.
FIND_LINKS = os.environ.get("COLAB_LIKE_FIND_LINKS", "/opt/pypi-more/files")
#: Not the course's pins (torch 2.13.0, numpy 2.4.6), as on Colab; the rest at Colab's versions.
BASE = ["torch==2.14.1", "numpy==2.0.2", "pandas==2.2.3", "matplotlib==3.10.*", "scikit-learn==1.6.1",
        "scipy", "tqdm", "psutil==5.9.5", "ipywidgets==7.7.1", "requests", "ipykernel", "ipython",
        "cloudpickle==3.1.2", "fastapi", "uvicorn", "httpx==0.28.1", "pydantic"]
KERNEL = "colab-like"


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, text=True, **kwargs)


def pip(venv: Path, *args: str) -> None:
    local = FIND_LINKS and Path(FIND_LINKS).exists() and args[0] == "install"
    links = ["--find-links", FIND_LINKS] if local else []
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args,
                           *links], text=True, capture_output=True)
    noise = ("is ignored: it is neither a file nor a directory",)  # this machine's pip.conf find-links
    sys.stderr.write("".join(line for line in done.stderr.splitlines(True)
                             if not any(n in line for n in noise)))
    done.check_returncode()


def freeze(venv: Path) -> dict[str, str]:
    out = run(str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json",
              "--disable-pip-version-check", capture_output=True).stdout
    return {item["name"].lower(): item["version"] for item in json.loads(out)}


def ensure_base(venv: Path, rebuild: bool = False) -> dict[str, str]:
    """The Colab-like environment (built when missing, when BASE changed, or with `rebuild`); its packages."""
    marker = venv / "colab-like-base.json"
    if rebuild or not marker.exists() or json.loads(marker.read_text()).get("spec") != BASE:
        shutil.rmtree(venv, ignore_errors=True)
        print(f"building {venv} with {PYTHON} (a few minutes) ...", flush=True)
        run(PYTHON, "-m", "venv", str(venv))
        pip(venv, "install", "--quiet", "--upgrade", "pip")
        pip(venv, "install", "--quiet", *BASE)
        marker.write_text(json.dumps({"spec": BASE, "packages": freeze(venv)}))
    return json.loads(marker.read_text())["packages"]


def reset(venv: Path, base: dict[str, str]) -> None:
    """Back to the base environment: remove what an install cell added, restore what it changed."""
    now = freeze(venv)
    added = sorted(set(now) - set(base))
    changed = [f"{name}=={version}" for name, version in base.items() if now.get(name) not in (None, version)]
    changed += [f"{name}=={version}" for name, version in base.items() if name not in now]
    if added:
        pip(venv, "uninstall", "--quiet", "-y", *added)
    if changed:
        pip(venv, "install", "--quiet", "--no-deps", *changed)


def build_wheel(folder: Path) -> Path:
    """The course's wheel, as `pip install` from the repository would build it."""
    with tempfile.TemporaryDirectory() as work:  # out of tree: no build/ or *.egg-info left in the checkout
        shutil.copytree(REPO, work, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", ".venv", "modules", "test-artifacts", "grading",
                                                      "build", "*.egg-info", ".binder-box"))
        run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
            str(folder), work)
    return next(folder.glob("sysml_course-*.whl"))


def first_exercise(nb) -> int:
    """Index of the first exercise's test cell (a graded cell that is no solution)."""
    for index, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("grade") and not meta.get("solution"):
            return index
    raise ValueError("no exercise test cell")


def kernelspec(folder: Path, venv: Path) -> Path:
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab-like", "language": "python"}))
    return folder


def text_of(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif output.get("output_type") == "error":
            parts.append(f"{output.get('ename')}: {output.get('evalue')}")
    return "".join(parts)


def run_notebook(path: Path, home: Path, timeout: int) -> dict:
    """Execute `path`'s cells up to its first exercise's test in the Colab-like kernel; a table row."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    nb = nbformat.read(path, as_version=4)
    nb.cells = nb.cells[:first_exercise(nb) + 1]
    content = Path(tempfile.mkdtemp(prefix="content-", dir=home))  # the notebook's folder: empty, as on Colab
    row = {"notebook": path.stem, "install_s": None, "installed": "", "setup": "not run",
           "exercise": "not run", "error": "", "seconds": 0.0}
    start = time.monotonic()
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=timeout,
                            resources={"metadata": {"path": str(content)}})
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            began = time.monotonic()
            try:
                client.execute_cell(cell, index)
                ok = True
            except (CellExecutionError, CellTimeoutError) as error:
                ok = False
                lines = [line for line in str(error).strip().splitlines() if line.strip()]
                row["error"] = f"{cell.get('id')}: {lines[-1][:150] if lines else type(error).__name__}"
            if cell.get("id") == "install":
                row["install_s"] = round(time.monotonic() - began)
                row["install_output"] = text_of(cell)
                found = re.search(r"with (\d+) other packages?(?:: (.*))?", text_of(cell))
                row["installed"] = (f"{found.group(1)}: {found.group(2) or ''}" if found
                                    else text_of(cell).strip()[:200] or "(nothing printed)")
            elif re.search(r'\bsetup\("', cell.source):
                row["setup"] = "ok" if ok else "FAILED"
            elif index == len(nb.cells) - 1:
                row["exercise"] = "passed" if ok else "FAILED"
            if not ok:
                break
    row["seconds"] = round(time.monotonic() - start)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.colab_like", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=[],
                        help="notebook ids (default: every solution notebook)")
    parser.add_argument("--rebuild", action="store_true", help="build the base environment anew")
    parser.add_argument("--venv", type=Path, default=VENV)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    os.environ.pop("PYTHONPATH", None)  # neither pip nor the kernel may see this checkout's course/

    base = ensure_base(args.venv, args.rebuild)
    base.pop("sysml-course", None)
    print(f"base: python {Path(PYTHON).parent.parent.name}, torch {base.get('torch')}, "
          f"numpy {base.get('numpy')}, pandas {base.get('pandas')}, no course", flush=True)
    work = Path(tempfile.mkdtemp(prefix="colab-like-"))
    wheel = build_wheel(work / "dist")
    os.environ.update(COURSE_SOURCE=wheel.resolve().as_uri(), COLAB_RELEASE_TAG="colab-like",
                      JUPYTER_PATH=str(kernelspec(work / "jupyter", args.venv)), HOME=str(work / "home"),
                      PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip")),
                      MPLBACKEND="agg")
    (work / "home").mkdir()
    notebooks = sorted((REPO / "solutions").glob("*/*.ipynb"))
    if args.only:
        notebooks = [p for p in notebooks if p.stem in args.only]
    rows = []
    for path in notebooks:
        reset(args.venv, base)
        print(f"{path.stem} ...", flush=True)
        try:
            row = run_notebook(path, work / "home", args.timeout)
        except Exception as error:  # the kernel died or would not start: a row, and on to the next
            row = {"notebook": path.stem, "install_s": None, "installed": "", "setup": "?", "exercise": "?",
                   "error": f"{type(error).__name__}: {str(error)[:150]}", "seconds": 0}
        rows.append(row)
        print(f"  {row}", flush=True)
    reset(args.venv, base)
    print("\n| notebook | install s | pip installed (count: packages) | setup | exercise | s | first error |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        installed = r["installed"] if len(r["installed"]) < 120 else r["installed"][:117] + "..."
        print(f"| {r['notebook']} | {r['install_s']} | {installed} | {r['setup']} | {r['exercise']} | "
              f"{r['seconds']} | {r['error']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    failed = [r["notebook"] for r in rows if r["setup"] != "ok" or r["exercise"] != "passed"]
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed"
          + (f": {' '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
