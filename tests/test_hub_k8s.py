"""The lab hub described for Kubernetes (autograders/hub/k8s/), checked as far as a machine without helm, a
container engine or a cluster allows: the values files parse, pass yamllint and use only keys and types of
Zero to JupyterHub's values schema (the part these files use, recorded in z2jh-values-schema-4.4.0.json, with
its source); the image installs exactly Binder's pins and the JupyterHub of the chart's hub; the instructor's
and learners' servers get the nbgrader views meant for them; the network policies let ngshare and the hub
talk as the charts label their pods. `helm template` and `docker build` are NOT run here.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "autograders" / "hub" / "k8s"
SCHEMA = K8S / "z2jh-values-schema-4.4.0.json"
VALUES = [K8S / "values.yaml", K8S / "values-trial.yaml", K8S / "ngshare-values.yaml"]
Z2JH_VALUES = [K8S / "values.yaml", K8S / "values-trial.yaml"]   # ngshare's chart has no values schema
DOCKERFILE = K8S / "Dockerfile"
BINDER_REQUIREMENTS = REPO / "binder" / "requirements.txt"
INSTRUCTOR_CONFIG = K8S / "image" / "instructor" / "etc" / "jupyter"


def load(path: Path):
    return yaml.safe_load(path.read_text())


def without_required(schema):
    """The schema with every ``required`` dropped: helm validates values merged onto the chart's defaults,
    which fill the required keys (an image's name and tag, the scheduler's plugins) that ours leave out."""
    if isinstance(schema, dict):
        return {k: without_required(v) for k, v in schema.items() if k != "required"}
    if isinstance(schema, list):
        return [without_required(v) for v in schema]
    return schema


def merge(base: dict, extra: dict) -> dict:
    """Helm's merge of two values files: maps merge key by key, anything else from the later file wins."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def schema_errors(values: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(without_required(json.loads(SCHEMA.read_text())))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}"
            for e in validator.iter_errors(values)]


def chart() -> dict:
    return json.loads(SCHEMA.read_text())["x-sysml-chart"]


@pytest.mark.parametrize("path", VALUES, ids=lambda p: p.name)
def test_values_parse(path):
    assert isinstance(load(path), dict)


def yamllint():
    """yamllint's linter and config modules; in CI (CI=true) a missing yamllint fails, elsewhere it skips."""
    try:
        from yamllint import config, linter
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("yamllint is missing: tests/requirements.txt installs it")
        pytest.skip("yamllint is not installed (pip install -r tests/requirements.txt)")
    return config, linter


def test_values_lint():
    """yamllint's default rules (duplicate keys above all: YAML keeps the last one silently), long lines
    allowed as in the rest of the repository, no document-start marker (Helm's values files have none)."""
    config, linter = yamllint()
    conf = config.YamlLintConfig("extends: default\nrules:\n  line-length: {max: 120}\n"
                                 "  document-start: disable\n  comments: {min-spaces-from-content: 1}\n")
    problems = [f"{p.name}:{problem.line}: {problem.desc} ({problem.rule})"
                for p in VALUES for problem in linter.run(p.read_text(), conf)]
    assert not problems, "\n".join(problems)


def test_lint_catches_a_duplicate_key():
    """The lint above is not vacuous: a key given twice (the trap of layering hub.config) is reported."""
    config, linter = yamllint()
    text = "hub:\n  config:\n    JupyterHub: {a: 1}\n    JupyterHub: {b: 2}\n"
    rules = {p.rule for p in linter.run(text, config.YamlLintConfig("extends: default"))}
    assert "key-duplicates" in rules


@pytest.mark.parametrize("path", Z2JH_VALUES, ids=lambda p: p.name)
def test_values_keys_are_in_the_chart_schema(path):
    assert schema_errors(load(path)) == []


def test_trial_on_top_of_values_is_valid():
    assert schema_errors(merge(load(K8S / "values.yaml"), load(K8S / "values-trial.yaml"))) == []


@pytest.mark.parametrize("bad", [
    {"singleuser": {"memmory": {"limit": "2G"}}},            # a misspelt key
    {"singleuser": {"cpu": {"limit": "two"}}},                # a wrong type
    {"cull": {"timeout": "1h"}},                              # seconds, not a duration
    {"hub": {"config": {"generic-oauth": {"client_id": "x"}}}},  # traitlets classes start with a capital
])
def test_schema_check_rejects_what_helm_would(bad):
    """The recorded schema still refuses what Helm's check refuses: else the test above proves nothing."""
    assert schema_errors(merge(load(K8S / "values.yaml"), bad))


def test_schema_record_names_its_source():
    record = json.loads(SCHEMA.read_text())
    assert record["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert re.fullmatch(r"[0-9a-f]{40}", chart()["commit"]) and chart()["commit"] in record["$comment"]
    assert "zero-to-jupyterhub-k8s" in record["$comment"]


def test_install_command_names_the_recorded_chart():
    text = (K8S / "values.yaml").read_text()
    assert f"jupyterhub/jupyterhub --version {chart()['version']} " in text
    assert re.findall(r"--version (\S+)", text) == [chart()["version"]]


def instructors_k8s_section() -> str:
    text = (REPO / "autograders" / "INSTRUCTORS.md").read_text()
    heading = re.search(r"^## (?:\d+\. )?On Kubernetes$", text, re.M)
    assert heading, "INSTRUCTORS.md has no section 'On Kubernetes'"
    return text[heading.end():].split("\n## ", 1)[0]


def test_instructors_install_commands_pin_the_recorded_charts():
    """INSTRUCTORS' Steps install both charts at the versions the values files were written for (review 24b,
    11)."""
    steps = instructors_k8s_section().replace("\\\n", " ")
    installs = re.findall(r"helm upgrade --install (\S+) (\S+)([^\n]*)", steps)
    assert {chart for _, chart, _ in installs} == {"ngshare/ngshare", "jupyterhub/jupyterhub"}
    header = (K8S / "ngshare-values.yaml").read_text()
    ngshare = re.search(r"ngshare/ngshare --version (\S+)", header).group(1)
    wanted = {"ngshare/ngshare": ngshare, "jupyterhub/jupyterhub": chart()["version"]}
    for _, name, rest in installs:
        pinned = re.search(r"--version (\S+)", rest)
        assert pinned and pinned.group(1) == wanted[name], (name, rest)


# ngshare chart 0.6.0's pod labels, read in ngshare-0.6.0.tgz (LibreTexts/ngshare-helm-repo c52ae1d5, sha256
# 00075cc9...: templates/deployment.yaml and _helpers.tpl; release name "ngshare", no nameOverride).
NGSHARE_CHART = "0.6.0"
NGSHARE_POD_LABELS = {"hub.jupyter.org/network-access-singleuser": "true",
                      "hub.jupyter.org/network-access-hub": "true",
                      "app.kubernetes.io/name": "ngshare", "app.kubernetes.io/instance": "ngshare"}


def test_ngshare_can_reach_the_hub_and_learners_ngshare():
    """Under Z2JH's NetworkPolicies (on by default): ngshare asks the hub's API (port 8081) about each token,
    which the hub's policy admits only from pods labelled network-access-hub "true" (ngshare's chart labels
    its pod so, and our values neither turn the hub's policy off nor replace its rules); learners reach
    ngshare by a selector that ngshare's pod labels match (review 24b, 1: read, not run on a cluster)."""
    values, ngshare = load(K8S / "values.yaml"), load(K8S / "ngshare-values.yaml")
    assert f"ngshare/ngshare --version {NGSHARE_CHART} " in (K8S / "ngshare-values.yaml").read_text()
    assert NGSHARE_POD_LABELS["hub.jupyter.org/network-access-hub"] == "true"
    assert "networkPolicy" not in values["hub"]   # the chart's default: enabled, labelled pods admitted
    assert ngshare["ngshare"]["hub_api_url"] == "http://hub:8081/hub/api"
    assert not {"nameOverride", "fullnameOverride"} & set(ngshare)   # the labels and Service name stay
    for rule in values["singleuser"]["networkPolicy"]["egress"]:
        for peer in rule["to"]:
            assert peer["podSelector"]["matchLabels"].items() <= NGSHARE_POD_LABELS.items()


def test_learners_egress_is_what_values_say():
    """values.yaml says learners reach the internet (Z2JH's default, written out), no private address but
    ngshare, not the cloud's metadata server (review 24b, 10)."""
    text = (K8S / "values.yaml").read_text()
    rules = load(K8S / "values.yaml")["singleuser"]["networkPolicy"]["egressAllowRules"]
    assert rules == {"nonPrivateIPs": True, "privateIPs": False, "cloudMetadataServer": False}
    assert "INTERNET" in text and "nonPrivateIPs: false" in text


def requirement_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def dockerfile_installs() -> tuple[list[str], list[str]]:
    """The Dockerfile's `pip install` arguments: requirement files (by the path they were copied from)
    and packages named on the command line."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    copied = dict((dest, src) for src, dest in re.findall(r"^COPY (\S+) (\S+)$", text, re.M))
    files, packages = [], []
    for args in re.findall(r"pip install ([^&\n]+)", text):
        words = args.split()
        for i, word in enumerate(words):
            if word == "-r":
                files.append(copied.get(words[i + 1], words[i + 1]))
            elif not word.startswith("-") and (i == 0 or words[i - 1] != "-r"):
                packages.append(word)
    return files, packages


def test_image_installs_exactly_binders_requirements():
    """Binder's file itself, never a copy that can drift; everything else named, pinned and not in it."""
    files, packages = dockerfile_installs()
    assert files == ["binder/requirements.txt"]
    lines = requirement_lines(BINDER_REQUIREMENTS.read_text())
    binder = {re.split(r"[=<>\[]", line)[0].lower() for line in lines if not line.startswith("-")}
    extra = [p for p in packages if not p.startswith("/tmp/sysml/src")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.+]*", p) for p in extra), extra
    twice = {p.split("==")[0].lower() for p in extra} & binder
    assert not twice, f"pinned in the Dockerfile and in Binder's file: {twice}"


def test_image_jupyterhub_is_the_charts():
    """The single-user server speaks to the chart's hub: the same JupyterHub (pinned in Z2JH's hub image)."""
    _, packages = dockerfile_installs()
    assert f"jupyterhub=={chart()['appVersion']}" in packages
    assert f"jupyterhub.__version__ == '{chart()['appVersion']}'" in DOCKERFILE.read_text()


def test_image_holds_no_solutions():
    copies = re.findall(r"^COPY (\S+)", DOCKERFILE.read_text(), re.M)
    assert copies and not [c for c in copies if c in (".", "./") or c.split("/")[0] in ("solutions", "tests")]


def test_image_runs_as_jovyan():
    text = DOCKERFILE.read_text()
    assert "--uid 1000 --gid 100" in text and re.search(r"^USER 1000$", text, re.M)
    assert load(K8S / "values.yaml")["singleuser"]["storage"]["homeMountPath"] == "/home/jovyan"


def role_hook():
    """values.yaml's hub.extraConfig, run as the hub runs it, with a stand-in traitlets config."""
    class Config:
        def __getattr__(self, name):
            return self.__dict__.setdefault(name, type("Section", (), {})())

    c = Config()
    for source in load(K8S / "values.yaml")["hub"]["extraConfig"].values():
        exec(compile(source, "extraConfig", "exec"), {"c": c})
    return c.KubeSpawner.pre_spawn_hook


def spawn(*groups: str):
    class Spawner:
        environment: dict = {}
    spawner = Spawner()
    spawner.environment = {}
    spawner.user = type("User", (), {"groups": [type("Group", (), {"name": g})() for g in groups]})()
    role_hook()(spawner)
    return spawner


def test_instructors_get_the_instructor_config_and_room_to_grade():
    teacher, learner = spawn("sysml-learners", "sysml-instructors"), spawn("sysml-learners")
    assert teacher.environment["JUPYTER_CONFIG_PATH"] == "/opt/sysml/instructor/etc/jupyter"
    assert "COPY autograders/hub/k8s/image/instructor /opt/sysml/instructor" in DOCKERFILE.read_text()
    assert "JUPYTER_CONFIG_PATH" not in learner.environment
    assert not hasattr(learner, "mem_limit")   # learners get singleuser.memory
    assert teacher.mem_limit == "6G"
    groups = load(K8S / "values.yaml")["hub"]["config"]["GenericOAuthenticator"]["allowed_groups"]
    assert "sysml-instructors" in groups


def server_extensions(config_dirs: list[Path]) -> dict[str, bool]:
    from jupyter_server.extension.config import ExtensionConfigManager
    manager = ExtensionConfigManager(read_config_path=[str(d) for d in config_dirs])
    return {k: v for k, v in manager.get_jpserver_extensions().items() if k.startswith("nbgrader.")}


def test_only_instructors_get_formgrader(tmp_path):
    """The image's sys-prefix config, as its `jupyter server extension disable --sys-prefix` lines leave it,
    read alone (a learner) and under the instructor's config dir (JUPYTER_CONFIG_PATH ranks above it)."""
    image = tmp_path / "etc" / "jupyter"
    (image / "jupyter_server_config.d").mkdir(parents=True)
    installed = {f"nbgrader.server_extensions.{name}": True
                 for name in ("formgrader", "course_list", "assignment_list")}
    disabled = re.search(r"for extension in ([\w ]+); do", DOCKERFILE.read_text()).group(1).split()
    installed.update({f"nbgrader.server_extensions.{name}": False for name in disabled})
    (image / "jupyter_server_config.d" / "nbgrader.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": installed}}))
    learner, instructor = server_extensions([image]), server_extensions([INSTRUCTOR_CONFIG, image])
    on = "nbgrader.server_extensions."
    assert learner[on + "assignment_list"] and instructor[on + "assignment_list"]
    assert not learner[on + "formgrader"] and not learner[on + "course_list"]
    assert instructor[on + "formgrader"] and instructor[on + "course_list"]


def test_instructor_lab_config_enables_what_the_image_disables():
    disabled = re.search(r"for plugin in ([\w\- ]+); do", DOCKERFILE.read_text()).group(1).split()
    page = json.loads((INSTRUCTOR_CONFIG / "labconfig" / "page_config.json").read_text())
    assert page["disabledExtensions"] == {f"@jupyter/nbgrader:{p}": False for p in disabled}
    assert "assignment-list" not in disabled   # learners fetch and submit from the Assignments panel


def test_exchange_is_ngshare_where_values_say():
    """The image's nbgrader config points at $NGSHARE_URL, which values.yaml sets to ngshare's Service, whose
    port its network policy opens; the hub proxies the service under the same name."""
    values = load(K8S / "values.yaml")
    url = values["singleuser"]["extraEnv"]["NGSHARE_URL"]
    assert url == values["hub"]["services"]["ngshare"]["url"] + "/services/ngshare"
    port = int(re.search(r":(\d+)/", url).group(1))
    egress = values["singleuser"]["networkPolicy"]["egress"]
    assert [p["port"] for rule in egress for p in rule["ports"]] == [port]
    assert "access:services!service=ngshare" in values["hub"]["loadRoles"]["user"]["scopes"]
    image_config = (K8S / "image" / "nbgrader_config.py").read_text()
    assert 'os.environ.get("NGSHARE_URL"' in image_config and "configureExchange(c," in image_config


def test_placeholders_are_marked():
    """Every value an operator must replace says CHANGE-ME (and no real-looking secret is committed)."""
    values = load(K8S / "values.yaml")
    oauth = values["hub"]["config"]["GenericOAuthenticator"]
    for key in ("client_id", "client_secret", "oauth_callback_url", "authorize_url", "token_url"):
        assert "CHANGE-ME" in oauth[key], key
    assert "CHANGE-ME" in values["hub"]["services"]["ngshare"]["apiToken"]
    assert "CHANGE-ME" in load(K8S / "ngshare-values.yaml")["ngshare"]["hub_api_token"]
    assert "CHANGE-ME" in values["singleuser"]["image"]["name"]


def test_no_helm_or_docker_was_needed():
    """Said plainly: these checks stand in for `helm template` and `docker build`, which were not run."""
    section = instructors_k8s_section()
    assert "NOT run" in section and "still lacks" in section


def test_build_context_holds_only_what_the_image_copies():
    """BuildKit's per-Dockerfile ignore file sends the builder nothing else (solutions above all)."""
    rules = [line for line in (K8S / "Dockerfile.dockerignore").read_text().splitlines()
             if line and not line.startswith("#")]
    assert rules[0] == "*"
    sources = {c for c in re.findall(r"^COPY (\S+)", DOCKERFILE.read_text(), re.M)}
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert all(any(s == a or s.startswith(a + "/") for a in allowed) for s in sources), sources - allowed
    assert not [a for a in allowed if a.split("/")[0] in ("solutions", "tests", "modules")]


def instructor_nbgrader_config(home: Path, env: dict, monkeypatch):
    from traitlets.config.loader import PyFileConfigLoader
    monkeypatch.setenv("HOME", str(home))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    loader = PyFileConfigLoader("nbgrader_config.py", path=str(INSTRUCTOR_CONFIG))
    return loader.load_config()


def test_instructor_grades_with_the_course_settings(tmp_path, monkeypatch):
    """Formgrader's autograde on the hub judges as `make grade` does (stderr ignored, guarded tests), with the
    cloned repository's solutions/ as source; without a clone, the course folder's own source/."""
    from autograders import settings
    config = instructor_nbgrader_config(tmp_path, {"SYSML_REPO": str(REPO)}, monkeypatch)
    assert config.CourseDirectory.root == str(tmp_path / "sysml")
    assert config.CourseDirectory.source_directory == str(REPO / "solutions")
    assert config.CourseDirectory.course_id == settings.COURSE_ID
    assert config.IgnorePattern.pattern == settings.IGNORE_STDERR_PATTERN
    assert "GuardedExecute" in {p.__name__ for p in config.Autograde.autograde_preprocessors}
    bare = instructor_nbgrader_config(tmp_path, {"SYSML_REPO": str(tmp_path / "no-clone")}, monkeypatch)
    assert bare.CourseDirectory.source_directory == str(tmp_path / "sysml" / "source")
