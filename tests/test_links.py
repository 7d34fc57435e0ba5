"""Every link in the repository resolves, offline: the generated ones are current, relative ones name files
that exist, the course's own GitHub/Binder/Colab links open files on its branch, and no placeholder or other
spelling of its name is left (course/links.py; the setting is pyproject.toml's [project.urls] Repository).

Links to other sites are not fetched (no network in tests): ``python -m course.links --external`` lists them.
"""

import subprocess
import sys
import tomllib

import pytest

from course import links
from course.links import Link, Setting

SETTING = links.read_setting()
FILES = {"README.md", "docs/guide.md", "modules/01_edge/01_edge.ipynb", "solutions/01_edge/01_edge.ipynb"}


def problem(target: str, file: str = "README.md", files=FILES, setting: Setting = SETTING):
    return links.link_problem(Link(file, 1, target), files, setting)


# --- the repository as it is ---

def test_the_slug_lives_in_pyproject_only():
    data = tomllib.loads((links.REPO / "pyproject.toml").read_text())
    assert links.parse_repository_url(data["project"]["urls"]["Repository"]) == links.repository()
    assert links.branch() == data["tool"]["sysml-course"]["branch"]
    assert links.repository().count("/") == 1


def test_generated_links_are_current():
    """README's run-it column and note, every header's badge line (solutions and modules), INSTRUCTORS.md."""
    assert links.stale() == [], "run `python -m course.links --write`, then `python -m autograders.release`"


def test_no_broken_link_placeholder_or_other_slug():
    assert links.broken_links() == []


def test_every_notebook_and_the_readme_open_on_binder_and_colab():
    readme = (links.REPO / "README.md").read_text()
    for module, path in links.notebooks().items():
        assert links.binder_url(path) in readme and links.colab_url(path) in readme, module
        for root in ("solutions", "modules"):
            header = links._header(links.REPO / path.replace("modules/", f"{root}/", 1))
            assert links.badge_line(path) in header.split("\n")[:4], f"{root}: {module}"


def test_check_command_exits_zero_here():
    done = subprocess.run([sys.executable, "-m", "course.links", "--check"], cwd=links.REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# --- the checker discriminates ---

def test_a_broken_relative_link_is_caught_and_a_good_one_passes():
    assert problem("modules/01_edge/01_edge.ipynb") is None
    assert problem("modules/01_edge/") is None  # a folder of the repository
    assert "does not exist" in problem("modules/01_edge/01_edg.ipynb")
    assert problem("../README.md", file="docs/guide.md") is None
    assert "does not exist" in problem("README.md", file="docs/guide.md")  # relative to the file's folder
    assert "does not exist" in problem("../outside.md")


def test_an_anchor_must_name_a_heading():
    readme_headings = links.heading_anchors((links.REPO / "README.md").read_text())
    assert "modules" in readme_headings and "for-learners" in readme_headings
    assert problem("README.md#modules", files=set(links.tracked_files())) is None
    assert "no heading" in problem("README.md#no-such-section", files=set(links.tracked_files()))


def test_a_bad_labpath_a_wrong_branch_and_a_missing_colab_file_are_caught():
    good = links.binder_url("modules/01_edge/01_edge.ipynb")
    assert problem(good) is None
    assert "not a file" in problem(good.replace("01_edge.ipynb", "01_edge_v2.ipynb"))
    assert "not a file" in problem(links.binder_url("modules/01_edge/solutions.ipynb"))
    assert "not the configured branch" in problem(good.replace(f"/{SETTING.branch}?", "/HEAD?"))
    binder = f"https://mybinder.org/v2/gh/{SETTING.repository}/{SETTING.branch}"
    urlpath = f"{binder}?urlpath=lab/tree/nothing.ipynb"
    assert "not a file" in problem(urlpath)
    assert problem(links.colab_url("solutions/01_edge/01_edge.ipynb")) is None
    assert "not a file" in problem(links.colab_url("solutions/01_edge/missing.ipynb"))
    assert "not a file" in problem(links.github_url("docs/missing.md"))
    assert problem(links.github_url("")) is None and problem(links.github_url("", kind="tree")) is None


def test_placeholders_and_other_spellings_of_the_name_are_caught_other_sites_are_not():
    assert "placeholder" in problem("https://mybinder.org/v2/gh/ORG/REPO/HEAD?labpath=README.md")
    assert "placeholder" in problem("https://github.com/your-org/systems-for-ml")
    other = Setting("someone/fork", SETTING.branch)
    assert "not the course's" in problem(links.binder_url("README.md", other))
    assert "not the course's" in problem(links.colab_url("README.md", other))
    assert "not the course's" in problem(f"https://github.com/{SETTING.owner}/another-name")
    assert "not the course's" in problem(f"https://github.com/someone-else/{SETTING.name}/blob/main/x.md")
    assert problem("https://github.com/pytorch/pytorch/blob/main/README.md") is None  # another project
    assert problem("https://docs.python.org/3/library/tomllib.html") is None


def test_a_stale_badge_or_run_it_column_is_found_and_rewritten():
    path = "modules/01_edge/01_edge.ipynb"
    header = "# 01 · Edge AI\n\n*subtitle*\n\ntext"
    fresh = links.header_source(header, path, SETTING)
    assert fresh.split("\n")[:4] == ["# 01 · Edge AI", "", links.badge_line(path, SETTING), ""]
    assert links.header_source(fresh, path, SETTING) == fresh  # idempotent
    moved = Setting("new-owner/new-name", "trunk")
    rewritten = links.header_source(fresh, path, moved)
    assert rewritten != fresh and rewritten.count("[![Open in Colab]") == 1
    assert "new-owner/new-name/blob/trunk/" in rewritten and SETTING.repository not in rewritten
    readme = (links.REPO / "README.md").read_text()
    new_readme = links.render_markdown(readme, links.REGIONS["README.md"], moved, "README.md")
    assert SETTING.repository not in new_readme.split("<!-- links:end slug -->")[0].split("## Modules")[1]
    assert links.render_markdown(new_readme, links.REGIONS["README.md"], SETTING, "README.md") == readme
    with pytest.raises(KeyError, match="slug"):
        links.render_markdown(readme.replace("<!-- links:start slug -->", ""), links.REGIONS["README.md"],
                              SETTING, "README.md")


def test_run_it_cell_names_both_notebooks_of_a_two_notebook_module():
    cell = links.run_it_cell(["modules/04_distributed/04_distributed.ipynb",
                              "modules/04_distributed/04b_model_parallel.ipynb"], SETTING)
    assert cell.count("[Binder](") == 2 and cell.count("[Colab](") == 2 and "part 2:" in cell


def test_links_in_code_are_not_links_and_html_links_are():
    text = ("see [a](a.md) and `[b](b.md)`\n\n```\n[c](c.md)\n```\n"
            '<a href="d.md">d</a> <img src="e.png"> <https://example.org/f>')
    assert [t for _, t in links.markdown_links(text)] == ["a.md", "d.md", "e.png", "https://example.org/f"]


def test_the_setting_parses_only_a_github_repository_url(tmp_path):
    assert links.parse_repository_url("https://github.com/a-b/c.d.git") == "a-b/c.d"
    with pytest.raises(ValueError):
        links.parse_repository_url("https://gitlab.com/a/b")
    toml = tmp_path / "pyproject.toml"
    toml.write_text('[project.urls]\nRepository = "https://github.com/x/y/"\n')
    assert links.read_setting(toml) == Setting("x/y", "main")


def test_external_links_are_listed_not_fetched():
    listed = links.external([Link("README.md", 1, "https://example.org/x"),
                             Link("README.md", 2, links.binder_url("README.md")),
                             Link("README.md", 3, "a.md")])
    assert [link.target for link in listed] == ["https://example.org/x"]
    done = subprocess.run([sys.executable, "-m", "course.links", "--external"], cwd=links.REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and links.COLAB_BADGE in done.stdout


def test_publishing_under_another_name_is_one_line_and_one_command(tmp_path):
    """In a copy of the repository: edit pyproject's Repository line, run --write; every generated link and
    every other URL of the old name moves (modules/ waits for the release: --check still names them)."""
    listed = subprocess.run(["git", "ls-files"], cwd=links.REPO, capture_output=True, text=True, check=True)
    copy = tmp_path / "repo"
    for name in listed.stdout.split():
        if (links.REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).write_bytes((links.REPO / name).read_bytes())
    (copy / "solutions/00_orientation/extra.md").write_text(
        f"clone {links.github_url('')}.git\npip install git+{links.github_url('')}@main\n")
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True)
    pyproject = copy / "pyproject.toml"
    new_url = "https://github.com/new-org/new-name"
    pyproject.write_text(pyproject.read_text().replace(links.github_url(""), new_url))
    env = {"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "course.links", *args], cwd=copy, env=env,
                              capture_output=True, text=True, timeout=120)

    assert run("--check").returncode == 1
    assert run("--write").returncode == 0
    after = run("--check")
    assert after.returncode == 1 and "solutions/" not in after.stdout and "README" not in after.stdout
    assert "modules/00_orientation/00_orientation.ipynb: header badge line out of date" in after.stdout
    for name in ("README.md", "autograders/INSTRUCTORS.md", "solutions/01_edge/01_edge.ipynb",
                 "solutions/00_orientation/extra.md"):
        text = (copy / name).read_text()
        assert SETTING.repository not in text and "new-org/new-name" in text, name


def test_reference_style_links_are_links():
    text = "the [guide][g] and more\n\n[g]: docs/missing.md\n  [h]: <other.md> \"title\"\n"
    assert links.markdown_links(text) == [(3, "docs/missing.md"), (4, "other.md")]
