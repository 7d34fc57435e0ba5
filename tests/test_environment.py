"""The environment is declared once and every consumer agrees: Makefile, Binder, CI, README."""

import re
import subprocess
import tomllib

from autograders.settings import MODULES, REPO

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;#]+)")


def pins(path):
    found = {}
    for line in (REPO / path).read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            name, extras, version = match.groups()
            found[name.lower()] = (extras or "", version.split("+")[0])
    return found


def test_binder_pins_match_the_project():
    project, binder = pins("requirements.txt"), pins("binder/requirements.txt")
    assert project == binder
    text = (REPO / "binder/requirements.txt").read_text()
    assert "torch==2.13.0+cpu" in text and "--extra-index-url https://download.pytorch.org/whl/cpu" in text
    assert "--index-url" not in text.replace("--extra-index-url", "")


def test_every_requirement_is_pinned_and_in_the_lock():
    requirements = [ln for ln in (REPO / "requirements.txt").read_text().splitlines()
                    if ln.strip() and not ln.startswith("#")]
    assert all(PIN.match(ln) for ln in requirements), "pin every requirement with =="
    lock = pins("constraints.txt")
    for name, (_, version) in pins("requirements.txt").items():
        assert lock.get(name, ("", None))[1] == version, f"{name}: constraints.txt disagrees"


def test_test_only_requirements_are_pinned_in_the_lock_and_kept_off_binder():
    test_only = pins("tests/requirements.txt")
    assert test_only and set(test_only).isdisjoint(pins("binder/requirements.txt"))
    lock = pins("constraints.txt")
    for name, (_, version) in test_only.items():
        assert lock.get(name, ("", None))[1] == version, f"{name}: constraints.txt disagrees"


def test_binder_python_matches_the_project():
    runtime = (REPO / "binder/runtime.txt").read_text().strip()
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert runtime == "python-" + requires.removeprefix(">=")


def test_binder_hides_instructor_views_and_keeps_validate():
    post = (REPO / "binder/postBuild").read_text()
    plugins = set(re.search(r"for plugin in ([^;]+); do", post).group(1).split())
    extensions = set(re.search(r"for extension in ([^;]+); do", post).group(1).split())
    assert plugins == {"formgrader", "assignment-list", "course-list", "create-assignment"}
    assert extensions == {"formgrader", "assignment_list", "course_list"}
    assert 'disable --level=sys_prefix "@jupyter/nbgrader:${plugin}"' in post
    assert 'lock --level=sys_prefix "@jupyter/nbgrader:${plugin}"' in post
    assert '"nbgrader.server_extensions.${extension}"' in post
    assert post.startswith("#!/bin/bash") and "set -euo pipefail" in post
    start = (REPO / "binder/start").read_text()
    assert "OMP_NUM_THREADS=1" in start and start.rstrip().endswith('exec "$@"')
    assert not (REPO / ".binder").exists() and not (REPO / "environment.yml").exists()


def test_binder_scripts_are_valid_bash():
    for script in ("binder/postBuild", "binder/start", ".ci/run"):
        subprocess.run(["bash", "-n", str(REPO / script)], check=True)


def test_readme_commands_are_the_makefile_and_ci_targets():
    readme = (REPO / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^lab: ", makefile, re.M) and re.search(r"^test: ", makefile, re.M)
    start = re.search(r"^START := (\S+)", makefile, re.M).group(1)
    assert (REPO / start).exists()
    assert "make test" in (REPO / ".ci/run").read_text()


def test_readme_binder_links_open_existing_notebooks():
    links = re.findall(r"labpath=([^)\s]+\.ipynb)", (REPO / "README.md").read_text())
    assert links, "the README's module table links each module on Binder"
    for link in links:
        assert (REPO / link).exists(), link
    released = {p.name for p in MODULES.iterdir() if p.is_dir()}
    assert released <= {link.split("/")[1] for link in links}
