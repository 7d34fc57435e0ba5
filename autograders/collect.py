"""Find one notebook per student in what an instructor downloads, and say why one cannot be graded.

SUBMISSIONS is a folder or a .zip file (as a learning-management system exports it), possibly
wrapped in folders of its own, that holds, for each student, one or more of: ``<student>.ipynb``,
a folder ``<student>/`` with the notebook inside, or ``<student>.zip`` with the notebook inside.

Who is who. The student id is read from each entry's name: first by an instructor's `id_regex`
(a ``(?P<student>...)`` group, optionally ``(?P<name>...)`` and ``(?P<attempt>...)``), else by the
patterns of the common LMS exports (`LMS_PATTERNS`: Blackboard, Canvas, Moodle, Brightspace), else
the name itself. Entries with one id are attempts of one student: the latest is graded (time stamp
in the name, else the Canvas resubmission order, else the file's time, ties by name so that reruns
agree) and the others are listed as superseded. Within one attempt, several notebooks (a renamed
copy next to the untouched original) are told apart by what the student answered.

Ids keep every script (NFC-normalised); only what is unsafe in a path, a command line or an
nbgrader glob is replaced, and two names that still collide get distinct, stable ids.

Archives are unpacked member by member with a cap on the bytes actually read; notebooks are
read, their outputs dropped and the cleaned copy written to the scratch folder before any size
rule. Nothing here runs a submission: it only reads files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

MAX_NOTEBOOK_BYTES = 20 * 2**20      # per student, outputs cleared: a course notebook is under 1 MB
MAX_MEMBER_BYTES = 512 * 2**20       # bytes actually read from one file or archive member
MAX_ARCHIVE_MEMBERS = 20000
MAX_ZIP_DEPTH = 3                    # a student's zip inside the class zip inside ...
CLEAR_OUTPUTS = "Clear All Outputs (Edit menu in JupyterLab), save, and submit again"

# How the common LMS exports name a student's files. Each has a `student` group, and may have
# `name` (shown in grades.csv), `stamp` (a time stamp: the latest attempt wins), `seq` (an
# upload number: larger is later) and `file` (the student's own file name).
LMS_PATTERNS: dict[str, re.Pattern] = {
    # Blackboard "all attempts": <assignment>_<username>_attempt_2026-05-01-10-22-33[_<file>]
    # (the key is all before "_attempt_": usernames may hold underscores; the export's common
    # assignment prefix is taken off the id in `collect_submissions`)
    "blackboard": re.compile(r"^(?P<student>.+?)_attempt_"
                             r"(?P<stamp>\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})(?:_(?P<file>.+))?$"),
    # Moodle: <Full Name>_<participant id>_assignsubmission_file_[<file>] (a folder or a file)
    "moodle": re.compile(r"^(?P<name>.+?)_(?P<student>\d+)_assignsubmission_[a-z]+_?(?P<file>.*)$"),
    # Brightspace (D2L): <sub id>-<sub id> - <First Last> - May 1, 2026 1022 AM - <file>
    # (keyed on the first number and the name: two people may share a name; same names are reported)
    "brightspace": re.compile(r"^(?P<key>\d+)-\d+ - (?P<student>.+?) - "
                              r"(?P<stamp>[A-Z][a-z]{2} \d{1,2}, \d{4} \d{3,4} [AP]M) - (?P<file>.+)$"),
    # Canvas: <sortable name>_[LATE_]<user id>_<attachment id>_<file>, "-1", "-2" on resubmissions
    # (the sortable name is letters only, as Canvas writes it, so "maria_garcia_2026_05_01" is not Canvas;
    # the key holds the name and the id: two names never merge on a number alone)
    "canvas": re.compile(r"^(?P<key>(?P<name>[^\W\d_]+))_(?:LATE_|late_)?(?P<student>\d+)_(?P<seq>\d+)_(?P<file>.+)$"),
}
STAMP_FORMATS = ("%Y-%m-%d-%H-%M-%S", "%b %d, %Y %I%M %p", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S",
                 "%Y%m%d%H%M%S", "%Y-%m-%d_%H-%M-%S", "%Y-%m-%d", "%Y%m%dT%H%M%S", "%d %B %Y", "%d %b %Y",
                 "%B %d, %Y", "%b %d, %Y", "%d %B %Y %H:%M", "%Y-%m-%d-%H%M%S", "%Y-%m-%d %H%M")


@dataclass
class Submission:
    """One student's work as found: the notebook to grade (a cleaned copy) or why there is none."""
    student: str                 # safe, unique id: nbgrader, folders and grades.csv use it
    origin: str                  # where the graded notebook came from, for the report
    notebook: Path | None = None
    problem: str | None = None   # why it cannot be graded, when it cannot
    name: str = ""               # the name as the export wrote it (readable, any script)
    superseded: list[str] = field(default_factory=list)  # earlier attempts, not graded
    notes: list[str] = field(default_factory=list)       # what was chosen and why, for the detail


# ---------------------------------------------------------------- names and ids

_KEEP_ASCII = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@+")
_JOINERS = {"\u200c", "\u200d"}  # zero-width (non-)joiner: part of how Indic scripts are spelled


def safe_id(text: str) -> str:
    """`text` as a student id that is safe in a path, on a command line and in an nbgrader glob.

    NFC-normalised; letters, marks and digits of every script are kept (Müller and Möller stay
    distinct, Devanagari and Tamil keep their vowel signs); ASCII punctuation other than ``-_.@+``,
    whitespace, separators, control characters and glob characters become ``_`` (runs collapse),
    and leading dots or dashes go. An empty result is ``unnamed``.
    """
    text = unicodedata.normalize("NFC", text)
    out = []
    for ch in text:
        if ch in _KEEP_ASCII or ch in _JOINERS:
            out.append(ch)
        elif not ch.isascii() and unicodedata.category(ch)[0] in "LMN":
            out.append(ch)
        else:
            out.append("_")
    cleaned = re.sub(r"_+", "_", "".join(out)).strip("_").lstrip(".-").rstrip(".")
    return cleaned.strip("_") or "unnamed"


def ascii_id(student: str) -> str:
    """A reversible ASCII form of a student id, for a tool that takes nothing else (`from_ascii_id`).

    ASCII ids are returned as they are; others become ``xn--`` + Punycode (RFC 3492, what IDNA
    does for domain names): ``Möller`` -> ``xn--Mller-jua``.
    """
    if student.isascii() and not student.startswith("xn--"):
        return student
    return "xn--" + student.encode("punycode").decode("ascii")


def from_ascii_id(text: str) -> str:
    """The student id that `ascii_id` turned into `text`."""
    return text[4:].encode("ascii").decode("punycode") if text.startswith("xn--") else text


def _stem(name: str) -> str:
    for suffix in (".ipynb", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _stamp(text: str) -> str | None:
    """A time stamp as sortable ISO text in UTC (ISO 8601 with any offset, "Z" or fractional seconds,
    or one of `STAMP_FORMATS`, taken as UTC), or None. Day-first or month-first dates such as
    05-10-2026 are ambiguous and are not read."""
    text = text.strip()
    try:
        when = dt.datetime.fromisoformat(text.replace("_", " ")) if len(text) >= 10 else None
    except ValueError:
        when = None
    if when is not None:
        if when.tzinfo is not None:
            when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return when.isoformat()
    for fmt in STAMP_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).isoformat()
        except ValueError:
            continue
    return None


@dataclass
class _Identity:
    key: str                     # who: entries with one key are one student's attempts
    name: str                    # readable name
    stamp: str = ""              # ISO time from the name, "" when none
    stamp_text: str = ""         # the time stamp as written, read or not
    shown: str = ""              # what the id is made from ("" : the key)
    seq: tuple = ()              # upload order from the name (Canvas), () when none


def identify(entry_name: str, id_regex: str | None = None) -> _Identity:
    """Who an export entry (file or folder name) belongs to, and its attempt's place in time."""
    name = unicodedata.normalize("NFC", entry_name)
    stem = _stem(name)
    patterns = ([re.compile(id_regex)] if id_regex else []) + list(LMS_PATTERNS.values())
    for index, pattern in enumerate(patterns):
        match = pattern.search(name) or pattern.search(stem)
        groups = match.groupdict() if match else {}
        if not groups.get("student"):
            continue
        student = groups["student"].strip()
        stamp_text = groups.get("stamp") or ""
        stamp = _stamp(stamp_text) or ""
        seq: tuple = ()
        attempt = groups.get("attempt")
        if attempt:
            if attempt.isdigit():
                seq = (int(attempt),)
            else:
                stamp_text, stamp = attempt, _stamp(attempt) or stamp
        if groups.get("seq"):
            # Canvas appends -1, -2 to a resubmitted file of the same name; attachment ids grow
            dash = re.search(r"-(\d+)$", _stem(groups.get("file") or ""))
            seq = (int(dash.group(1)) if dash else 0, int(groups["seq"]))
        readable = (groups.get("name") or student).strip()
        if id_regex and index == 0 and not (stamp or seq):
            lms = identify(entry_name)  # an instructor's regex without an attempt group: the LMS's order
            stamp, seq = lms.stamp, lms.seq
            dash = re.search(r"-(\d+)$", stem)
            if not (stamp or seq) and dash:  # Canvas's "-1", "-2" on a resubmitted file of the same name
                seq = (int(dash.group(1)),)
        key = f"{groups['key']} {student}" if groups.get("key") else student
        return _Identity(key=key, name=readable, stamp=stamp, seq=seq, stamp_text=stamp_text, shown=student)
    return _Identity(key=stem, name=stem)


def _unique_ids(shown: dict[str, str]) -> dict[str, str]:
    """A safe id per student key, made from its `shown` text; keys whose ids collide (also by case, or
    two keys shown alike) get a suffix each from the key's hash: a collision never merges two keys."""
    safe = {key: safe_id(text) for key, text in shown.items()}
    by_folded: dict[str, list[str]] = {}
    for key, sid in safe.items():
        by_folded.setdefault(sid.casefold(), []).append(key)
    ids = {}
    for group in by_folded.values():
        for key in group:
            suffix = hashlib.sha256(key.encode()).hexdigest()[:6] if len(group) > 1 else ""
            ids[key] = f"{safe[key]}-{suffix}" if suffix else safe[key]
    return ids


# ---------------------------------------------------------------- archives

def _member_name(info: zipfile.ZipInfo, encoding: str | None) -> tuple[str, str | None]:
    """A member's name as the student's computer wrote it, and a note when it had to be guessed.

    Names flagged UTF-8 (bit 11) are as Python read them. Otherwise the Info-ZIP Unicode Path
    extra field (0x7075) wins when its checksum matches; then UTF-8 written without the flag;
    then the instructor's `encoding`; else cp437 (the zip standard's default) with a note.
    """
    if info.flag_bits & 0x800:
        return info.filename, None
    raw = info.orig_filename.encode("cp437")  # Python decoded the raw bytes as cp437: undo it
    extra = info.extra
    while len(extra) >= 4:
        kind, size = int.from_bytes(extra[:2], "little"), int.from_bytes(extra[2:4], "little")
        body, extra = extra[4:4 + size], extra[4 + size:]
        if kind == 0x7075 and len(body) > 5 and body[0] == 1:
            if int.from_bytes(body[1:5], "little") == zlib.crc32(raw):
                try:
                    return body[5:].decode("utf-8"), None
                except UnicodeDecodeError:
                    pass
    if raw.isascii():
        return raw.decode("ascii"), None
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        pass
    if encoding:
        try:
            return raw.decode(encoding), None
        except (UnicodeDecodeError, LookupError):
            return raw.decode("cp437"), f"name not readable as {encoding}"
    return raw.decode("cp437"), ("its file name was stored in an unknown legacy code page (no UTF-8 flag): "
                                 "read as cp437, the name may be garbled; pass --zip-encoding (e.g. cp1251, "
                                 "cp936, cp1252) to read it as the student's computer wrote it")


def _copy_capped(src, dst: Path, cap: int) -> bool:
    """Copy the stream `src` into `dst`, reading at most `cap` bytes; False (and no file) if more."""
    read = 0
    with open(dst, "wb") as out:
        while chunk := src.read(2**20):
            read += len(chunk)
            if read > cap:
                break
            out.write(chunk)
    if read > cap:
        dst.unlink()
        return False
    return True


@dataclass
class _Unpacked:
    notes: dict[Path, str] = field(default_factory=dict)     # extracted path -> note on its name
    problems: dict[Path, str] = field(default_factory=dict)  # path it would have had -> why not there


def _extract(archive: Path, target: Path, encoding: str | None, found: _Unpacked) -> str | None:
    """Extract the notebooks (and nested zips) of `archive` under `target`; a problem or None.

    Member by member, each capped at `MAX_MEMBER_BYTES` actually read (whatever the header says);
    a member over the cap is recorded in `found.problems`, the rest still unpacked. Path
    traversal, absolute names and macOS metadata are never written. Each file keeps the
    member's date and time as its modification time.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_ARCHIVE_MEMBERS:
                return f"archive has {len(members)} entries, more than {MAX_ARCHIVE_MEMBERS}"
            for member in members:
                name, note = _member_name(member, encoding)
                name = unicodedata.normalize("NFC", name.replace("\\", "/"))
                parts = [p for p in name.split("/") if p not in ("", ".")]
                if member.is_dir() or not parts or not parts[-1].lower().endswith((".ipynb", ".zip")):
                    continue
                if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
                    continue  # path traversal: never written
                if any(p == "__MACOSX" or p.startswith(".") for p in parts):
                    continue  # macOS metadata, editor checkpoints, hidden files
                out = target.joinpath(*parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(member) as src:
                        if not _copy_capped(src, out, MAX_MEMBER_BYTES):
                            found.problems[out] = (f"{parts[-1]} unpacks to more than "
                                                   f"{MAX_MEMBER_BYTES // 2**20} MB: " + CLEAR_OUTPUTS)
                            continue
                except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, zlib.error) as err:
                    out.unlink(missing_ok=True)  # one damaged (or encrypted) member costs only its student
                    found.problems[out] = f"{parts[-1]} is damaged in the archive ({err}): submit it again"
                    continue
                if out.suffix.lower() == ".ipynb" and out.stat().st_size > 2**20:
                    _clear_in_place(out)  # a class of big notebooks never fills the disk with outputs
                stamp = dt.datetime(*member.date_time).timestamp()
                os.utime(out, (stamp, stamp))
                if note:
                    found.notes[out] = note
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError, zlib.error) as err:
        return f"not a readable zip archive ({err})"
    return None


# ---------------------------------------------------------------- notebooks

def _read_notebook_bytes(data: bytes) -> dict | None:
    """Parse notebook JSON whatever its byte-order mark or line ends; None when it is not JSON."""
    boms = {b"\xef\xbb\xbf": "utf-8-sig", b"\xff\xfe": "utf-16", b"\xfe\xff": "utf-16"}
    codec = next((c for bom, c in boms.items() if data.startswith(bom)), "utf-8")
    try:
        nb = json.loads(data.decode(codec))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return nb if isinstance(nb, dict) and isinstance(nb.get("cells"), list) else None


def _clear_in_place(path: Path) -> None:
    """Rewrite the notebook at `path` without its outputs; leave what is not notebook JSON alone."""
    nb = _read_notebook_bytes(path.read_bytes())
    if nb is not None:
        path.write_text(json.dumps(clear_outputs(nb), ensure_ascii=False), encoding="utf-8")


def clear_outputs(nb: dict) -> dict:
    """`nb` (notebook JSON) without outputs or execution counts: grading runs every cell again."""
    for cell in nb["cells"]:
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return nb


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _cell_key(cell: dict) -> str | None:
    meta = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
    nbg = meta.get("nbgrader") if isinstance(meta.get("nbgrader"), dict) else {}
    return nbg.get("grade_id") or cell.get("id")


def _release_stubs(module: str) -> dict[str, str]:
    """The released answer cells of `module` (grade id or cell id -> stub source), {} if none."""
    from autograders import settings

    path = settings.release_notebook(module)
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    stubs = {}
    for cell in nb["cells"]:
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution"):
            for key in {cell["metadata"]["nbgrader"].get("grade_id"), cell.get("id")} - {None}:
                stubs[key] = _source(cell).strip()
    return stubs


def _same_release_name(name: str, module: str) -> bool:
    """Whether a file name is the module's notebook, or a copy of it by its editor's naming."""
    stem = _stem(unicodedata.normalize("NFC", name))
    stem = re.sub(r"^(Copy of |Kopie von |Copie de )", "", stem, flags=re.I)
    stem = re.sub(r"(-Copy\d*| \(\d+\)|-\d+| copy)$", "", stem, flags=re.I)
    return stem == module


@dataclass
class _Candidate:
    path: Path
    label: str                   # as the report names it
    mtime: float
    problem: str | None = None
    nb: dict | None = None
    answered: int = 0            # answer cells that differ from the release's stubs
    ours: bool = False           # carries this module's answer cells
    named: bool = False          # named like the module's notebook
    note: str | None = None

    @property
    def rank(self) -> tuple:
        return (self.problem is None, self.ours, self.answered, self.named, self.mtime, self.label)


def _candidate(path: Path, label: str, module: str, stubs: dict[str, str], unpacked: _Unpacked) -> _Candidate:
    cand = _Candidate(path=path, label=label, mtime=0.0, named=_same_release_name(path.name, module),
                      note=unpacked.notes.get(path))
    if path in unpacked.problems:
        cand.problem = unpacked.problems[path]
        return cand
    cand.mtime = path.stat().st_mtime
    size = path.stat().st_size
    if size > MAX_MEMBER_BYTES:
        cand.problem = f"{path.name} is {size // 2**20} MB: " + CLEAR_OUTPUTS
        return cand
    cand.nb = _read_notebook_bytes(path.read_bytes())
    if cand.nb is not None:
        clear_outputs(cand.nb)  # a class's outputs never sit in memory at once
        cells = [c for c in cand.nb["cells"] if isinstance(c, dict)]
        keys = {_cell_key(c): _source(c).strip() for c in cells if c.get("cell_type") == "code"}
        mine = {k: v for k, v in keys.items() if k in stubs}
        cand.ours = bool(mine)
        cand.answered = sum(1 for k, v in mine.items() if v != stubs[k])
    return cand


# ---------------------------------------------------------------- the export

def _is_junk(path: Path) -> bool:
    return path.name.startswith(".") or path.name == "__MACOSX" or path.name == ".ipynb_checkpoints"


def _looks_like_one_students_folder(folder: Path, module: str) -> bool:
    notebooks = [p for p in folder.iterdir()
                 if p.is_file() and p.suffix.lower() == ".ipynb" and not _is_junk(p)]
    return bool(notebooks) and all(_same_release_name(p.name, module) for p in notebooks)


def _unwrap(root: Path, module: str) -> Path:
    """Go down through folders that wrap the export (a lone folder that is not one student's)."""
    for _ in range(10):
        entries = [p for p in root.iterdir()
                   if not _is_junk(p) and (p.is_dir() or p.suffix.lower() in (".ipynb", ".zip"))]
        if (len(entries) != 1 or not entries[0].is_dir()
                or _looks_like_one_students_folder(entries[0], module)):
            return root
        root = entries[0]
    return root


def _notebooks_under(folder: Path, label: str, scratch: Path, encoding: str | None, unpacked: _Unpacked,
                     depth: int = 0) -> tuple[list[tuple[Path, str]], list[str]]:
    """Every notebook under `folder` with its label ("entry/inner/path"), unpacking zips found
    there (up to `MAX_ZIP_DEPTH`), and the problems of zips that could not be read."""
    found: list[tuple[Path, str]] = []
    problems: list[str] = []
    paths = {p for p in folder.rglob("*") if p.is_file()}
    paths |= {p for p in unpacked.problems if _under(p, folder)}
    for path in sorted(paths):
        inside = path.relative_to(folder)
        if any(_is_junk(Path(p)) for p in inside.parts):
            continue
        where = f"{label}/{inside.as_posix()}" if label else inside.as_posix()
        if path.suffix.lower() == ".ipynb" or path in unpacked.problems:
            found.append((path, where))
        elif path.suffix.lower() == ".zip" and depth < MAX_ZIP_DEPTH:
            more, worse = _unzip(path, where, scratch, encoding, unpacked, depth + 1)
            found += more
            problems += worse
    return found, problems


def _unzip(archive: Path, label: str, scratch: Path, encoding: str | None, unpacked: _Unpacked,
           depth: int) -> tuple[list[tuple[Path, str]], list[str]]:
    inner = scratch / "zips" / hashlib.sha256(str(archive).encode()).hexdigest()[:16]
    shutil.rmtree(inner, ignore_errors=True)
    problem = _extract(archive, inner, encoding, unpacked)
    if problem:
        return [], [f"{label}: {problem}"]
    if not inner.exists():
        return [], []
    return _notebooks_under(inner, label, scratch, encoding, unpacked, depth)


def _under(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


@dataclass
class _Attempt:
    entry: Path
    who: _Identity
    candidates: list[_Candidate]
    problems: list[str]

    @property
    def time(self) -> float:
        return max((c.mtime for c in self.candidates), default=0.0)

    @property
    def order(self) -> tuple:
        """Later attempts sort last: name's time stamp, upload order, file time, then name."""
        return (self.who.stamp, self.who.seq, self.time, self.entry.name)


def collect_submissions(source: Path, module: str, scratch: Path, id_regex: str | None = None,
                        zip_encoding: str | None = None) -> list[Submission]:
    """Find one notebook per student in a folder or a zip file; one `Submission` per student.

    `scratch` receives the unpacked archives and, per student, the notebook to grade with its
    outputs cleared. `id_regex` (a ``(?P<student>...)`` group) reads ids from names before the
    built-in LMS patterns; `zip_encoding` names the code page of zips written without UTF-8 names.
    Raises SystemExit for a missing source or one that is neither a folder nor a zip.
    """
    source = Path(source)
    scratch = Path(scratch)
    if not source.exists():
        raise SystemExit(f"submissions not found: {source}")
    if zip_encoding:
        try:
            "".encode(zip_encoding)
        except LookupError:
            raise SystemExit(f"unknown --zip-encoding {zip_encoding!r} "
                             "(e.g. cp1251, cp936, cp1252)") from None
    unpacked = _Unpacked()
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise SystemExit(f"{source} is neither a folder nor a zip archive")
        target = scratch / "unpacked"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        problem = _extract(source, target, zip_encoding, unpacked)
        if problem:
            raise SystemExit(f"{source}: {problem}")
        source = target
    source = _unwrap(source, module)
    for level in range(MAX_ZIP_DEPTH):  # an export zipped again (a zip holding only the LMS's zip)
        entries = [p for p in source.iterdir()
                   if not _is_junk(p) and (p.is_dir() or p.suffix.lower() in (".ipynb", ".zip"))]
        if len(entries) != 1 or entries[0].suffix.lower() != ".zip" or entries[0].is_dir():
            break
        inner = scratch / f"unpacked-{level + 1}"
        shutil.rmtree(inner, ignore_errors=True)
        inner.mkdir(parents=True)
        if _extract(entries[0], inner, zip_encoding, unpacked) is not None:
            break
        inner = _unwrap(inner, module)
        students = [p for p in inner.iterdir() if not _is_junk(p)]
        if len(students) < 2 or _looks_like_one_students_folder(inner, module):
            break  # one student's zip: graded as such below
        source = inner
    stubs = _release_stubs(module)

    attempts: list[_Attempt] = []
    entries = sorted(set(p for p in source.iterdir() if not _is_junk(p)) | {p for p in unpacked.problems
                                                                         if p.parent == source})
    for entry in entries:
        if entry.is_dir():
            paths, problems = _notebooks_under(entry, entry.name, scratch, zip_encoding, unpacked)
        elif entry.suffix.lower() == ".ipynb" or entry in unpacked.problems:
            paths, problems = [(entry, entry.name)], []
        elif entry.suffix.lower() == ".zip":
            paths, problems = _unzip(entry, entry.name, scratch, zip_encoding, unpacked, depth=1)
        else:
            continue  # stray files (PDFs, READMEs, LMS receipts) are not submissions
        who = identify(entry.name, id_regex)
        cands = [_candidate(p, label, module, stubs, unpacked) for p, label in paths]
        attempts.append(_Attempt(entry, who, cands, problems))

    by_key: dict[str, list[_Attempt]] = {}
    for attempt in attempts:
        by_key.setdefault(attempt.who.key, []).append(attempt)
    blackboard = [key for key, group in by_key.items() if LMS_PATTERNS["blackboard"].search(group[0].entry.name)]
    shown = {key: group[0].who.shown or key for key, group in by_key.items()}
    common = os.path.commonprefix(blackboard)[:os.path.commonprefix(blackboard).rfind("_") + 1]
    if len(blackboard) == 1:
        common = blackboard[0][:blackboard[0].rfind("_") + 1]  # one student: the username is the last part
    shown.update({key: key[len(common):] or key for key in blackboard})  # the assignment's name off
    for key in blackboard:
        for attempt in by_key[key]:
            attempt.who.name = shown[key]
    ids = _unique_ids(shown)
    submissions = [_choose(ids[key], group, module, scratch) for key, group in by_key.items()]
    by_name: dict[str, list[Submission]] = {}
    for sub in submissions:
        by_name.setdefault(unicodedata.normalize("NFC", sub.name).casefold(), []).append(sub)
    for same in (group for group in by_name.values() if len(group) > 1):
        for sub in same:
            others = ", ".join(o.origin for o in same if o is not sub)
            sub.notes.append(f"another submission has the same name ({others}) under another id: graded "
                             "apart; if they are one student's attempts, keep the later")
    return sorted(submissions, key=lambda s: s.student)


def _answered(count: int) -> str:
    return f"{count} exercise{'' if count == 1 else 's'} answered"


def _choose(student: str, attempts: list[_Attempt], module: str, scratch: Path) -> Submission:
    """The one notebook to grade of one student's attempts, and notes on what was passed over."""
    unread = [a.entry.name for a in attempts if a.who.stamp_text and not a.who.stamp]
    if len(attempts) > 1 and not all(a.who.stamp for a in attempts):
        for a in attempts:  # a stamp read in some names only cannot order them: upload order, file time
            a.who.stamp = ""
    attempts = sorted(attempts, key=lambda a: a.order)
    # A learner may upload both notebooks of a module folder (04_distributed and 04b_model_parallel) as two
    # files of one submission: the LMS lists them as two attempts. One that holds only another module's
    # notebook is not an attempt at this one, whatever its time.
    ours = [a for a in attempts if any(c.problem is None and c.ours for c in a.candidates)]
    foreign = [a for a in attempts if ours and a not in ours and a.candidates
               and all(c.problem is None and c.nb is not None and not c.ours for c in a.candidates)]
    attempts = [a for a in attempts if a not in foreign]
    with_work = ours or [a for a in attempts if any(c.problem is None for c in a.candidates)]
    chosen = (with_work or attempts)[-1]
    sub = Submission(student=student, origin=chosen.entry.name, name=chosen.who.name)
    sub.superseded = [a.entry.name for a in attempts if a is not chosen and (a.candidates or a.problems)]
    notes = sub.notes
    if foreign:
        notes.append(f"not graded for {module}: {', '.join(a.entry.name for a in foreign)} (another notebook, "
                     "not this module's)")
    if unread and len(attempts) > 1:
        notes.append(f"time stamp not understood in {', '.join(unread)}: attempts ordered by upload order "
                     "and file time instead (check which attempt is the latest)")
    later = [a for a in attempts if a.order > chosen.order and a is not chosen]
    for a in later:
        why = "; ".join([c.problem for c in a.candidates if c.problem] + a.problems) or "no notebook in it"
        notes.append(f"the later {a.entry.name} could not be graded ({why}): graded the one before")
    if not chosen.candidates:
        sub.problem = "; ".join(chosen.problems) or "no notebook (.ipynb) found"
        return sub
    ranked = sorted(chosen.candidates, key=lambda c: c.rank)
    best = ranked[-1]
    sub.origin = best.label
    others = [c for c in ranked[:-1]]
    if best.note:
        notes.append(f"{best.label}: {best.note}")
    from autograders import settings

    misnamed = [m for m in settings.modules() if m != module and _same_release_name(best.path.name, m)]
    if best.ours and misnamed:
        notes.append(f"{best.label} is named as {misnamed[0]}'s notebook but holds {module}'s exercises: "
                     f"graded as {module}")
    if others:
        def what(c: _Candidate) -> str:
            if c.problem:
                return f"{c.label} ({c.problem})"
            if c.nb is None:
                return f"{c.label} (not a readable notebook)"
            if c.ours and c.answered == 0:
                return f"{c.label} (the untouched release)"
            if not c.ours:
                return f"{c.label} (not this module's)"
            return f"{c.label} ({_answered(c.answered)})"
        notes.append(f"graded {best.label} ({_answered(best.answered)}); not graded: "
                     + ", ".join(what(c) for c in reversed(others)))
    elif best.ours and best.answered == 0 and best.nb is not None:
        notes.append("no exercise answered: every solution cell is as the release hands it out")
    if len(attempts) > 1 and best.ours and best.answered == 0:
        earlier = [a.entry.name for a in attempts if a is not chosen
                   and any(c.answered for c in a.candidates)]
        if earlier:
            notes.append(f"the latest attempt answers nothing; earlier {', '.join(earlier)} did: "
                         "check with the student")
    if best.problem:
        sub.problem = best.problem
        return sub
    if best.nb is None and best.path.stat().st_size > MAX_NOTEBOOK_BYTES:
        sub.problem = (f"not a readable notebook ({best.path.stat().st_size // 2**20} MB that are not "
                       "notebook JSON): save the notebook in Jupyter and submit the .ipynb file again")
        return sub
    sub.notebook = _cleaned_copy(best, student, scratch)
    return sub


def _cleaned_copy(cand: _Candidate, student: str, scratch: Path) -> Path:
    """The notebook to grade, without outputs, in the scratch folder (the raw bytes if not JSON)."""
    folder = scratch / "notebooks" / student
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out = folder / cand.path.name if cand.path.suffix == ".ipynb" else folder / (cand.path.stem + ".ipynb")
    if cand.nb is None:
        shutil.copyfile(cand.path, out)  # notebook_problem says why it cannot be read
    else:
        out.write_text(json.dumps(clear_outputs(cand.nb), indent=1, ensure_ascii=False) + "\n",
                       encoding="utf-8")
    return out


def grade_ids(nb) -> set[str]:
    """The nbgrader ids of a notebook's graded cells (tests and answers)."""
    return {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.cells
            if c.get("metadata", {}).get("nbgrader", {}).get("grade")} - {None}


def notebook_problem(path: Path, module: str | None = None) -> str | None:
    """Why `path` cannot be graded (for `module`, when given) as a notebook, or None when it can.

    The size rule applies to the notebook as given: `collect_submissions` hands over copies with
    their outputs already cleared, so only code, text and pasted images count.
    """
    import nbformat

    from autograders import settings

    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes): save the notebook in Jupyter and submit it again"
    if size > MAX_NOTEBOOK_BYTES:
        return (f"notebook is {size // 2**20} MB even without its outputs, over the "
                f"{MAX_NOTEBOOK_BYTES // 2**20} MB limit: remove large pasted images or data embedded "
                "in cells, save, and submit again")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:  # noqa: BLE001 - any parse failure means "not a notebook"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"not a readable notebook: {first_line[:200]}"
    if not any(c.get("cell_type") == "code" for c in nb.cells):
        return "the notebook has no code cells"
    if module is not None:
        ours = settings.module_grade_ids(module)
        theirs = grade_ids(nb)
        if theirs and not theirs & ours:
            others = [m for m in settings.modules() if m != module and theirs & settings.module_grade_ids(m)]
            which = f"module {others[0]}'s" if others else "another"
            return f"this is {which} notebook, not {module}'s: submit {module}.ipynb"
    return None
