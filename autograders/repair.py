"""Mend what editors do to a submitted notebook, so that nbgrader grades the learner's work.

Real submissions are not always the release notebook with answers typed in. JupyterLab's Split
Cell copies a cell's nbgrader metadata to both halves, and a copied cell kept as a first attempt
carries it too: two cells then share one ``grade_id``, and nbgrader 0.9's ``DeduplicateIds``
leaves an empty ``nbgrader`` entry on the earlier one that ``OverwriteCells.add_missing_cells``
then trips over (``KeyError: 'grade_id'``: the whole notebook fails, 0 points). VS Code, Colab,
Google Drive and converters drop the nbgrader metadata or the cell ids, or save nbformat 4.0-4.4;
a deleted answer cell makes ``add_missing_cells`` fail the same way (it puts a missing test after
its answer, which it assumes is there).

`prepare` reads a submission and returns it as nbgrader should grade it: every cell is matched
back to the release notebook (``modules/<m>/<m>.ipynb``) by its nbgrader ``grade_id``, by its
cell id, or by its source (difflib over the cell sequence: unchanged cells match exactly, and an
answer is what sits where the release's stub sat, between two matched neighbours), and the
release's nbgrader metadata and ids are put back on the cells they belong to:

- an answer in several cells (split or copied) keeps every cell in place, so the notebook runs
  top to bottom as the learner ran it (the later definition wins), and the last of them carries
  the answer's ``grade_id``; a written (markdown) answer in several cells is joined into one, so
  the instructor reads all of it;
- a test cell that appears more than once is graded once (grading restores tests from the source);
- a deleted answer comes back as the release's stub (its tests fail, every other exercise is
  graded), and a deleted test cell comes back from the release (nbgrader then restores its
  hidden tests, as for any locked cell);
- a cell not in the release stays as the learner wrote it, without nbgrader metadata.

Each mend is one short sentence in the notes, for the report and the learner's feedback. Nothing
here runs code, and the submitted file is never changed.
"""

from __future__ import annotations

import copy
import difflib
import json
import warnings
from collections import defaultdict
from pathlib import Path

import nbformat
from nbformat import NotebookNode
from nbformat.corpus.words import generate_corpus_id
from nbformat.validator import MissingIDFieldWarning

from autograders import settings

TEXT_STUB = "YOUR ANSWER HERE"


def _norm(source: str) -> str:
    """A cell's source for comparison: line endings, trailing blanks and outer blank lines ignored."""
    source = source.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in source.split("\n")).strip()


def _likeness(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader") or {}


def _is_answer(cell) -> bool:
    return bool(_meta(cell).get("solution"))


def _is_test(cell) -> bool:
    meta = _meta(cell)
    return bool(meta.get("grade")) and not meta.get("solution")


def _label(cell) -> str:
    return f"`{_meta(cell).get('grade_id') or cell.get('id')}`"


def _names(cells) -> str:
    return ", ".join(_label(c) for c in cells)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def release_notebook(module: str) -> NotebookNode:
    """The student release of `module` (``modules/<m>/<m>.ipynb``), read with nbformat."""
    return nbformat.read(settings.release_notebook(module), as_version=4)


def prepare(path: Path | str, module: str) -> tuple[NotebookNode, list[str]]:
    """The submission at `path` as nbgrader should grade it for `module`, and what was mended.

    Returns a new nbformat 4.5 notebook (cells matched back to the release, its nbgrader metadata
    and cell ids restored, split answers and duplicated tests resolved, deleted graded cells put
    back) and one short sentence per mend, empty when the notebook needed none. The file itself
    is not changed. Raises what ``nbformat.read`` raises for a file that is not a notebook; one
    whose cells cannot be matched (malformed cells) comes back as read, with a note saying so.
    """
    with warnings.catch_warnings():  # nbformat 4.0-4.4 has no cell ids: mend gives them theirs
        warnings.simplefilter("ignore", MissingIDFieldWarning)
        nb = nbformat.read(str(path), as_version=4)
    try:
        return mend(nb, release_notebook(module))
    except Exception as err:  # noqa: BLE001 - a malformed cell: grade the file as handed in, and say so
        return nb, [f"its cells could not be matched to the course notebook ({type(err).__name__}: "
                    f"{str(err)[:100]}): graded as handed in"]


def mend(nb: NotebookNode, release: NotebookNode) -> tuple[NotebookNode, list[str]]:
    """`prepare` on notebooks already read: a mended copy of `nb` against `release`, and notes."""
    sub = [copy.deepcopy(c) for c in nb.cells]
    rel = release.cells
    notes: list[str] = []

    # 1. what each submitted cell claims to be: by grade_id, then cell id, then identical source
    by_grade = {_meta(c)["grade_id"]: i for i, c in enumerate(rel) if _meta(c).get("grade_id")}
    by_id = {c.get("id"): i for i, c in enumerate(rel) if c.get("id")}
    by_source: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, c in enumerate(rel):
        by_source[c.cell_type, _norm(c.source)].append(i)
    claims: list[int | None] = []
    taken: set[int] = set()
    for cell in sub:
        claim = by_grade.get(_meta(cell).get("grade_id"))
        if claim is None and cell.get("id") in by_id:
            claim = by_id[cell.get("id")]
        if claim is None:
            same = by_source.get((cell.cell_type, _norm(cell.source)), [])
            free = [i for i in same if i not in taken]
            claim = (free or same or [None])[0]
        claims.append(claim)
        if claim is not None:
            taken.add(claim)

    # 2. the consistent part of those claims: cells in the release's order (difflib over the sequence)
    unique = [c if c is not None else -1 - s for s, c in enumerate(claims)]  # unclaimed: matches nothing
    matcher = difflib.SequenceMatcher(None, list(range(len(rel))), unique, autojunk=False)
    pairs = [(b.a + k, b.b + k) for b in matcher.get_matching_blocks() for k in range(b.size)]
    members: dict[int, list[int]] = defaultdict(list)  # release cell -> submitted cells that are it
    for s, claim in enumerate(claims):
        if claim is not None:
            members[claim].append(s)

    # 3. answers that lost every mark: what sits between two matched neighbours where the stub sat
    rematched = 0
    for (ra, sa), (rb, sb) in zip([(-1, -1), *pairs], [*pairs, (len(rel), len(sub))]):
        lost = [r for r in range(ra + 1, rb) if not members[r]]
        loose = [s for s in range(sa + 1, sb) if claims[s] is None]
        for s in loose:
            same_type = [r for r in lost if rel[r].cell_type == sub[s].cell_type]
            if not same_type:
                continue
            best = max(same_type, key=lambda r, text=sub[s].source: _likeness(rel[r].source, text))
            if _is_answer(rel[best]):
                members[best].append(s)
                claims[s] = best
                rematched += 1
    for r in members:
        members[r].sort()

    # 4. what each submitted cell becomes
    matched = {s: r for r, s in pairs}
    emit: dict[int, NotebookNode | None] = {}  # submitted index -> cell to write, None to drop
    stripped = ids_missing = 0
    for r, group in list(members.items()):
        if not group:
            continue
        ref = rel[r]
        if _is_test(ref):
            keep = next((s for s in group if matched.get(s) == r), group[-1])
            if len(group) > 1:
                notes.append(f"test cell {_label(ref)} appears {len(group)} times: graded once")
            for s in group:
                emit[s] = None
            emit[keep] = _as(ref, sub[keep])
        elif _is_answer(ref) and ref.cell_type == "markdown" and len(group) > 1:
            keep = group[-1]
            texts = [sub[s].source.strip() for s in group if sub[s].cell_type == "markdown"]
            written = [t for t in texts if t and t != TEXT_STUB] or texts[-1:]
            for s in group:
                emit[s] = None
            emit[keep] = _as(ref, sub[keep], source="\n\n".join(written))
            notes.append(f"written answer {_label(ref)} was in {len(group)} cells: "
                         "joined into one for the instructor")
        elif _is_answer(ref):  # the last cell of its type holds it: a copy kept as notes stays notes
            keep = next((s for s in reversed(group) if sub[s].cell_type == ref.cell_type), group[-1])
            for s in group:
                emit[s] = _plain(sub[s])
            emit[keep] = _as(ref, sub[keep])
            if len(group) > 1:
                notes.append(f"answer {_label(ref)} was in {len(group)} cells (a split or copied cell): "
                             "graded as the notebook runs top to bottom, the later code winning")
        else:
            keep = next((s for s in group if matched.get(s) == r), None)
            for s in group:
                emit[s] = _plain(sub[s])
            if keep is not None:
                emit[keep].id = ref.get("id") or emit[keep].get("id")
        if _meta(ref) and keep is not None and not _meta(sub[keep]):
            stripped += 1
    for s, cell in enumerate(sub):
        if s not in emit:
            emit[s] = _plain(cell)
        ids_missing += not cell.get("id")

    # 5. graded cells that are gone come back from the release, after their matched predecessor
    after: dict[int, list[int]] = defaultdict(list)  # submitted index (-1: the top) -> release cells
    gone_answers, gone_tests = [], []
    for r, ref in enumerate(rel):
        if not (_is_answer(ref) or _is_test(ref)) or members[r]:
            continue
        anchor = max((s for rr, s in pairs if rr < r), default=-1)
        after[anchor].append(r)
        (gone_answers if _is_answer(ref) else gone_tests).append(ref)
    for ref in gone_answers:
        notes.append(f"answer cell {_label(ref)} was deleted: graded as unanswered")
    if gone_tests:
        notes.append(f"test {'cells' if len(gone_tests) > 1 else 'cell'} {_names(gone_tests)} "
                     f"{'were' if len(gone_tests) > 1 else 'was'} deleted: restored from the course notebook")
    if stripped:
        notes.append(f"nbgrader metadata was missing on {_plural(stripped, 'graded cell')} (an editor "
                     "such as VS Code or Colab drops it): matched back to the course notebook"
                     + (", answers by where their stubs sat" if rematched else ""))
    if ids_missing:
        notes.append(f"cell ids were missing on {_plural(ids_missing, 'cell')} (nbformat "
                     f"4.{nb.get('nbformat_minor', 0)}): matched to the course notebook by content")
    found = sum(1 for r in range(len(rel)) if members[r])
    if found < len(rel) / 2:
        notes.append(f"only {found} of the course notebook's {len(rel)} cells were found in it: "
                     "is this the notebook of this module?")

    cells = [copy.deepcopy(rel[r]) for r in after[-1]]
    for s in range(len(sub)):
        if emit[s] is not None:
            cells.append(emit[s])
        cells += [copy.deepcopy(rel[r]) for r in after[s]]
    out = nbformat.v4.new_notebook(metadata=copy.deepcopy(nb.metadata), cells=_unique_ids(cells))
    return out, notes


def _as(ref: NotebookNode, cell: NotebookNode, source: str | None = None) -> NotebookNode:
    """`cell`'s work (source, outputs) as the release cell `ref`: its type, nbgrader metadata and id."""
    metadata = copy.deepcopy(dict(cell.get("metadata", {})))
    metadata["nbgrader"] = copy.deepcopy(_meta(ref))
    source = cell.source if source is None else source
    if ref.cell_type == "code":
        new = nbformat.v4.new_code_cell(source, metadata=metadata)
        if cell.cell_type == "code":
            new.outputs, new.execution_count = cell.get("outputs", []), cell.get("execution_count")
    else:
        new = nbformat.v4.new_markdown_cell(source, metadata=metadata)
        if cell.get("attachments"):
            new.attachments = cell.attachments
    new.id = ref.get("id") or cell.get("id") or generate_corpus_id()
    return new


def _plain(cell: NotebookNode) -> NotebookNode:
    """`cell` as a plain cell: nbgrader grades it as nothing, and it runs where it stands."""
    cell = copy.deepcopy(cell)
    cell.get("metadata", {}).pop("nbgrader", None)
    return cell


def _unique_ids(cells: list[NotebookNode]) -> list[NotebookNode]:
    """Every cell an id, no two alike; graded cells keep theirs (they came from the release)."""
    used = {c.id for c in cells if _meta(c).get("grade_id") and c.get("id")}
    for cell in cells:
        if _meta(cell).get("grade_id") and cell.get("id"):
            continue
        if not cell.get("id") or cell.id in used:
            cell.id = generate_corpus_id()
            while cell.id in used:
                cell.id = generate_corpus_id()
        used.add(cell.id)
    return cells


def module_of(path: Path | str) -> str | None:
    """The course module a notebook belongs to: by its file or folder name, else by its content.

    A renamed copy (``00_orientation-Copy1.ipynb``, Colab's ``Copy of ...``) is recognised by the
    course cells it holds; None when nothing matches (not a course notebook).
    """
    path = Path(path)
    known = settings.modules()
    if path.stem in known:
        return path.stem
    # the folder's name, where the folder holds one notebook (a renamed copy of 04b_model_parallel in
    # 04_distributed/ is 04b's, and only its cells can tell)
    folder = path.parent.name
    if folder in known and settings.notebooks_in(settings.folder(folder)) == [folder]:
        return folder
    try:
        nb = json.loads(path.read_text())
        theirs = {_norm("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
                  for c in nb["cells"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    best, count = None, 0
    for module in known:
        ours = {_norm(c.source) for c in release_notebook(module).cells} - {""}
        shared = len(ours & theirs)
        if shared > count and shared >= len(ours) / 4:
            best, count = module, shared
    return best
