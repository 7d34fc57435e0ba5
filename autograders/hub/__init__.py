"""A JupyterHub for an instructor-led lab on this machine (`make hub`): course infrastructure.

    python -m autograders.hub up [--root /srv/sysml-hub] [--learners 30] [--prefix sysml-]
                                 [--modules 00_orientation ...]
                                 [--port 8000] [--ssl-key KEY --ssl-cert CERT]
    python -m autograders.hub status|down [--remove-accounts]

Run as root (it makes Unix accounts and starts servers as them). What it builds under the hub root
(``HUB_ROOT``, default /srv/sysml-hub), each part kept when present, so ``up`` is idempotent:

- ``env/``: the learners' Python environment, a venv of a Python every user may execute (`base_python`;
  the repository's own venv lives under /root/.pyenv, which only root can enter), holding the course as a
  built wheel (never the repository: it holds solutions/ and hidden tests), JupyterHub, JupyterLab,
  nbgrader and the modules' extras, pinned by constraints.txt (`build_env`);
- ``proxy/``: JupyterHub's proxy, configurable-http-proxy, from package-lock.json beside this file
  (``npm ci``);
- ``accounts.csv`` (mode 600, root): the instructor and the learners, one generated password each, set with
  chpasswd; JupyterHub logs them in with PAM (PAMAuthenticator, its default) and starts each server as that
  Unix user (LocalProcessSpawner), so Unix permissions keep learners out of each other's homes; each
  account's GECOS is ``sysml-hub <role> <root>``: a hub uses and removes only its own root's accounts;
- ``exchange/`` (1777): nbgrader's exchange for course ``sysml`` (`settings.COURSE_ID`), named in the
  environment's global nbgrader_config.py;
- ``instructor-repo/`` (mode 700, the instructor's): the autograders, the course and the solutions, for the
  instructor's nbgrader only; the instructor's course folder ``~/sysml`` holds source/, release/ and the
  gradebook; the assignments (one per module id: 00_orientation ... 07b_serving) are released to the exchange;
- ``hub/`` (mode 700, root): JupyterHub's configuration, database, secrets, log and pid file; a re-run whose
  configuration differs (more learners, another port or certificate) restarts JupyterHub.

Who sees what: learners get the Assignments panel and Validate; only the instructor gets Formgrader, Create
Assignment and Courses (nbgrader's server and lab extensions are off in the environment and switched on in the
instructor's own Jupyter config). The instructor's autograde (formgrader's button or ``nbgrader autograde``)
runs each submission in the walled grading kernel of `autograders.sandbox`, as ``make grade`` does.

Stdlib only: ``make hub`` runs it with the system's Python, before any course environment exists.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl as ssl_module
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_ROOT = Path("/srv/sysml-hub")
DEFAULT_PREFIX = "sysml-"
MAX_LEARNERS = 500
COURSE_ID = "sysml"  # autograders.settings.COURSE_ID (not imported: settings needs nbgrader's stack)
COURSE_FOLDER = "sysml"  # the instructor's course folder, in their home
# The GECOS field of every account this module makes, "sysml-hub <role> <hub root>": only accounts marked
# with this hub's root are ever taken over or removed (`owner_root`); a hub never touches another root's.
MARKER = "sysml-hub"
PYTHON_CANDIDATES = ("/usr/bin/python3.11", "/usr/bin/python3.12", "/usr/bin/python3.13", "/usr/bin/python3")
# Pinned JupyterHub and the packages of a learner's server; the rest comes from constraints.txt and the
# modules' extras. jupyterhub 6.1.1: the newest release (PyPI, 2026-10) when this was written.
HUB_PACKAGES = [
    "jupyterhub==6.1.1",
    "jupyterlab==4.6.6",
    "nbgrader==0.9.6",
    "ipykernel==7.2.0",
    "notebook==7.6.5",
    "jupyterhub-idle-culler==2.0.0",  # stops servers idle for IDLE_TIMEOUT_S (a hub service)
]
# nbgrader's extensions (nbgrader docs, "Installation: disabling extensions", 0.9): off for everyone in the
# environment, on again in the instructor's own config. Learners keep assignment_list and validate.
INSTRUCTOR_SERVER_EXTENSIONS = [
    "nbgrader.server_extensions.formgrader",
    "nbgrader.server_extensions.course_list",
]
INSTRUCTOR_LAB_EXTENSIONS = [
    "@jupyter/nbgrader:formgrader",
    "@jupyter/nbgrader:course-list",
    "@jupyter/nbgrader:create-assignment",
]
HUB_START_TIMEOUT_S = 120
SERVER_START_TIMEOUT_S = 180  # a learner's server imports JupyterLab and nbgrader; slow on a busy machine
# Each account's server runs under `prlimit --nproc`: RLIMIT_NPROC counts every process and thread of the Unix
# user, so a learner's fork bomb stops there instead of taking the machine (torch's threads and 04's torchrun
# workers fit well below it). Memory and CPU caps need control groups (systemd's SystemdSpawner): not here.
LEARNER_NPROC = 1024
IDLE_TIMEOUT_S = 3600  # jupyterhub-idle-culler stops a server with no activity for this long
NODE_MIN = (20, 19)
NODE_HELP = (
    "JupyterHub's proxy (configurable-http-proxy 5.3.0) needs Node.js 20.19 or newer and npm. Debian 12's "
    "apt nodejs is 18, too old: install Node 20 or 22 from NodeSource's packages "
    "(https://github.com/nodesource/distributions) or nodejs.org, then run make hub again"
)


class HubError(RuntimeError):
    """The hub cannot be built or started here; the message says why and what to do."""


# Variables of the calling process (a test session, another Python's venv) that, inherited by the system Python
# building the hub environment, can make it load another Python's modules or libraries: in a CI run its pip said
# "the ssl module in Python is not available" and found no release. The hub's builds run without them.
FOREIGN_LIBRARY_VARIABLES = ("LD_LIBRARY_PATH", "LD_PRELOAD", "OPENSSL_CONF", "OPENSSL_MODULES", "VIRTUAL_ENV")


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("check", True)
    if "env" not in kwargs:
        kwargs["env"] = {k: v for k, v in os.environ.items()
                         if k not in FOREIGN_LIBRARY_VARIABLES and not k.startswith("PYTHON")}
    return subprocess.run([str(a) for a in argv], **kwargs)


def _pip(argv: list, attempts: int = 3, wait_s: float = 20.0) -> subprocess.CompletedProcess:
    """`_run` a pip install, again up to `attempts` times: an index that answers nothing for a moment makes pip
    report "from versions: none" for a pinned release that exists (seen once in a CI run)."""
    for attempt in range(1, attempts + 1):
        try:
            return _run(argv)
        except subprocess.CalledProcessError:
            if attempt == attempts:
                raise
            print(f"pip failed (attempt {attempt} of {attempts}); trying again in {wait_s:.0f} s", flush=True)
            time.sleep(wait_s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sha(*paths: Path, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def blocking_directory(path: Path, user: str = "nobody") -> Path | None:
    """The first folder on the way to `path` that `user` may not enter (no x bit for them), or None."""
    for folder in [*reversed(Path(path).resolve().parents), Path(path).resolve()]:
        if not folder.is_dir():
            break
        probe = _run(["runuser", "-u", user, "--", "test", "-x", folder], check=False)
        if probe.returncode != 0:
            return folder
    return None


def unsafe_folder(path: Path) -> str | None:
    """Why root may not build and run a hub in `path`, or None: `path` (where it exists) and every folder
    above it must be root's, and none writable by others unless sticky (as /tmp is; then the next one must
    be root's). A learner's folder would let them swap what root builds and runs, or plant a symlink where
    root writes the passwords."""
    path = Path(path).resolve()
    chain = [*reversed(path.parents), path]
    for i, folder in enumerate(chain):
        try:
            st = folder.lstat()
        except FileNotFoundError:
            break
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != 0:
            try:
                owner = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                owner = f"uid {st.st_uid}"
            return f"{folder} belongs to {owner}, not root"
        sticky = mode & stat.S_ISVTX and folder != path and i + 1 < len(chain)
        if mode & 0o022 and not sticky:
            return f"{folder} is writable by {'others' if mode & 0o002 else 'its group'} (mode {mode:o})"
    return None


def exposed_solutions(user: str = "nobody") -> Path | None:
    """A file of the repository's solutions (hidden tests in them) that `user` may read, or None."""
    for notebook in sorted((REPO / "solutions").glob("*/*.ipynb"))[:1]:
        probe = _run(["runuser", "-u", user, "--", "test", "-r", notebook], check=False)
        if probe.returncode == 0:
            return notebook
    return None


def base_python() -> str:
    """A Python 3.11+ that every user may execute (checked as `nobody`), for the learners' environment.

    Raises HubError naming the folder that blocks it when none is found (the repository's own venv is made
    from /root/.pyenv's, which only root can enter).
    """
    tried = []
    for candidate in PYTHON_CANDIDATES:
        if not os.path.exists(candidate):
            continue
        check = _run(
            [
                "runuser",
                "-u",
                "nobody",
                "--",
                candidate,
                "-c",
                "import sys, venv; assert sys.version_info >= (3, 11)",
            ],
            check=False,
            capture_output=True,
        )
        if check.returncode == 0:
            return candidate
        blocked = blocking_directory(Path(candidate).parent)
        tried.append(
            f"{candidate} ({'blocked by ' + str(blocked) if blocked else 'older than 3.11 or no venv'})"
        )
    raise HubError(
        "no Python 3.11+ that every user may run (the hub's learners run as their own Unix users); "
        f"tried: {', '.join(tried) or ', '.join(PYTHON_CANDIDATES)}. Install one, e.g. "
        "apt-get install python3.11 python3.11-venv"
    )


def python_version(python: str) -> tuple[int, int, int]:
    out = _run(
        [python, "-c", "import sys; print(*sys.version_info[:3])"], capture_output=True, text=True
    ).stdout
    return tuple(int(x) for x in out.split())


# soupsieve 3.0.2 and newer require Python >= 3.11.5 (PyPI metadata; 3.0 and 3.0.1 were yanked); Debian 12's
# Python is 3.11.2. A bs4 helper
# (nbconvert's HTML export), nothing a notebook imports: the hub environment takes the newest it may have.
RELAXED_BELOW = {"soupsieve": ((3, 11, 5), "soupsieve==2.10")}


def hub_constraints(version: tuple[int, int, int], target: Path) -> Path:
    """constraints.txt for the hub environment: the repository's pins, less those the base Python (`version`)
    cannot install (`RELAXED_BELOW`), written to `target`."""
    lines = []
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name = line.split("==")[0].strip().lower()
        if name in RELAXED_BELOW and version < RELAXED_BELOW[name][0]:
            line = RELAXED_BELOW[name][1]
        lines.append(line)
    target.write_text("\n".join(lines) + "\n")
    return target


def extras(modules: list[str]) -> list[str]:
    """The course's extras (pyproject.toml: one per notebook, PEP 685 names) for these module ids."""
    return [m.replace("_", "-") for m in modules]


def all_modules() -> list[str]:
    return sorted(p.stem for p in (REPO / "solutions").glob("*/*.ipynb") if p.stem[:2] == p.parent.name[:2])


def build_env(root: Path, modules: list[str], log=print) -> Path:
    """Make (or bring up to date) the learners' environment in `root`/env; its python (seconds taken: in
    env/.build-s). Raises HubError where no Python every user may run exists, or torch is not the CPU build.

    Dependencies are installed once per set of pins and extras (a stamp); the course wheel is rebuilt and
    reinstalled (without dependencies) whenever course/ or autograders/ changed.
    """
    env = root / "env"
    python = env / "bin" / "python"
    started = time.monotonic()
    base = base_python()
    version = python_version(base)
    want = _sha(
        REPO / "constraints.txt", REPO / "pyproject.toml", extra=" ".join(HUB_PACKAGES + sorted(modules))
    )
    stamp = env / ".deps-installed"
    if not (python.exists() and stamp.exists() and stamp.read_text() == want):
        log(f"building the hub environment in {env} from {base} (Python {'.'.join(map(str, version))})")
        if not python.exists():
            _run([base, "-m", "venv", env])
        _pip([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip", "setuptools>=68"])
        constraints = hub_constraints(version, env / "constraints.txt")
        # torch first and alone, as the Makefile does: the CPU build, never swapped for a CUDA one later
        torch_pin = next(line for line in constraints.read_text().splitlines() if line.startswith("torch=="))
        _pip([python, "-m", "pip", "install", "--quiet", "-c", constraints, torch_pin])
        wheel = _course_wheel(root, python)
        spec = f"{wheel}[{','.join(extras(modules))}]" if modules else str(wheel)
        _pip([python, "-m", "pip", "install", "--quiet", "-c", constraints, *HUB_PACKAGES, spec])
        stamp.write_text(want)
    wheel = _course_wheel(root, python)
    configured = env / ".configured"
    done = want + wheel.name + _sha(wheel, Path(__file__))
    if configured.exists() and configured.read_text() == done:
        return python
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", wheel])
    torch = _run(
        [python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    ).stdout
    if "+cpu" not in torch:
        raise HubError(
            f"the hub environment's torch is {torch.strip()}, not the CPU build: remove {env} and "
            "make the CPU wheel findable (pip's find-links, or TORCH_INDEX as for make lab)"
        )
    _configure_env(root, env)
    configured.write_text(done)
    seconds = time.monotonic() - started
    (env / ".build-s").write_text(f"{seconds:.0f}\n")
    log(f"hub environment ready in {seconds:.0f} s")
    return python


def _course_wheel(root: Path, python: Path) -> Path:
    """Build the course's wheel (course and autograders packages only: pyproject.toml lists them) into
    root/wheels, once per content."""
    out = root / "wheels"
    digest = hashlib.sha256()
    for folder in ("course", "autograders"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and "node_modules" not in path.parts:
                digest.update(str(path.relative_to(REPO)).encode() + path.read_bytes())
    digest.update((REPO / "pyproject.toml").read_bytes())
    target = out / digest.hexdigest()[:12]
    found = sorted(target.glob("*.whl"))
    if found:
        return found[0]
    shutil.rmtree(out, ignore_errors=True)
    build = root / "wheel-build"
    shutil.rmtree(build, ignore_errors=True)
    shutil.copytree(
        REPO,
        build,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "node_modules",
            "grading",
            "build",
            "*.egg-info",
            "__pycache__",
            "solutions",
            "modules",
            "tests",
            ".binder-box",
            "test-artifacts",
        ),
    )
    _run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", target, build])
    shutil.rmtree(build, ignore_errors=True)
    return sorted(target.glob("*.whl"))[0]


def _configure_env(root: Path, env: Path) -> None:
    """The environment's Jupyter config: course id and exchange for everyone, Validate judged as grading
    judges (autograders.validate), and the instructor-only nbgrader extensions off."""
    etc = env / "etc" / "jupyter"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "nbgrader_config.py").write_text(
        "# Written by autograders/hub: every account's nbgrader finds this course's exchange.\n"
        "c = get_config()  # noqa: F821\n"
        f"c.CourseDirectory.course_id = {COURSE_ID!r}\n"
        f"c.Exchange.root = {str(root / 'exchange')!r}\n"
        "# a notebook missing from the submission (renamed, say) is refused at submit, not found at grading\n"
        "c.ExchangeSubmit.strict = True\n"
    )
    _run(
        [
            env / "bin" / "python",
            "-c",
            TOGGLE.format(
                on=False, user=False, server=INSTRUCTOR_SERVER_EXTENSIONS, lab=INSTRUCTOR_LAB_EXTENSIONS
            )
            + "\nimport autograders.validate as v; v.install()",
        ],
        capture_output=True,
    )
    overrides = REPO / "binder" / "overrides.json"  # as make lab: no "get Jupyter news?" pop-up
    if overrides.exists():
        settings = env / "share" / "jupyter" / "lab" / "settings"
        settings.mkdir(parents=True, exist_ok=True)
        shutil.copy(overrides, settings / "overrides.json")
    for path in [env, *env.rglob("*")]:  # readable by everyone, writable by root only
        if not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod((mode | stat.S_IRGRP | stat.S_IROTH | (0o011 if mode & 0o100 else 0)) & ~0o022)


# Switch nbgrader's instructor extensions on or off in one Jupyter config: the environment's (sys.prefix) or
# the user's (~/.jupyter, which JupyterLab and Jupyter Server read after the environment's, so it wins). As
# `jupyter server extension enable --user` and `jupyter labextension enable --level=user` do, written
# directly: the former's check fails for an instructor whose nbgrader_config imports the course.
TOGGLE = """
import json, os, sys
from pathlib import Path
from jupyter_server.extension.serverextension import toggle_server_extension_python
for name in {server!r}:
    toggle_server_extension_python(name, {on!r}, user={user!r}, sys_prefix=not {user!r})
folder = (Path.home() / ".jupyter" if {user!r} else Path(sys.prefix) / "etc" / "jupyter") / "labconfig"
folder.mkdir(parents=True, exist_ok=True)
path = folder / "page_config.json"
page = json.loads(path.read_text()) if path.exists() else {{}}
page.setdefault("disabledExtensions", {{}}).update({{name: not {on!r} for name in {lab!r}}})
for name in {lab!r}:
    page.get("lockedExtensions", {{}}).pop(name, None)
path.write_text(json.dumps(page, indent=2))
"""


def proxy_installed(root: Path) -> bool:
    proxy = root / "proxy"
    stamp = proxy / ".installed"
    return (
        (proxy / "node_modules" / ".bin" / "configurable-http-proxy").exists()
        and stamp.exists()
        and stamp.read_text() == _sha(HERE / "package-lock.json")
    )


def check_node() -> None:
    """Raises HubError (`NODE_HELP`) unless node >= 20.19 and npm are on PATH.

    configurable-http-proxy 5.3.0 loads commander 15, an ES module, with require(): Node 20.19 or newer
    (package-lock.json; commander's engines field asks for 22.12, but 20.19+ loads it, as tests/test_hub.py
    shows on Node 20.20)."""
    if not shutil.which("npm") or not shutil.which("node"):
        raise HubError(f"node or npm is missing. {NODE_HELP}")
    version = _run(["node", "--version"], capture_output=True, text=True).stdout.strip().lstrip("v")
    try:
        found = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        found = (0, 0)
    if found < NODE_MIN:
        raise HubError(f"node {version} is too old. {NODE_HELP}")


def install_proxy(root: Path) -> Path:
    """configurable-http-proxy, as pinned in package-lock.json beside this file, in root/proxy; its command.
    Raises HubError without npm."""
    proxy = root / "proxy"
    command = proxy / "node_modules" / ".bin" / "configurable-http-proxy"
    stamp = proxy / ".installed"
    want = _sha(HERE / "package-lock.json")
    if command.exists() and stamp.exists() and stamp.read_text() == want:
        return command
    check_node()
    proxy.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(HERE / name, proxy / name)
    _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=proxy)
    stamp.write_text(want)
    return command


# ------------------------------------------------------------------------------------------- accounts


def _user_exists(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def gecos(role: str, root: Path) -> str:
    """The GECOS marker of an account this module makes for the hub in `root`."""
    return f"{MARKER} {role} {Path(root)}"


def owner_root(found: pwd.struct_passwd) -> str | None:
    """The hub root an account was made for: its GECOS marker's root; "" for an account marked by an older
    version of this module (no root recorded); None for an account this module did not make."""
    parts = found.pw_gecos.split(" ", 2)
    if parts[0] != MARKER:
        return None
    return parts[2] if len(parts) == 3 else ""


def is_ours(found: pwd.struct_passwd, root: Path, listed: bool) -> bool:
    """Whether the hub in `root` may use or remove `found`: marked with this root, or marked without a root
    (made before roots were recorded) and listed in this root's accounts.csv (`listed`)."""
    owner = owner_root(found)
    return owner == str(Path(root)) or (owner == "" and listed)


def check_accounts(wanted: dict[str, str], root: Path, listed: set[str]) -> None:
    """Raises HubError naming every account in `wanted` (name -> role) that exists and is not this hub's:
    checked before any account is made, so a refusal leaves nothing behind."""
    problems = []
    for name in wanted:
        found = _user_exists(name)
        if found is not None and not is_ours(found, root, name in listed):
            owner = owner_root(found)
            why = (
                f"belongs to the hub in {owner}"
                if owner
                else f"was not made by this hub (GECOS {found.pw_gecos!r})"
            )
            problems.append(f"user {name} exists and {why}")
    if problems:
        raise HubError("; ".join(problems) + ": choose another --prefix (no account was made)")


def ensure_user(name: str, role: str, root: Path, listed: bool = False) -> pwd.struct_passwd:
    """The Unix account `name`, made (home mode 700, a group of its own, GECOS `gecos(role, root)`) if
    missing. Raises HubError for an account this hub did not make (`is_ours`): it never takes over, nor later
    removes, anyone else's, nor another hub root's."""
    found = _user_exists(name)
    if found is None:
        _run(
            [
                "useradd",
                "--create-home",
                "--user-group",
                "--shell",
                "/bin/bash",
                "--comment",
                gecos(role, root),
                name,
            ]
        )
        found = pwd.getpwnam(name)
    elif not is_ours(found, root, listed):
        check_accounts({name: role}, root, {name} if listed else set())
    elif (
        owner_root(found) == ""
    ):  # an older hub's marker, listed in this root's accounts.csv: record the root
        _run(["usermod", "--comment", gecos(role, root), name])
        found = pwd.getpwnam(name)
    os.chmod(found.pw_dir, 0o700)
    return found


def remove_user(name: str, root: Path) -> bool:
    """Remove the account `name` and its home, only if the hub in `root` made it; whether it did."""
    found = _user_exists(name)
    if found is None or not is_ours(found, root, listed=True):
        return False
    kill_user_processes(found.pw_uid)
    # what the account left in the shared temporary folders: the next account given its uid would own it
    _run(["find", "/tmp", "/var/tmp", "/dev/shm", "-xdev", "-depth", "-uid", str(found.pw_uid), "-delete"],
         check=False, capture_output=True)
    _run(["userdel", "--remove", name], check=False, capture_output=True)
    return _user_exists(name) is None


def kill_user_processes(uid: int) -> int:
    """SIGKILL every process of `uid` (by /proc, one by one by id); how many."""
    killed = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    os.kill(int(entry), signal.SIGKILL)
                    killed += 1
            except (OSError, ProcessLookupError):
                pass
    return killed


def read_accounts(path: Path) -> dict[str, tuple[str, str]]:
    """accounts.csv: name -> (role, password)."""
    if not path.exists():
        return {}
    with open(path, newline="") as handle:
        return {row["user"]: (row["role"], row["password"]) for row in csv.DictReader(handle)}


def write_accounts(path: Path, accounts: dict[str, tuple[str, str]]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["user", "role", "password"])
        for name, (role, password) in accounts.items():
            writer.writerow([name, role, password])
    os.chmod(path, 0o600)


# ------------------------------------------------------------------------------------------- the hub

CONFIG_TEMPLATE = """\
# Written by autograders/hub (python -m autograders.hub up); rewritten by every `up`, which restarts
# JupyterHub when this file changed (new learners, another port).
c = get_config()  # noqa: F821
c.JupyterHub.bind_url = {bind_url!r}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = {db_url!r}
c.JupyterHub.cookie_secret_file = {cookie!r}
c.JupyterHub.pid_file = {pid!r}
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = {proxy_pid!r}
c.ConfigurableHTTPProxy.auth_token = {proxy_token!r}
{ssl}
# PAM (JupyterHub's default authenticator): the accounts' Unix passwords; only the hub's own accounts.
c.JupyterHub.authenticator_class = "pam"
c.Authenticator.allowed_users = set({users!r})
c.Authenticator.admin_users = set()
# Each server runs as its Unix user (LocalProcessSpawner, the default), from the learners' environment.
c.JupyterHub.spawner_class = "localprocess"
# prlimit: at most LEARNER_NPROC processes and threads per account (a fork bomb stops there); memory and CPU
# caps would need control groups (systemd), which this spawner does not set.
c.Spawner.cmd = {cmd!r}
c.Spawner.notebook_dir = "~"
c.Spawner.default_url = "/lab"
c.Spawner.environment = {{"PATH": {path!r}}}
c.Spawner.start_timeout = {start_timeout}
c.Spawner.http_timeout = {start_timeout}
# A service with the admin role: the hub's own tools (tests, `status`) use its token.
# jupyterhub-idle-culler (its README's service and role): stops servers idle for {idle} s.
c.JupyterHub.services = [
    {{"name": "sysml-hub-admin", "api_token": {admin_token!r}}},
    {{"name": "idle-culler", "command": [{python!r}, "-m", "jupyterhub_idle_culler", "--timeout={idle}"]}},
]
c.JupyterHub.load_roles = [
    {{"name": "admin", "services": ["sysml-hub-admin"]}},
    {{
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    }},
]
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True
"""

INSTRUCTOR_CONFIG = """\
# Written by autograders/hub: the instructor's nbgrader, configured as `make grade` configures a grading
# folder (autograders.settings.configure), with the walled grading kernel of autograders/sandbox.py.
import os
import sys

sys.path.insert(0, {repo!r})
from autograders.settings import configure  # noqa: E402

c = get_config()  # noqa: F821
configure(c, root={course!r}, release_directory="release", source_directory={source!r})
c.CourseDirectory.course_id = {course_id!r}
c.Exchange.root = {exchange!r}
# collect only entries of the student they name, skip oversized or broken ones: autograders/hub/exchange.py,
# by path (the Lab server has imported the environment's autograders already, whose wheel has no hub package)
import importlib.util  # noqa: E402
_spec = importlib.util.spec_from_file_location("sysml_hub_exchange", {exchange_py!r})
_exchange = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_exchange)
c.ExchangeFactory.collect = _exchange.HubCollect
c.ExchangeFactory.release_feedback = _exchange.HubReleaseFeedback  # a page for each ungradable submission
c.Execute.kernel_name = {kernel!r}    # walled in: no network, gradebook and solutions hidden, caps
c.KernelManager.transport = "ipc"     # the kernel's network namespace cannot reach this process's TCP
c.KernelManager.ip = {ipc!r}
os.makedirs(os.path.dirname(c.KernelManager.ip), mode=0o700, exist_ok=True)  # in the instructor's home
"""

# Run by the instructor (runuser) in the hub environment: grading kernel, source, release, students.
INSTRUCTOR_SETUP = """
import json, shutil, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from autograders import sandbox, settings
course = Path({course!r})
hidden = [course, settings.SOLUTIONS, {exchange!r}]
sandbox.write_kernelspec(Path.home() / ".local/share/jupyter", hide=hidden)
print("isolation:", sandbox.isolation())
from traitlets.config import Config
from nbgrader.apps import NbGraderAPI
config = Config()
code = compile(open(course / "nbgrader_config.py").read(), "nbgrader_config.py", "exec")
exec(code, {{"get_config": lambda: config}})
api = NbGraderAPI(config=config)
for module in {modules!r}:
    source = course / "source" / module
    if not (course / "release" / module).exists():
        shutil.rmtree(source, ignore_errors=True)
        keep = lambda _, names: [n for n in names if n.endswith(".ipynb") and n != module + ".ipynb"
                                 or n == ".ipynb_checkpoints"]
        shutil.copytree(settings.solution_notebook(module).parent, source, ignore=keep)
        result = api.generate_assignment(module, force=True, create=True)
        if not result["success"]:
            sys.exit("generate_assignment " + module + ": " + str(result.get("error") or result["log"]))
    if not (Path({exchange!r}) / {course_id!r} / "outbound" / module).exists():
        result = api.release_assignment(module)
        if not result["success"]:
            sys.exit("release_assignment " + module + ": " + str(result.get("error") or result["log"]))
from nbgrader.api import Gradebook
with Gradebook(config.CourseDirectory.db_url) as gb:
    for student in {learners!r}:
        gb.update_or_create_student(student, first_name="learner", last_name=student)  # not "None, None"
print("released:", ", ".join({modules!r}))
"""


class Hub:
    """A lab hub under `root` (see the module docstring): `up`, `down`, the accounts and the URL.

    `learners` accounts ``<prefix>learner01``... and one ``<prefix>instructor``; `modules` the module ids
    whose extras are installed and whose assignments are released (empty: all); `port` 0 picks a free port
    (kept while running). Root only; `up` raises HubError with the reason where the hub cannot run.
    Use as a context manager to bring it down (accounts kept) on leaving.
    """

    def __init__(
        self,
        root: Path,
        learners: int = 2,
        prefix: str = DEFAULT_PREFIX,
        modules=("00_orientation",),
        port: int = 0,
        ssl_key: str | None = None,
        ssl_cert: str | None = None,
        log=print,
    ):
        self.root = Path(root).resolve()
        self.n_learners = learners
        self.prefix = prefix
        self.modules = list(modules) if modules else all_modules()
        self.port = port
        self.ssl_key, self.ssl_cert = ssl_key, ssl_cert
        self.log = log
        self.instructor = f"{prefix}instructor"
        self.learners = [f"{prefix}learner{i:02d}" for i in range(1, learners + 1)]
        self.env = self.root / "env"
        self.state_dir = self.root / "hub"
        self.exchange = self.root / "exchange"
        self.accounts_file = self.root / "accounts.csv"
        self.instructor_repo = self.root / "instructor-repo"

    # ------------------------------------------------------------------ facts
    @property
    def accounts(self) -> dict[str, str]:
        """name -> password, from accounts.csv."""
        return {name: password for name, (_, password) in read_accounts(self.accounts_file).items()}

    @property
    def api_url(self) -> str:
        """JupyterHub's REST API on its internal port (plain HTTP on 127.0.0.1), or through the public URL
        for a hub started before the internal port was recorded."""
        port = self._state().get("hub_port")
        return f"http://127.0.0.1:{port}/hub/api/" if port else f"{self.url}hub/api/"

    @property
    def url(self) -> str:
        state = self._state()
        scheme = "https" if state.get("ssl") else "http"
        return f"{scheme}://127.0.0.1:{state.get('port', self.port)}/"

    def home(self, user: str) -> Path:
        return Path(pwd.getpwnam(user).pw_dir)

    @property
    def course(self) -> Path:
        """The instructor's nbgrader course folder."""
        return self.home(self.instructor) / COURSE_FOLDER

    def _state(self) -> dict:
        path = self.state_dir / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _processes(self, needle: str) -> list[int]:
        """Ids of root's processes whose command line holds `needle` (read from /proc): only root can start a
        process as root, so no learner's command line that merely names our files is taken for ours."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    if os.stat(f"/proc/{entry}").st_uid != 0:
                        continue
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                if needle.encode() in cmdline:
                    found.append(int(entry))
        return found

    def _is_hub(self, pid: int) -> bool:
        """Whether `pid` is root's process running this hub's ``jupyterhub -f <our config>``."""
        try:
            if os.stat(f"/proc/{pid}").st_uid != 0:
                return False
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        argv = [a.decode(errors="replace") for a in argv]
        config = str(self.state_dir / "jupyterhub_config.py")
        runs_hub = any(a == str(self.env / "bin" / "jupyterhub") for a in argv[:2])
        return runs_hub and any(a == "-f" and b == config for a, b in zip(argv, argv[1:], strict=False))

    def pid(self) -> int | None:
        """JupyterHub's process id while it runs, else None: from its pid file (or, while it starts, the
        id `up` recorded), checked to be root's ``jupyterhub -f`` with this hub's config."""
        candidates = []
        try:
            candidates.append(int((self.state_dir / "jupyterhub.pid").read_text().strip()))
        except (OSError, ValueError):
            pass
        if self._state().get("pid"):
            candidates.append(int(self._state()["pid"]))
        return next((pid for pid in candidates if self._is_hub(pid)), None)

    def admin_token(self) -> str:
        return (self.state_dir / "admin-token").read_text().strip()

    # ------------------------------------------------------------------ bring up
    def __enter__(self) -> Hub:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> Hub:
        """Build what is missing and start JupyterHub; returns when it answers. Idempotent: a hub already
        running with the same configuration is left alone; one whose configuration changed (learners added,
        another port or certificate) is restarted, and says so. Everything is checked (root, Node.js, the
        port, the account names) before anything is built, and a start that fails stops what it started."""
        self._process = None
        self.restarted = False
        if os.geteuid() != 0:
            raise HubError("the hub makes Unix accounts and starts servers as them: run as root")
        if any(ch in str(self.root) for ch in ":,\n"):
            raise HubError(
                f"{self.root}: a hub root may not hold ':', ',' or a newline (it is recorded in GECOS)"
            )
        unknown = [m for m in self.modules if m not in all_modules()]
        if unknown:
            raise HubError(f"unknown module(s) {', '.join(unknown)}; modules: {', '.join(all_modules())}")
        if not 1 <= self.n_learners <= MAX_LEARNERS:
            raise HubError(
                f"LEARNERS={self.n_learners}: from 1 to {MAX_LEARNERS} on one machine (for more, see "
                "INSTRUCTORS.md, On Kubernetes)"
            )
        unsafe = unsafe_folder(self.root)
        if unsafe:
            raise HubError(
                f"{unsafe}: root would build and run the hub where another user can change it; choose a "
                "--root that root owns on a path only root may write (e.g. /srv/sysml-hub)"
            )
        exposed = exposed_solutions()
        if exposed:
            raise HubError(
                f"every user of this machine, so every learner, may read {exposed} (the solutions and hidden "
                f"tests): close the repository first, e.g. chmod 700 {REPO}, and run make hub again (the "
                f"instructor gets their own copy in {self.instructor_repo})"
            )
        if not proxy_installed(self.root):
            check_node()
        known = read_accounts(self.accounts_file)
        fewer = sorted(n for n, (role, _) in known.items() if role == "learner" and n not in self.learners)
        if fewer:
            self.log(
                f"LEARNERS={self.n_learners} removes no account: {len(fewer)} more learner accounts stay "
                f"({', '.join(fewer[:3])}{' ...' if len(fewer) > 3 else ''}; make hub-down "
                "HUB_ARGS=--remove-accounts removes them all)"
            )
        check_accounts(self._wanted(), self.root, set(known))
        running = self.pid()
        if running is not None and not (self.state_dir / "state.json").exists():
            self._stop()  # a hub whose port is no longer known: start it afresh
            running = None
        port = self._port()
        if running is None or port != self._state().get("port"):
            self._check_port(port, others_than=running)
        created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        if created:  # never loosen a folder that was there before (e.g. /tmp, or a home of mode 700)
            os.chmod(self.root, 0o755)
        elif self.root.stat().st_mode & 0o022:
            raise HubError(
                f"{self.root} is writable by others: choose a --root only root may write "
                "(e.g. /srv/sysml-hub)"
            )
        blocked = blocking_directory(self.root)
        if blocked:
            raise HubError(
                f"learners cannot reach {self.root}: {blocked} is closed to other users; choose another "
                "--root (e.g. /srv/sysml-hub)"
            )
        self.state_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self.exchange.mkdir(exist_ok=True)
        os.chmod(
            self.exchange, 0o1777
        )  # nbgrader docs: everyone writes (ugo+rw); the sticky bit (ours) keeps files their owners'
        build_env(self.root, self.modules, log=self.log)
        proxy = install_proxy(self.root)
        self._accounts()
        self._instructor()
        config_file = self.state_dir / "jupyterhub_config.py"
        before = config_file.read_text() if config_file.exists() else None
        config = self._write_config(proxy, port)
        if running is not None and config != before:
            self.log(
                "the hub's configuration changed (learners, port or certificate): restarting JupyterHub "
                "so it takes effect; running servers are stopped (saved files are kept); log in again"
            )
            self._stop()
            running = None
            self.restarted = True
        if running is None:
            self._start()
        try:
            self._wait()
        except HubError as error:
            self._stop()  # so that the next `make hub` starts afresh
            raise HubError(f"{error}\n(JupyterHub and its proxy were stopped)") from None
        return self

    def _wanted(self) -> dict[str, str]:
        return {self.instructor: "instructor", **{name: "learner" for name in self.learners}}

    def _port(self) -> int:
        """The public port: the one asked for, else the one in use, else a free one."""
        port = self.port or self._state().get("port") or _free_port()
        if not self.port and not _port_free(port, ssl=bool(self.ssl_cert)) and self.pid() is None:
            port = _free_port()
        return port

    def _check_port(self, port: int, others_than: int | None = None) -> None:
        """Raises HubError naming `port` and who holds it, where it is taken (by anything but this hub)."""
        if _port_free(port, ssl=bool(self.ssl_key and self.ssl_cert)):
            return
        holders = _port_holders(port)
        raise HubError(
            f"port {port} is in use"
            + (f" by {holders}" if holders else "")
            + ": stop that, or choose another port (make hub HUB_PORT=...; --port)"
        )

    def _accounts(self) -> None:
        """Make the accounts (all names were checked by `check_accounts` first); each new one is written
        to accounts.csv once it exists, before its password is set: `down --remove-accounts` sees it."""
        known = read_accounts(self.accounts_file)
        for name, role in self._wanted().items():
            ensure_user(name, role, self.root, listed=name in known)
            if name not in known:
                known[name] = (role, secrets.token_urlsafe(12))
                write_accounts(self.accounts_file, known)  # a password set is a password written down
                _run(["chpasswd"], input=f"{name}:{known[name][1]}\n", text=True)

    def _as(self, user: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run `argv` as `user` (runuser; HOME, USER and the hub environment first on PATH)."""
        home = self.home(user)
        env = {
            "HOME": str(home),
            "USER": user,
            "LOGNAME": user,
            "LANG": "C.UTF-8",
            "PATH": f"{self.env / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        }
        kwargs.setdefault("cwd", home)
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"  # found on root's PATH, not the user's
        return _run([runuser, "-u", user, "--", *argv], env=env, **kwargs)

    def _instructor(self) -> None:
        """The instructor's copy of the repository (mode 700), config, grading kernel, course and release."""
        user = pwd.getpwnam(self.instructor)
        repo = self.instructor_repo
        repo.mkdir(mode=0o700, exist_ok=True)
        for folder in ("autograders", "course", "solutions"):
            shutil.rmtree(repo / folder, ignore_errors=True)
            shutil.copytree(
                REPO / folder,
                repo / folder,
                ignore=shutil.ignore_patterns("__pycache__", "node_modules", ".ipynb_checkpoints", "*.pyc"),
            )
        shutil.copy(REPO / "pyproject.toml", repo / "pyproject.toml")
        _run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", repo])
        os.chmod(repo, 0o700)
        home = Path(user.pw_dir)
        course = home / COURSE_FOLDER
        # the grading kernels' sockets: a folder of the instructor's own home (mode 700), never a shared,
        # predictable /tmp path another account could take first; removed by `down`
        ipc = self.ipc_folder / "k"
        config = INSTRUCTOR_CONFIG.format(
            repo=str(repo),
            course=str(course),
            source=str(course / "source"),
            course_id=COURSE_ID,
            exchange=str(self.exchange),
            kernel="course-grading",
            ipc=str(ipc),
            exchange_py=str(repo / "autograders" / "hub" / "exchange.py"),
        )
        config = stamp_config(config)
        self._as(self.instructor, ["mkdir", "-p", course, home / ".jupyter"])
        self._as(self.instructor, ["mkdir", "-p", "-m", "700", self.ipc_folder])
        self._as(self.instructor, ["chmod", "700", self.ipc_folder])
        for target in (course / "nbgrader_config.py", home / ".jupyter" / "nbgrader_config.py"):
            current = self._as(self.instructor, ["cat", target], capture_output=True, text=True, check=False)
            if current.returncode == 0 and current.stdout != config and not is_generated(current.stdout):
                self.log(f"kept {target}: edited by the instructor (the hub's version is in {target}.hub)")
                target = target.with_name(target.name + ".hub")
            self._as(self.instructor, ["tee", target], input=config, text=True, stdout=subprocess.DEVNULL)
        self._as(self.instructor, ["chmod", "700", course])
        self._as(
            self.instructor,
            [
                self.env / "bin" / "python",
                "-c",
                TOGGLE.format(
                    on=True, user=True, server=INSTRUCTOR_SERVER_EXTENSIONS, lab=INSTRUCTOR_LAB_EXTENSIONS
                ),
            ],
            capture_output=True,
        )
        script = INSTRUCTOR_SETUP.format(
            repo=str(repo),
            course=str(course),
            exchange=str(self.exchange),
            course_id=COURSE_ID,
            modules=self.modules,
            learners=self.learners,
        )
        done = self._as(
            self.instructor,
            [self.env / "bin" / "python", "-c", script],
            cwd=course,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise HubError(f"setting up the instructor's course failed:\n{done.stdout}\n{done.stderr}")
        self.log(done.stdout.strip())

    def _write_config(self, proxy: Path, port: int) -> str:
        """Write hub/jupyterhub_config.py for `port` (the internal ports kept from the last start while free);
        its text. The same accounts, port and certificate give the same text, so `up` can tell a change."""
        state = self.state_dir
        for name in ("admin-token", "proxy-token"):
            if not (state / name).exists():
                fd = os.open(state / name, os.O_WRONLY | os.O_CREAT, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_hex(32))
        old = self._state()
        running = self.pid() is not None
        internal = {}
        for key in ("hub_port", "proxy_api_port"):
            kept = old.get(key)
            internal[key] = kept if kept and (running or _port_free(kept)) else _free_port()
        ssl = ""
        if self.ssl_key and self.ssl_cert:
            ssl = f"c.JupyterHub.ssl_key = {self.ssl_key!r}\nc.JupyterHub.ssl_cert = {self.ssl_cert!r}"
        scheme = "https" if ssl else "http"
        prlimit = shutil.which("prlimit") or "/usr/bin/prlimit"
        singleuser = str(self.env / "bin" / "jupyterhub-singleuser")
        config = CONFIG_TEMPLATE.format(
            bind_url=f"{scheme}://{'0.0.0.0' if ssl else '127.0.0.1'}:{port}/",
            hub_port=internal["hub_port"],
            db_url=f"sqlite:///{state / 'jupyterhub.sqlite'}",
            cookie=str(state / "jupyterhub_cookie_secret"),
            pid=str(state / "jupyterhub.pid"),
            proxy=str(proxy),
            proxy_api_port=internal["proxy_api_port"],
            proxy_pid=str(state / "proxy.pid"),
            proxy_token=(state / "proxy-token").read_text().strip(),
            ssl=ssl,
            users=sorted({self.instructor, *self.learners} | set(self.accounts)),
            cmd=[prlimit, f"--nproc={LEARNER_NPROC}", singleuser]
            if os.path.exists(prlimit)
            else [singleuser],
            python=str(self.env / "bin" / "python"),
            idle=IDLE_TIMEOUT_S,
            path=f"{self.env / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            start_timeout=SERVER_START_TIMEOUT_S,
            admin_token=self.admin_token(),
        )
        (state / "jupyterhub_config.py").write_text(config)
        os.chmod(state / "jupyterhub_config.py", 0o600)
        pid = old.get("pid") if running else None
        self._save_state(pid=pid, port=port, ssl=bool(ssl), **internal)
        return config

    def _save_state(self, **state) -> None:
        (self.state_dir / "state.json").write_text(json.dumps(state))

    def _start(self) -> None:
        state = self.state_dir
        env = {"PATH": f"{self.env / 'bin'}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
        (state / "jupyterhub.pid").unlink(missing_ok=True)
        with open(state / "jupyterhub.log", "ab") as out:
            process = subprocess.Popen(
                [str(self.env / "bin" / "jupyterhub"), "-f", str(state / "jupyterhub_config.py")],
                cwd=state,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._process = process
        self._save_state(**{**self._state(), "pid": process.pid})
        self.log(f"JupyterHub starting (pid {process.pid}) at {self.url}")

    def _wait(self) -> None:
        """Until the hub answers; raises HubError with the log's tail where it exits or stays silent."""
        deadline = time.monotonic() + HUB_START_TIMEOUT_S
        log = self.state_dir / "jupyterhub.log"
        while time.monotonic() < deadline:
            process = getattr(self, "_process", None)
            if process is not None and process.poll() is not None:
                status = process.returncode
                raise HubError(f"JupyterHub exited (status {status}); see {log}:\n{self._log_tail()}")
            if process is None and self.pid() is None:
                raise HubError(f"JupyterHub stopped; see {log}:\n{self._log_tail()}")
            try:
                self.api("GET", "")
                if self.answers():
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.5)
        raise HubError(
            f"JupyterHub did not answer at {self.url} in {HUB_START_TIMEOUT_S} s:\n{self._log_tail()}"
        )

    def answers(self) -> bool:
        """Whether the public port (through the proxy) answers HTTP(S) at /hub/login. Over TLS the
        certificate is not checked: it names the hub's public host, never 127.0.0.1."""
        context = ssl_module.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl_module.CERT_NONE
        try:
            with urllib.request.urlopen(f"{self.url}hub/login", timeout=10, context=context):
                return True
        except urllib.error.HTTPError:
            return True  # an HTTP answer all the same
        except (OSError, urllib.error.URLError):
            return False

    def _log_tail(self, lines: int = 30) -> str:
        path = self.state_dir / "jupyterhub.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # ------------------------------------------------------------------ use
    def api(self, method: str, path: str, body: dict | None = None, token: str | None = None):
        """Call JupyterHub's REST API (``/hub/api/<path>``) with the admin service's token (or `token`);
        the JSON answer. Raises urllib.error.HTTPError for an error status. It goes to the hub's internal
        port (plain HTTP on 127.0.0.1, `api_url`), not the public one, which may be HTTPS with a certificate
        for another host name."""
        request = urllib.request.Request(
            f"{self.api_url}{path.lstrip('/')}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"token {token or self.admin_token()}"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def start_server(self, *users: str, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
        """Start these users' single-user servers at once (as an admin would) and wait until all are ready."""
        for user in users:
            try:
                self.api("POST", f"users/{user}/server")
            except urllib.error.HTTPError as error:
                if error.code != 400:  # 400: already running
                    raise
        deadline = time.monotonic() + timeout_s
        waiting = list(users)
        while waiting and time.monotonic() < deadline:
            for user in list(waiting):
                server = (self.api("GET", f"users/{user}").get("servers") or {}).get("", {})
                if server.get("ready"):
                    waiting.remove(user)
            if waiting:
                time.sleep(1)
        if waiting:
            raise HubError(
                f"the servers of {', '.join(waiting)} did not start in {timeout_s:.0f} s:\n{self._log_tail()}"
            )

    def token(self, user: str) -> str:
        """A fresh API token of `user` (for their server's REST API)."""
        return self.api("POST", f"users/{user}/tokens", {"note": "sysml-hub", "expires_in": 3600})["token"]

    def status(self) -> dict:
        """Whether it runs, where, whether it answers, and whose servers are up; never raises for a hub that
        runs but does not answer."""
        pid = self.pid()
        if pid is None:
            return {"running": False, "root": str(self.root)}
        found = {"running": True, "url": self.url, "root": str(self.root), "pid": pid}
        try:
            users = self.api("GET", "users")
        except Exception as error:  # noqa: BLE001 (a status report, whatever went wrong)
            return {**found, "answering": False, "error": str(error)}
        return {
            **found,
            "answering": self.answers(),
            "servers_running": sorted(u["name"] for u in users if u.get("servers")),
        }

    def memory(self) -> dict[str, float]:
        """Proportional set size (MiB) of the hub with its proxy, and of each account's processes (psutil).

        PSS shares each shared page among the processes that map it, so the figures add up to what the
        machine holds.
        """
        import psutil

        def pss(procs) -> float:
            total = 0
            for proc in procs:
                try:
                    total += proc.memory_full_info().pss
                except (psutil.Error, OSError):
                    pass
            return total / 2**20

        figures = {}
        hub = psutil.Process(self.pid()) if self.pid() else None
        if hub:
            figures["hub+proxy"] = pss([hub] + [p for p in hub.children() if p.uids().real == 0])
        for name in self.accounts:
            uid = pwd.getpwnam(name).pw_uid
            figures[name] = pss([p for p in psutil.process_iter() if p.uids().real == uid])
        return figures

    # ------------------------------------------------------------------ bring down
    def _stop(self) -> None:
        """Stop JupyterHub (it stops the servers and the proxy), then whatever is left of them: this hub's
        process (`pid`), root's processes running this root's proxy."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        process = getattr(self, "_process", None)
        deadline = time.monotonic() + 30
        while self.pid() and time.monotonic() < deadline:
            if process is not None:
                process.poll()  # reap our own child, or it stays a zombie that looks alive
            time.sleep(0.2)
        leftovers = [
            self.pid(),
            *self._processes(str(self.root / "proxy" / "node_modules")),
            *self._processes(f"{self.env / 'bin' / 'python'} -m jupyterhub_idle_culler"),
        ]
        for pid in leftovers:
            try:
                if pid:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if process is not None:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        (self.state_dir / "proxy.pid").unlink(missing_ok=True)

    @property
    def ipc_folder(self) -> Path:
        return self.home(self.instructor) / ".sysml-hub-ipc"

    def down(self, remove_accounts: bool = False) -> None:
        """Stop JupyterHub (it stops the servers and the proxy), then what is left of the accounts' processes;
        with `remove_accounts`, remove the accounts this hub made (never another root's or anyone else's)
        with their homes, which holds the instructor's course: gradebook, submissions, feedback; and
        accounts.csv, the exchange and instructor-repo/. Returns the accounts removed. Raises HubError when
        not root, or when `root` holds no hub (a mistyped HUB_ROOT must not say "stopped")."""
        if os.geteuid() != 0:
            raise HubError("stopping the hub stops other users' servers: run as root")
        if not (self.state_dir.is_dir() or self.accounts_file.exists()):
            raise HubError(
                f"no hub in {self.root} (no hub/ nor accounts.csv there): nothing stopped; is HUB_ROOT "
                "the one make hub was given?"
            )
        accounts = read_accounts(self.accounts_file)
        if accounts and not any(name.startswith(self.prefix) for name in accounts):
            raise HubError(
                f"the hub in {self.root} has the accounts {', '.join(sorted(accounts)[:3])}...: their prefix is "
                f"not {self.prefix!r} (HUB_PREFIX); nothing stopped or removed"
            )
        self._stop()
        for name in accounts:
            found = _user_exists(name)
            if found is not None and is_ours(found, self.root, listed=True):
                kill_user_processes(found.pw_uid)
        instructor = _user_exists(self.instructor)
        if instructor is not None and is_ours(instructor, self.root, self.instructor in accounts):
            shutil.rmtree(self.ipc_folder, ignore_errors=True)
            old = Path("/tmp") / f"sysml-hub-ipc-{instructor.pw_uid}"  # where older hubs put it
            if old.is_dir() and not old.is_symlink() and old.stat().st_uid == instructor.pw_uid:
                shutil.rmtree(old, ignore_errors=True)
        removed = []
        if remove_accounts:
            for name in accounts:
                if remove_user(name, self.root):
                    removed.append(name)
            self.accounts_file.unlink(missing_ok=True)
            shutil.rmtree(self.instructor_repo, ignore_errors=True)
            shutil.rmtree(self.exchange, ignore_errors=True)
            for path in (self.state_dir / "jupyterhub.sqlite", self.state_dir / "state.json"):
                path.unlink(missing_ok=True)
        return removed


def _port_free(port: int, ssl: bool = False) -> bool:
    """Whether a server could listen on `port` (127.0.0.1, or every interface for `ssl`), as JupyterHub's
    proxy would (SO_REUSEADDR: only a listening socket blocks it, not connections closing)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0" if ssl else "127.0.0.1", port))
            return True
        except OSError:
            return False


def _port_holders(port: int) -> str:
    """Who listens on TCP `port`, as `ss` tells (process names and ids), or ""."""
    ss = shutil.which("ss")
    if not ss:
        return ""
    found = _run([ss, "-Hltnp", f"sport = :{port}"], check=False, capture_output=True, text=True).stdout
    users = sorted(set(re.findall(r'\("([^"]+)",pid=(\d+)', found)))
    return ", ".join(f"{name} (PID {pid})" for name, pid in users) or (
        "another process" if found.strip() else ""
    )


GENERATED = "# Written by autograders/hub"


def stamp_config(text: str) -> str:
    """The instructor's generated nbgrader config with a first line recording its own hash, so a later `up`
    can tell it is still the generated one (`is_generated`) and rewrite it, and leave an edited one alone."""
    return (
        f"{GENERATED} (sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]}; an edited copy is kept)\n"
        + text
    )


def is_generated(text: str) -> bool:
    """Whether `text` is a config `stamp_config` wrote, unedited (or one from before the stamp: those were
    rewritten on every `up` anyway)."""
    first, _, rest = text.partition("\n")
    if not first.startswith(GENERATED):
        return False
    if "(sha256 " not in first:
        return first.startswith(GENERATED + ": the instructor's nbgrader")
    recorded = first.split("(sha256 ", 1)[1].split(";", 1)[0]
    return hashlib.sha256(rest.encode()).hexdigest()[:16] == recorded
