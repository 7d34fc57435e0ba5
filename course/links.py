"""The course's public address in one place, and every link generated from it (course infrastructure).

The repository's name on GitHub is one line of ``pyproject.toml``, ``[project.urls] Repository``, and its
default branch is ``[tool.sysml-course] branch``. The README's "run it" column, the badge line under each
notebook's title, the instructor guide's clone command and the README's note on the name are generated
from them; nothing else may spell the name (tests/test_links.py checks both)::

    python -m course.links              print the setting and one notebook's links
    python -m course.links --write      rewrite every generated link from the setting
    python -m course.links --check      exit 1, listing where, when a generated link is out of date or any
                                        link is broken (the checks tests/test_links.py runs)
    python -m course.links --external   print every link to another site, to open by hand

Generated regions: in markdown files, between ``<!-- links:start NAME -->`` and ``<!-- links:end NAME -->``;
in a notebook, the header cell's line that starts with ``[![Open in Colab]``. `--write` edits ``solutions/``
only: ``python -m autograders.release`` then gives the student copies the same header (``--check`` reads
both, so a forgotten release fails). After a rename, `--write` also moves every other URL of the previous
name (read from the README's generated links) in the tracked files, but modules/ and the corpus.

Nothing here (no network) can tell whether GitHub has that repository: the name is the course's intended
public name. The setting is read from a source checkout (the links are maintainers' tools); an installed
wheel has no pyproject.toml, so there the Repository URL comes from the package's metadata
(``Project-URL``) and the branch defaults to ``main``.

URL forms, as of 2026-11 (checked with the search tool): Binder ``https://mybinder.org/v2/gh/OWNER/NAME/REF
?labpath=PATH`` (BinderHub's JupyterLab path; ``urlpath=lab/tree/PATH`` is the older form) and its badge
``https://mybinder.org/badge_logo.svg`` (jupyterhub/mybinder.org-user-guide, docs/examples/sample_repos.md);
Colab ``https://colab.research.google.com/github/OWNER/NAME/blob/BRANCH/PATH`` and its badge
``https://colab.research.google.com/assets/colab-badge.svg`` (googlecolab/colabtools,
notebooks/colab-github-demo.ipynb at 102b4a5d; Colab opens that one file, not the repository).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
DISTRIBUTION = "sysml-course"

BINDER_BADGE = "https://mybinder.org/badge_logo.svg"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_START = "[![Open in Colab]"  # the notebook header's generated line starts with this

_GITHUB = re.compile(r"^https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")


@dataclass(frozen=True)
class Setting:
    """Where the course is published: ``owner/name`` on GitHub and the branch learners open."""

    repository: str
    branch: str = "main"

    @property
    def owner(self) -> str:
        return self.repository.split("/")[0]

    @property
    def name(self) -> str:
        return self.repository.split("/")[1]


def parse_repository_url(url: str) -> str:
    """``https://github.com/OWNER/NAME`` (optionally ``.git`` or a trailing slash) -> ``"OWNER/NAME"``.

    Raises ValueError for anything else: the links below are GitHub's, Binder's ``gh/`` and Colab's
    ``github/``.
    """
    match = _GITHUB.match(url.strip())
    if not match:
        raise ValueError(f"[project.urls] Repository must be https://github.com/OWNER/NAME, not {url!r}")
    return f"{match.group(1)}/{match.group(2)}"


def read_setting(pyproject: Path | None = None) -> Setting:
    """The setting from pyproject.toml (a source checkout), else from the installed package's metadata."""
    path = PYPROJECT if pyproject is None else Path(pyproject)
    if path.exists():
        data = tomllib.loads(path.read_text())
        urls = data.get("project", {}).get("urls", {})
        if "Repository" not in urls:
            raise KeyError(f"{path}: [project.urls] has no Repository")
        branch = data.get("tool", {}).get("sysml-course", {}).get("branch", "main")
        return Setting(parse_repository_url(urls["Repository"]), branch)
    import importlib.metadata

    for entry in importlib.metadata.metadata(DISTRIBUTION).get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip() == "Repository":
            return Setting(parse_repository_url(url))
    raise LookupError(f"no {path} and no Repository URL in {DISTRIBUTION}'s metadata")


def repository() -> str:
    """``"owner/name"`` of the course on GitHub, from ``[project.urls] Repository``."""
    return read_setting().repository


def branch() -> str:
    """The branch the links open (``[tool.sysml-course] branch``, default ``main``)."""
    return read_setting().branch


def github_url(path: str = "", setting: Setting | None = None, kind: str = "blob") -> str:
    """GitHub's page for `path` (relative to the repository root) on the branch; the repository for ``""``."""
    s = setting or read_setting()
    base = f"https://github.com/{s.repository}"
    return f"{base}/{kind}/{s.branch}/{path}" if path else base


def binder_url(path: str, setting: Setting | None = None) -> str:
    """mybinder.org building the branch and opening `path` (relative to the root) in JupyterLab."""
    s = setting or read_setting()
    return f"https://mybinder.org/v2/gh/{s.repository}/{s.branch}?labpath={path}"


def colab_url(path: str, setting: Setting | None = None) -> str:
    """Google Colab opening the notebook `path` from GitHub (Colab loads that file, not the repository)."""
    s = setting or read_setting()
    return f"https://colab.research.google.com/github/{s.repository}/blob/{s.branch}/{path}"


# --- what the links point at ---

def notebooks() -> dict[str, str]:
    """Module id -> the learner's notebook, ``modules/<folder>/<id>.ipynb``, in teaching order.

    The same rule as autograders.settings.modules(): a notebook of solutions/ whose name starts with its
    folder's number (course.links imports nothing from autograders).
    """
    found = sorted(p for p in (REPO / "solutions").glob("*/*.ipynb") if p.stem[:2] == p.parent.name[:2])
    return {p.stem: f"modules/{p.parent.name}/{p.name}" for p in found}


def badge_line(path: str, setting: Setting | None = None) -> str:
    """The header line of the notebook at `path`: Colab and Binder badges and a plain GitHub link.

    Markdown images in links render on GitHub, in Colab and in JupyterLab; offline, their alt text reads the
    same ("Open in Colab", "Launch Binder").
    """
    s = setting or read_setting()
    return (f"{BADGE_START}({COLAB_BADGE})]({colab_url(path, s)}) "
            f"[![Launch Binder]({BINDER_BADGE})]({binder_url(path, s)}) "
            f"[view on GitHub]({github_url(path, s)})")


def run_it_cell(paths: list[str], setting: Setting) -> str:
    """The README table's "run it" cell for a module's notebooks (two for 04, 05 and 07)."""
    parts = []
    for i, path in enumerate(paths):
        links = f"[Binder]({binder_url(path, setting)}) · [Colab]({colab_url(path, setting)})"
        parts.append(links if i == 0 else f"part {i + 1}: {links}")
    return "; ".join(parts)


def _readme_table(text: str, setting: Setting) -> str:
    rows = []
    for line in text.split("\n"):
        cells = line.split(" | ")
        paths = re.findall(r"\]\((modules/[^)\s]+\.ipynb)\)", cells[0]) if line.startswith("| [") else []
        if paths and line.endswith(" |"):
            cells[-1] = run_it_cell(paths, setting) + " |"
            line = " | ".join(cells)
        rows.append(line)
    return "\n".join(rows)


def _readme_slug(_: str, setting: Setting) -> str:
    return (f"\nThe Binder and Colab links open `{setting.repository}` on GitHub "
            f"(branch `{setting.branch}`): the\n"
            "course's intended public name, set once in `pyproject.toml` (`[project.urls] Repository`). "
            "They work once\n"
            "the course is published there (nothing offline can check that; `python -m course.links "
            "--external`\n"
            "lists the addresses to open once by hand). To publish under another name, change that line and "
            "run\n"
            "`python -m course.links --write`, then `python -m autograders.release`.\n")


def _clone(_: str, setting: Setting) -> str:
    return ("\n```bash\n"
            f"git clone --bare {github_url('', setting)}.git\n"
            "# create an empty PRIVATE repository, then:\n"
            f"cd {setting.name}.git && git push --mirror git@your.host:you/{setting.name}-private.git\n"
            "```\n")


#: markdown file -> region name -> function(old region text, setting) -> new region text
REGIONS = {
    "README.md": {"modules": _readme_table, "slug": _readme_slug},
    "autograders/INSTRUCTORS.md": {"clone": _clone},
}
_REGION = re.compile(r"(<!-- links:start (\w+) -->)(.*?)(<!-- links:end \2 -->)", re.S)


def render_markdown(text: str, generators: dict, setting: Setting, where: str = "") -> str:
    """`text` with each generated region rewritten; KeyError names a region missing from the file."""
    seen = set()

    def replace(match: re.Match) -> str:
        name = match.group(2)
        if name not in generators:
            raise KeyError(f"{where}: unknown generated region {name!r}")
        seen.add(name)
        return match.group(1) + generators[name](match.group(3), setting) + match.group(4)

    out = _REGION.sub(replace, text)
    missing = set(generators) - seen
    if missing:
        raise KeyError(f"{where}: no <!-- links:start NAME --> region for {sorted(missing)}")
    return out


def header_source(source: str, path: str, setting: Setting) -> str:
    """A header cell's markdown with its badge line made current (inserted after the title if absent)."""
    lines = source.split("\n")
    line = badge_line(path, setting)
    for i, old in enumerate(lines):
        if old.startswith(BADGE_START):
            lines[i] = line
            return "\n".join(lines)
    if not lines[0].startswith("# "):
        raise ValueError(f"{path}: the first cell does not start with a '# ' title")
    return "\n".join([lines[0], "", line, *lines[1:]])


def _edit_notebook_text(raw: str, new_source: str) -> str:
    """The notebook's JSON with only its first cell's source changed, keeping the file's own layout."""
    nb = json.loads(raw)
    old = nb["cells"][0]["source"]
    old_lines = old if isinstance(old, list) else old.splitlines(keepends=True)
    new_lines = new_source.splitlines(keepends=True)

    def dump(lines):
        return ",\n".join("    " + json.dumps(s, ensure_ascii=False) for s in lines)

    before, after = dump(old_lines), dump(new_lines)
    if isinstance(old, list) and raw.count(before) == 1:
        edited = raw.replace(before, after)
        if json.loads(edited)["cells"][0]["source"] == new_lines:
            return edited
    nb["cells"][0]["source"] = new_lines  # another layout: fall back to nbformat's
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def _header(nb_path: Path) -> str:
    cell = json.loads(nb_path.read_text())["cells"][0]
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def previous_repository(readme: str) -> str | None:
    """The ``owner/name`` the README's generated Binder links open now (before a rename is written)."""
    region = re.search(r"<!-- links:start modules -->(.*?)<!-- links:end modules -->", readme, re.S)
    match = re.search(r"https://mybinder\.org/v2/gh/([\w.-]+/[\w.-]+)/", region.group(1) if region else "")
    return match.group(1) if match else None


def rename(text: str, old: str, new: str) -> str:
    """`text` with the course's GitHub, Binder and Colab URLs of repository `old` pointed at `new`."""
    return re.sub(r"(https?://(?:www\.)?(?:github\.com|raw\.githubusercontent\.com|mybinder\.org/v2/gh"
                  rf"|colab\.research\.google\.com/github)/){re.escape(old)}(?=[/?#@\s\"'`)\]>]|\.git\b|$)",
                  lambda m: m.group(1) + new, text, flags=re.M)


def _rename_elsewhere(old: str, new: str) -> list[str]:
    """After a rename: rewrite `old`'s URLs in every tracked text file but modules/ (the release does those),
    the corpus and the files that describe the forms. Returns the files changed."""
    changed = []
    for relative in tracked_files():
        if relative.startswith((*SKIPPED, "modules/")) or relative in DESCRIBES_FORMS:
            continue
        path = REPO / relative
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        edited = rename(text, old, new)
        if edited != text:
            path.write_text(edited)
            changed.append(relative)
    return changed


def stale(setting: Setting | None = None, write: bool = False) -> list[str]:
    """Every generated link that differs from the setting, as ``"file: what"``; with `write`, fix them.

    Writes markdown regions, ``solutions/`` headers and install cells (course.colab); student copies
    (``modules/``) are only checked.
    """
    s = setting or read_setting()
    problems = []
    previous = previous_repository((REPO / "README.md").read_text())
    if write and previous and previous != s.repository:
        renamed = _rename_elsewhere(previous, s.repository)
        problems += [f"{name}: {previous} renamed {s.repository}" for name in renamed]
    for name, generators in REGIONS.items():
        path = REPO / name
        text = path.read_text()
        try:
            new = render_markdown(text, generators, s, name)
        except KeyError as error:
            problems.append(str(error.args[0]))
            continue
        if new != text:
            problems.append(f"{name}: generated links out of date")
            if write:
                path.write_text(new)
    for module, learner_path in notebooks().items():
        folder = learner_path.split("/")[1]
        for root in ("solutions", "modules"):
            nb_path = REPO / root / folder / f"{module}.ipynb"
            if not nb_path.exists():
                continue
            source = _header(nb_path)
            new = header_source(source, learner_path, s)
            if new == source:
                continue
            problems.append(f"{root}/{folder}/{module}.ipynb: header badge line out of date")
            if write and root == "solutions":
                nb_path.write_text(_edit_notebook_text(nb_path.read_text(), new))
    from course.colab import write_install_cells  # the install cells' default source: the same setting

    problems += [f"{path.relative_to(REPO)}: install cell out of date"
                 for path in write_install_cells(REPO, check=not write)]
    return problems


# --- every link, for the checker and --external ---

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.S | re.M)
_CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
_MD_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_MD_IMAGE = re.compile(r"!\[[^\[\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=[\"']([^\"']+)[\"']", re.I)
_AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?", re.M)  # [label]: target (reference-style)


@dataclass(frozen=True)
class Link:
    """One link: the file it is in (relative to the repository), its line there (1-based, 0 if unknown)."""

    file: str
    line: int
    target: str


def markdown_links(text: str) -> list[tuple[int, str]]:
    """``(line, target)`` of every markdown link and image (inline or a reference definition ``[label]: target``),
    HTML ``href``/``src`` and ``<https://...>`` in
    `text`; code blocks and code spans are skipped (blanked, so line numbers stay right)."""
    def blank(match: re.Match) -> str:
        return re.sub(r"[^\n]", " ", match.group(0))

    text = _CODE_SPAN.sub(blank, _FENCE.sub(blank, text))
    found = {}  # where the target starts -> (line, target): an image inside a link is found by both patterns
    for pattern in (_MD_LINK, _MD_IMAGE, _HTML_LINK, _AUTOLINK, _REFERENCE):
        for match in pattern.finditer(text):
            found[match.start(1)] = (text.count("\n", 0, match.start()) + 1, match.group(1))
    return [found[start] for start in sorted(found)]


def tracked_files() -> list[str]:
    """The repository's files as GitHub would have them: git's index, else every file under the root."""
    import subprocess

    try:
        done = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
        files = [f for f in done.stdout.decode().split("\0") if f]
        return [f for f in files if (REPO / f).exists()]
    except (OSError, subprocess.CalledProcessError):
        return [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts]


#: course/corpus/ is module 07's training text (TinyLM learns from it): its old README copy is left as it is.
SKIPPED = ("course/corpus/",)
#: Files that spell out the URL forms with placeholders on purpose (this checker and its tests).
DESCRIBES_FORMS = ("course/links.py", "tests/test_links.py")


def documents() -> list[str]:
    """Files whose links are checked: every tracked markdown file and notebook (solutions and modules)."""
    return [f for f in tracked_files() if f.endswith((".md", ".ipynb")) and not f.startswith(SKIPPED)]


def links_in(relative: str) -> list[Link]:
    """Every link in one markdown file or in one notebook's markdown cells (line: the cell's number)."""
    path = REPO / relative
    if relative.endswith(".ipynb"):
        cells = json.loads(path.read_text())["cells"]
        out = []
        for number, cell in enumerate(cells, 1):
            if cell["cell_type"] == "markdown":
                text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                out += [Link(relative, number, target) for _, target in markdown_links(text)]
        return out
    return [Link(relative, line, target) for line, target in markdown_links(path.read_text())]


def external(links: list[Link]) -> list[Link]:
    """The links to other sites (the badges' images included; not the course's own GitHub, Binder or Colab
    pages, which the checker resolves offline): no test fetches them."""
    own = own_link_pattern()
    return [link for link in links if re.match(r"https?://", link.target) and not own.match(link.target)]


#: URLs naming a GitHub repository: GitHub's pages, raw files, Binder's gh/ and Colab's github/.
SLUG_URL = re.compile(r"https?://(?:www\.)?(?:github\.com|raw\.githubusercontent\.com|mybinder\.org/v2/gh"
                      r"|colab\.research\.google\.com/github)/([\w.-]+)/([\w.-]+)")


def own_link_pattern(setting: Setting | None = None) -> re.Pattern:
    s = setting or read_setting()
    slug = re.escape(s.repository)
    return re.compile(rf"https?://(?:www\.)?(?:github\.com|raw\.githubusercontent\.com|mybinder\.org/v2/gh"
                      rf"|colab\.research\.google\.com/github)/{slug}(?:\.git)?(?:[/?#]|$)")


#: Owners or names that stand for "fill this in" (tooling.md's launch links used ORG/REPO).
PLACEHOLDERS = {"org", "owner", "user", "username", "repo", "name", "you", "your-org", "your-name",
                "your-username", "example", "placeholder", "todo", "xxx"}


def heading_anchors(text: str) -> set[str]:
    """The anchors markdown headings in `text` get: GitHub's (lower case, punctuation dropped, spaces to
    hyphens) and JupyterLab's (the heading's text with spaces to hyphens)."""
    def blank(match: re.Match) -> str:
        return re.sub(r"[^\n]", " ", match.group(0))

    anchors = set()
    for match in re.finditer(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", _FENCE.sub(blank, text), re.M):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1)).replace("`", "")
        anchors.add(re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-"))
        anchors.add(title.replace(" ", "-"))
    return anchors


def _text_of(relative: str) -> str:
    path = REPO / relative
    if relative.endswith(".ipynb"):
        cells = json.loads(path.read_text())["cells"]
        return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text()


def own_target(url: str, setting: Setting) -> tuple[str, str] | None:
    """``(ref, path)`` that one of the course's own links opens (path ``""``: the repository itself), or None
    for a link to anything else. Binder: ``labpath``, ``urlpath=lab/tree/...`` or ``filepath``."""
    from urllib.parse import parse_qs, unquote, urlsplit

    if not own_link_pattern(setting).match(url):
        return None
    parts = urlsplit(url)
    host, segments = parts.netloc.removeprefix("www."), [unquote(s) for s in parts.path.split("/") if s]
    if host == "mybinder.org":  # /v2/gh/OWNER/NAME/REF
        ref = segments[4] if len(segments) > 4 else "HEAD"
        query = parse_qs(parts.query)
        path = (query.get("labpath") or query.get("filepath") or [""])[0]
        urlpath = (query.get("urlpath") or [""])[0]
        if not path and urlpath.startswith(("lab/tree/", "tree/")):
            path = urlpath.split("tree/", 1)[1]
        return ref, path
    if host == "colab.research.google.com":  # /github/OWNER/NAME/blob/REF/PATH
        segments = segments[1:]
    if host == "raw.githubusercontent.com":  # /OWNER/NAME/REF/PATH
        return (segments[2], "/".join(segments[3:])) if len(segments) > 2 else (setting.branch, "")
    if len(segments) > 3 and segments[2] in ("blob", "tree", "raw"):
        return segments[3], "/".join(segments[4:])
    return setting.branch, ""  # the repository's own pages: its root, issues, releases


def link_problem(link: Link, files: set[str], setting: Setting) -> str | None:
    """What is wrong with `link`, or None. `files`: the repository's files (what the branch holds).

    Relative links must name a file or folder of the repository (and an anchor one of its headings); the
    course's own GitHub, Binder and Colab links must open the configured branch and a file it holds; links
    that name a placeholder or another spelling of the course's name are errors. Other sites' links are
    fine here (nobody fetches them: ``python -m course.links --external`` lists them).
    """
    from urllib.parse import unquote

    target = link.target
    slug = SLUG_URL.match(target)
    if slug:
        owner, name = slug.group(1), slug.group(2).removesuffix(".git")
        if {owner.lower(), name.lower()} & PLACEHOLDERS:
            return f"placeholder repository {owner}/{name}"
        launcher = re.match(r"https?://(mybinder\.org|colab\.research\.google\.com)/", target)
        if f"{owner}/{name}" != setting.repository and (
                launcher or owner == setting.owner or name == setting.name):
            return f"names {owner}/{name}, not the course's {setting.repository} (pyproject.toml)"
    opened = own_target(target, setting)
    if opened is not None:
        ref, path = opened
        if ref != setting.branch:
            return f"opens {ref!r}, not the configured branch {setting.branch!r}"
        path = path.strip("/")
        if path and path not in files and not any(f.startswith(path + "/") for f in files):
            return f"{path} is not a file of the repository"
        return None
    if re.match(r"[a-z][\w+.-]*:", target, re.I):  # another site, mailto:, data:
        return None
    base, _, anchor = target.partition("#")
    base = unquote(base.split("?")[0])
    if not base:
        resolved = link.file
    else:
        resolved = str(Path(link.file).parent.joinpath(base)).replace("\\", "/")
        import posixpath

        resolved = posixpath.normpath(resolved)
        if resolved.startswith("..") or (resolved not in files and not any(
                f.startswith(resolved + "/") for f in files)):
            return f"{base} does not exist (from {link.file})"
    if anchor and resolved.endswith((".md", ".ipynb")) and resolved in files:
        if anchor not in heading_anchors(_text_of(resolved)):
            return f"{resolved} has no heading for #{anchor}"
    return None


def slug_urls(relative: str) -> list[Link]:
    """Every URL naming a GitHub repository in a text file (scripts, configs, markdown) or in a notebook's
    code cells (line: the cell's number; its markdown cells are read by `links_in`)."""
    def found(text: str) -> list[tuple[int, str]]:
        return [(text.count("\n", 0, m.start()) + 1, m.group(0).rstrip(".,;:'\"`)]>"))
                for m in re.finditer(r"https?://[^\s\"'<>)\]`\\]+", text) if SLUG_URL.match(m.group(0))]

    try:
        text = (REPO / relative).read_text()
    except (UnicodeDecodeError, OSError):
        return []
    if relative.endswith(".ipynb"):
        cells = json.loads(text)["cells"]
        return [Link(relative, number, url) for number, cell in enumerate(cells, 1)
                if cell["cell_type"] == "code" for _, url in found("".join(cell["source"]))]
    return [Link(relative, line, url) for line, url in found(text)]


def broken_links(setting: Setting | None = None) -> list[str]:
    """Every link problem in the repository, as ``"file:line: target: what"`` (line: a notebook's cell)."""
    s = setting or read_setting()
    tracked = tracked_files()
    files = set(tracked)
    out = []
    for doc in documents():
        for link in links_in(doc):
            problem = link_problem(link, files, s)
            if problem:
                out.append(f"{link.file}:{link.line}: {link.target}: {problem}")
    seen = {(line.split(": ")[0], line.split(": ")[1]) for line in out}
    for relative in tracked:
        if relative.startswith(SKIPPED) or relative in DESCRIBES_FORMS:
            continue
        for link in slug_urls(relative):
            problem = link_problem(link, files, s)
            if problem and (f"{link.file}:{link.line}", link.target) not in seen:
                out.append(f"{link.file}:{link.line}: {link.target}: {problem}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="rewrite every generated link from the setting")
    group.add_argument("--check", action="store_true",
                       help="exit 1 when a generated link is out of date or a link is broken")
    group.add_argument("--external", action="store_true", help="print every link to another site")
    args = parser.parse_args(argv)
    setting = read_setting()
    if args.external:
        first = next(iter(notebooks().values()))
        print("# the course's own pages (checked offline against this checkout; open them once after publishing):")
        for url in (github_url("", setting), binder_url(first, setting), colab_url(first, setting)):
            print(url)
        print("# links to other sites:")
        places: dict[str, list[str]] = {}
        for link in external([link for doc in documents() for link in links_in(doc)]):
            places.setdefault(link.target, []).append(f"{link.file}:{link.line}")
        for target, where in places.items():
            print(f"{target}\t{where[0]}" + (f" (+{len(where) - 1} more)" if len(where) > 1 else ""))
        return 0
    if args.write or args.check:
        problems = stale(setting, write=args.write)
        generated = bool(problems)  # out-of-date generated links: --write fixes those, not a broken one
        if args.check:
            problems += broken_links(setting)
        for problem in problems:
            print(("fixed " if args.write and "modules/" not in problem.split(":")[0] else "") + problem)
        if args.write:
            if any(p.startswith("solutions/") for p in problems):
                print("now regenerate the student copies: python -m autograders.release")
            return 0
        if generated:
            print("run `python -m course.links --write` (then `python -m autograders.release`)")
        if len(problems) > 0 and not generated:
            print("fix or remove the links listed above (a missing file, anchor or path; --write cannot)")
        if not problems:
            print(f"every generated link is current for {setting.repository} (branch {setting.branch}), "
                  "and no link is broken")
        return int(bool(problems))
    first = next(iter(notebooks().values()))
    print(f"repository {setting.repository} (branch {setting.branch}), from {PYPROJECT}")
    for label, url in (("GitHub", github_url(first, setting)), ("Binder", binder_url(first, setting)),
                       ("Colab", colab_url(first, setting))):
        print(f"{label:<7}{url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
