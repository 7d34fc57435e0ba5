"""tests/binder_box.py's pieces: the requirements it installs, the cage it runs notebooks in, and how close it
stays to what repo2docker builds from binder/ (and what it says still differs)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autograders.settings import REPO
from tests import binder_box
from tests.test_environment import pins


def test_binder_requirements_for_this_machine_keep_every_pin_but_the_index():
    text = binder_box.local_requirements((REPO / "binder" / "requirements.txt").read_text())
    assert "index-url" not in text and "torch==2.13.0\n" in text and "+cpu" not in text
    local = REPO / "build" / "binder-local-requirements.txt"
    local.parent.mkdir(exist_ok=True)
    local.write_text(text)
    assert pins(local.relative_to(REPO)) == pins("binder/requirements.txt")  # same packages, same versions


def cages_available():
    if os.geteuid() != 0:
        return False
    try:
        with binder_box.Cage(64 * 2**20, 1.0):
            return True
    except OSError:
        return False


def test_the_cage_kills_a_process_over_its_memory_cap():
    if not cages_available():
        pytest.skip("needs root and writable control groups")
    hog = "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); print('survived')"
    with binder_box.Cage(128 * 2**20, 1.0) as cage:
        done = subprocess.run([sys.executable, "-c", hog], capture_output=True, text=True,
                              preexec_fn=cage.join)
        small = subprocess.run([sys.executable, "-c", "print('fits')"], capture_output=True, text=True,
                               preexec_fn=cage.join)
        assert done.returncode != 0 and "survived" not in done.stdout
        assert cage.out_of_memory_kills() >= 1
        assert small.stdout.strip() == "fits" and 0 < cage.peak_bytes() <= 128 * 2**20


# --- how close the box is to repo2docker, and what it says differs ---

def test_runtime_txt_names_a_python_3_version_as_repo2docker_reads_it():
    assert binder_box.runtime_version((REPO / "binder" / "runtime.txt").read_text()) == "3.11"
    assert binder_box.runtime_version("python-3.12-2026-01-01\n") == "3.12"  # name-version-date
    for bad in ("python-3", "python3.11", "r-4.3", "python-3.11.7"):
        with pytest.raises(ValueError):
            binder_box.runtime_version(bad)


def test_the_box_takes_the_newest_build_of_runtime_txts_python(tmp_path):
    for version in ("3.11.2", "3.11.14", "3.12.1", "3.11.9-debug"):
        (tmp_path / version / "bin").mkdir(parents=True)
        (tmp_path / version / "bin" / "python").touch()
    none = (tmp_path / "no-system",)
    path, version = binder_box.runtime_python("3.11", pyenv=tmp_path, system=none)
    assert version == "3.11.14" and path == str(tmp_path / "3.11.14" / "bin" / "python")  # not "3.11.9"
    here = "{}.{}".format(*sys.version_info[:2])
    assert binder_box.runtime_python(here, pyenv=tmp_path / "none", system=none)[0] == sys.executable
    with pytest.raises(SystemExit, match="3.9"):
        binder_box.runtime_python("3.9", pyenv=tmp_path / "none", system=none)


def test_a_non_root_run_gets_a_python_other_users_can_run(tmp_path):
    """pyenv's builds live under /root (mode 700 here): a venv made from one cannot start as another user."""
    (tmp_path / "3.11.14" / "bin").mkdir(parents=True)
    (tmp_path / "3.11.14" / "bin" / "python").touch(mode=0o755)
    tmp_path.chmod(0o700)
    assert not binder_box.others_can_run(tmp_path / "3.11.14" / "bin" / "python")
    assert binder_box.others_can_run(Path("/bin/sh"))
    where = {"pyenv": tmp_path, "system": (tmp_path / "no-system",), "current": str(tmp_path / "no-python")}
    assert binder_box.runtime_python("3.11", **where)[1] == "3.11.14"
    with pytest.raises(SystemExit, match="another user"):
        binder_box.runtime_python("3.11", **where, for_others=True)


def test_the_box_says_what_differs_from_mybinder():
    root = binder_box.differences("3.11.7", "3.11", None)
    text = "\n".join(root)
    for topic in ("torch", "Python: 3.11.7", "3.11.14", "base packages", "jupyterlab==4.4.9", "root",
                  "jovyan", "/home/jovyan", "network", "CPU", "Jupyter Server"):
        assert topic in text, topic
    assert "user and home: root" in text
    assert "user and home: someone with" in "\n".join(binder_box.differences("3.11.7", "3.11", "someone"))


def test_the_box_stages_only_what_git_tracks_and_binder_alone_suffices(tmp_path):
    """Binder clones the repository: the copy holds the tracked files and nothing else, and every file that
    postBuild and start use is in it (binder/ plus the repository itself, which postBuild installs)."""
    home = tmp_path / "home"
    count = binder_box.stage(home)
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.split())
    copied = {str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()}
    assert count == len(copied) and copied <= tracked and not any(".binder-box" in p for p in copied)
    post, start = (home / "binder" / "postBuild").read_text(), (home / "binder" / "start").read_text()
    for name in re.findall(r"\bbinder/[\w./-]+", post + start):
        assert (home / name).is_file(), f"{name} is used by binder/ but not tracked"
    assert "pip install" in post and re.search(r"-e \.$", post, re.M) and (home / "pyproject.toml").is_file()
    for module in re.findall(r"python -m ([\w.]+)", post):
        assert (home / (module.replace(".", "/") + ".py")).is_file(), module
    assert start.rstrip().endswith('exec "$@"')  # repo2docker's entrypoint runs start with the command
    requirements = (home / "binder" / "requirements.txt").read_text()
    assert not re.search(r"^\s*(-e\b|\.|file:)", requirements, re.M)  # installable before the repo is copied


def test_notebooks_see_binders_home_and_none_of_this_machines_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    env = binder_box.binder_env(tmp_path / "env", tmp_path / "home")
    assert env["HOME"] == env["REPO_DIR"] == str(tmp_path / "home")
    assert env["PATH"].startswith(str(tmp_path / "env" / "bin")) and env["USER"] == binder_box.BINDER_USER
    assert "PYTHONPATH" not in env and "OMP_NUM_THREADS" not in env


def test_versions_that_binder_would_run_untested_are_named():
    freeze = "ipykernel==7.0.1\ntorch==2.13.0+cpu\nJupyter_Server==2.17.0\njupyter-resource-usage==1.2.0\n"
    lock = "# header\nipykernel==7.2.0\ntorch==2.13.0\njupyter-server==2.17.0\n"
    assert binder_box.lock_differences(freeze, lock) == ["ipykernel 7.0.1 (lock: 7.2.0)"]
