"""Every notebook as Google Colab meets it: `make colab-check` (minutes; not part of `make test`).

Colab opens one .ipynb, with no `course` package, on its own Python, torch (a CUDA build) and numpy. This
builds (once per runtime; reused while its spec is unchanged) a virtual environment like that under
/tmp/colab-like, by default Colab's newest known runtime (RUNTIMES["2026-08"], from
github.com/googlecolab/backend-info commit a7240792 of 2026-08-19: Python 3.13, torch 2.11.0, numpy 2.1.3,
pandas 2.2.3, IPython 7.34 with ipykernel 6.17.1, ipywidgets 7.7.1, protobuf 5.29.6 with grpcio-status 1.71.2,
...); `--runtime py312-torch2.14` is the first environment (Python 3.12, torch 2.14.1, numpy 2.0.2, newest
IPython). The kernel imports numpy and pandas before the first cell, as Colab's does (PRELOADED).
It builds the course's wheel and points the install cell's one setting (COURSE_SOURCE) at it, then for every
solution notebook, starting each time from that same base environment, runs in a kernel of that Python, in an
empty folder (Colab's /content): the install cell, the setup cell, every cell up to the first exercise's test
cell, and that test (the solution is in). COLAB_RELEASE_TAG is set, so `course.colab.on_colab()` is true as on
Colab. It prints a table: notebook, install seconds, what pip installed, setup, exercise, the first error.

    python -m tests.colab_like [--runtime 2026-08|py312-torch2.14] [--only 02_snn 07b_serving] [--rebuild]
                               [--python /path/to/python3.13] [--venv FOLDER]

Its Python (`find_python`): --python, else COLAB_LIKE_PYTHON, else the runtime's pyenv interpreter, else
python3.13 (python3.12 for py312-torch2.14) on PATH; with none it exits 2 saying so. The venv folder
(--venv, COLAB_LIKE_VENV, else the runtime's) is only ever deleted when it holds this check's marker file
(colab-like-base.json) or is empty: any other folder is refused (exit 2). A lock file beside it (FOLDER.lock)
keeps two runs from sharing one venv at once: the second exits 2.

Differences from Colab it cannot remove: no GPU (torch's CUDA build sees none); torch is PyPI's 2.11.0 (a
CUDA 13.0 build) where Colab has 2.11.0+cu128 from PyTorch's index; Python 3.13.0 (Colab: 3.13.15); only the
~50 of Colab's ~700 preinstalled packages that the course's installs touch (no tensorflow, so nothing here
imports the protobuf pip replaces); Colab's kernel is its own fork with google.colab loaded (more modules
imported before the first cell); pip's download cache is this machine's (Colab downloads everything: its
install times are longer)."""

from __future__ import annotations

import argparse
import fcntl
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
#: Wheels pip's index lacks here (torch's CUDA build needs nvidia-* wheels); empty elsewhere.
FIND_LINKS = os.environ.get("COLAB_LIKE_FIND_LINKS", "/opt/pypi-more/files")

#: Colab's runtimes this check can imitate: the Python it runs, its own venv folder (both are kept, each
#: reused while its spec is unchanged), and the preinstalled packages that matter for the course's installs
#: (what the install cell may replace, conflict with, or must leave alone).
#: "2026-08" is Colab's newest known GPU runtime: github.com/googlecolab/backend-info commit a7240792
#: "Upgrade to Python 3.13" (2026-08-19), pip-freeze.gpu.txt and os-info-gpu.txt (Python 3.13.15 there; the
#: nearest here is 3.13.0). torch is PyPI's 2.11.0 build (Colab has 2.11.0+cu128 from PyTorch's index).
#: Left out although Colab has them: tensorflow 2.20 / tf_keras / jax's CUDA plugins (big; they bound
#: protobuf too), and the rest of Colab's ~700 packages.
#: "py312-torch2.14" is the check's first environment: Python 3.12 with torch and numpy deliberately off
#: both the course's pins and Colab's (a Colab that has moved on), IPython/ipykernel at pip's newest.
RUNTIMES = {
    "2026-08": {
        "version": "3.13",
        "python": "/root/.pyenv/versions/3.13.0/bin/python",
        "venv": "/tmp/colab-like/py313-2026-08",
        "packages": [
            "pip==24.1.2", "setuptools==75.2.0", "packaging==26.3",
            "torch==2.11.0", "torchao==0.10.0", "numpy==2.1.3", "pandas==2.2.3", "scipy==1.16.3",
            "matplotlib==3.10.0", "scikit-learn==1.6.1", "tqdm==4.67.3", "psutil==5.9.5", "requests==2.32.4",
            "typing_extensions==4.16.0", "pydantic==2.13.4", "pydantic_core==2.46.4",
            "ipykernel==6.17.1", "ipython==7.34.0", "ipywidgets==7.7.1", "widgetsnbextension==3.6.10",
            "jupyterlab_widgets==3.0.16", "jupyter_client==7.4.9", "jupyter_core==5.9.1", "traitlets==5.7.1",
            "tornado==6.5.7", "pyzmq==26.2.1", "debugpy==1.8.15", "prompt_toolkit==3.0.53",
            "matplotlib-inline==0.2.2", "nest-asyncio==1.6.0",
            "protobuf==5.29.6", "grpcio==1.83.0", "grpcio-status==1.71.2",
            "cloudpickle==3.1.2", "fastapi==0.141.1", "starlette==1.6.0", "uvicorn==0.52.3", "httpx==0.28.1",
            "rich==13.9.4", "transformers==5.15.0", "tokenizers==0.22.2", "huggingface_hub==1.27.0",
            "safetensors==0.8.0", "sentencepiece==0.2.2", "regex==2025.11.3",
            "jax==0.7.2", "jaxlib==0.7.2", "ml_dtypes==0.6.0", "absl-py==1.4.0", "flatbuffers==25.12.19",
        ],
    },
    "py312-torch2.14": {
        "version": "3.12",
        "python": "/root/.pyenv/versions/3.12.1/bin/python",
        "venv": "/tmp/colab-like/venv",
        "packages": [
            "torch==2.14.1", "numpy==2.0.2", "pandas==2.2.3", "matplotlib==3.10.*", "scikit-learn==1.6.1",
            "scipy", "tqdm", "psutil==5.9.5", "ipywidgets==7.7.1", "requests", "ipykernel", "ipython",
            "cloudpickle==3.1.2", "fastapi", "uvicorn", "httpx==0.28.1", "pydantic"],
    },
}
DEFAULT_RUNTIME = "2026-08"
KERNEL = "colab-like"
#: What a Colab kernel has imported before the first cell runs (an IPython startup file here): numpy and
#: pandas are loaded at runtime start (colabtools issues #5197, #298, #327; numpy/numpy #25725), so pip
#: changing them under the kernel is what the install cell must avoid, and its summary must notice.
PRELOADED = ("numpy", "pandas")


class Refused(Exception):
    """A reason not to run at all (no Python, a folder that is not ours, a venv in use): exit 2."""


def find_python(runtime: dict, given: str | None = None) -> str:
    """The interpreter for `runtime`: `given` (--python), else COLAB_LIKE_PYTHON, else the runtime's pyenv
    path, else ``python<version>`` on PATH; Refused when none exists."""
    explicit = given or os.environ.get("COLAB_LIKE_PYTHON")
    if explicit:
        if shutil.which(explicit):
            return shutil.which(explicit)
        raise Refused(f"colab-check: no Python at {explicit} (from "
                      f"{'--python' if given else 'COLAB_LIKE_PYTHON'}).")
    if Path(runtime["python"]).is_file():
        return runtime["python"]
    found = shutil.which(f"python{runtime['version']}")
    if found:
        return found
    version = runtime["version"]
    raise Refused(f"colab-check needs a Python {version} (Colab's): none at {runtime['python']} nor "
                  f"python{version} on PATH. Pass --python /path/to/python{version} or set "
                  "COLAB_LIKE_PYTHON.")


def lock(venv: Path):
    """Hold ``<venv>.lock`` for this run (an open file; released when it closes or the process ends); Refused
    when another run holds it."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    path = venv.with_name(venv.name + ".lock")
    handle = open(path, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise Refused(f"colab-check: another run is using {venv} (it holds {path}); wait for it, or pass "
                      "--venv another folder.") from None
    return handle


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


def ensure_base(venv: Path, python: str, packages: list[str], rebuild: bool = False) -> dict[str, str]:
    """The Colab-like environment in `venv`: `python` with `packages` (built when missing, when its spec
    changed, or with `rebuild`); {package: version} as installed."""
    marker = venv / "colab-like-base.json"
    spec = {"python": python, "packages": packages}
    if rebuild or not marker.exists() or json.loads(marker.read_text()).get("spec") != spec:
        if venv.exists() and any(venv.iterdir()) and not marker.exists():
            raise Refused(f"colab-check: {venv} is not empty and is no colab-check venv (no {marker.name}): "
                          "it would be deleted. Pass --venv a new or empty folder.")
        shutil.rmtree(venv, ignore_errors=True)
        print(f"building {venv} with {python} (a few minutes) ...", flush=True)
        run(python, "-m", "venv", str(venv))
        tools = [p for p in packages if re.match(r"(pip|setuptools)==", p)]
        pip(venv, "install", "--quiet", *(tools or ["--upgrade", "pip"]))
        pip(venv, "install", "--quiet", *[p for p in packages if p not in tools])
        marker.write_text(json.dumps({"spec": spec, "packages": freeze(venv)}))
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
    """Execute `path`'s cells up to its first exercise's test in the Colab-like kernel; a table row. When the
    install cell says RESTART NEEDED, do what it tells the learner: restart the kernel and run again from the
    top (row["restarted"]; the install cell then prints nothing)."""
    from nbclient import NotebookClient
    from nbclient.util import run_sync

    nb = nbformat.read(path, as_version=4)
    nb.cells = nb.cells[:first_exercise(nb) + 1]
    content = Path(tempfile.mkdtemp(prefix="content-", dir=home))  # the notebook's folder: empty, as on Colab
    row = {"notebook": path.stem, "install_s": None, "installed": "", "setup": "not run",
           "exercise": "not run", "error": "", "seconds": 0.0}
    start = time.monotonic()
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=timeout,
                            resources={"metadata": {"path": str(content)}})
    with client.setup_kernel():
        if execute(client, nb, row):
            row["restarted"] = True
            run_sync(client.km.restart_kernel)(now=True)
            run_sync(client.kc.wait_for_ready)(timeout=120)
            execute(client, nb, row, again=True)
    row["seconds"] = round(time.monotonic() - start)
    return row


def execute(client, nb, row: dict, again: bool = False) -> bool:
    """Run the code cells in order until one fails, filling `row`; True when the install cell asked for a
    restart (then it stops there)."""
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        began = time.monotonic()
        try:
            client.execute_cell(cell, index)
            ok = True
            row["error"] = ""
        except (CellExecutionError, CellTimeoutError) as error:
            ok = False
            lines = [line for line in str(error).strip().splitlines() if line.strip()]
            row["error"] = f"{cell.get('id')}: {lines[-1][:150] if lines else type(error).__name__}"
        if str(cell.get("id")).startswith("install") and again:
            row["install_after_restart"] = text_of(cell)
        elif str(cell.get("id")).startswith("install"):
            row["install_s"] = round(time.monotonic() - began)
            row["install_output"] = text_of(cell)
            found = re.search(r"with (\d+) other packages?(?:: (.*))?", text_of(cell))
            row["installed"] = (f"{found.group(1)}: {found.group(2) or ''}" if found
                                else text_of(cell).strip()[:200] or "(nothing printed)")
            if ok and "RESTART NEEDED" in text_of(cell):
                return True
        elif re.search(r'\bsetup\("', cell.source):
            row["setup"] = "ok" if ok else "FAILED"
        elif index == len(nb.cells) - 1:
            row["exercise"] = "passed" if ok else "FAILED"
        if not ok:
            break
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.colab_like", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=[],
                        help="notebook ids (default: every solution notebook)")
    parser.add_argument("--rebuild", action="store_true", help="build the base environment anew")
    parser.add_argument("--runtime", choices=sorted(RUNTIMES), default=DEFAULT_RUNTIME,
                        help=f"which Colab to imitate (default {DEFAULT_RUNTIME}, Colab's newest known)")
    parser.add_argument("--venv", type=Path, help="the environment's folder (default: the runtime's own)")
    parser.add_argument("--python", help="the interpreter (default: COLAB_LIKE_PYTHON, the runtime's pyenv "
                                         "Python, python3.13 or python3.12 on PATH)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--preload", nargs="*", default=list(PRELOADED),
                        help=f"modules the kernel imports at its start (default: {' '.join(PRELOADED)})")
    args = parser.parse_args(argv)
    os.environ.pop("PYTHONPATH", None)  # neither pip nor the kernel may see this checkout's course/

    runtime = RUNTIMES[args.runtime]
    args.venv = args.venv or Path(os.environ.get("COLAB_LIKE_VENV", runtime["venv"]))
    try:
        python = find_python(runtime, args.python)
        held = lock(args.venv)
        base = ensure_base(args.venv, python, runtime["packages"], args.rebuild)
    except Refused as reason:
        print(reason, file=sys.stderr)
        return 2
    base.pop("sysml-course", None)
    print(f"base ({args.runtime}): python {Path(python).parent.parent.name}, ipython {base.get('ipython')}, "
          f"ipykernel {base.get('ipykernel')}, torch {base.get('torch')}, "
          f"numpy {base.get('numpy')}, pandas {base.get('pandas')}, no course", flush=True)
    work = Path(tempfile.mkdtemp(prefix="colab-like-"))
    wheel = build_wheel(work / "dist")
    os.environ.update(COURSE_SOURCE=wheel.resolve().as_uri(), COLAB_RELEASE_TAG="colab-like",
                      JUPYTER_PATH=str(kernelspec(work / "jupyter", args.venv)), HOME=str(work / "home"),
                      PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip")),
                      MPLBACKEND="agg")
    startup = work / "home" / ".ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab-preload.py").write_text("".join(f"import {name}\n" for name in args.preload))
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
        setup = r["setup"] + (" (after the restart the cell asked for)" if r.get("restarted") else "")
        print(f"| {r['notebook']} | {r['install_s']} | {installed} | {setup} | {r['exercise']} | "
              f"{r['seconds']} | {r['error']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    failed = [r["notebook"] for r in rows if r["setup"] != "ok" or r["exercise"] != "passed"]
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed"
          + (f": {' '.join(failed)}" if failed else ""))
    held.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
