"""The lab hub's collect: nbgrader 0.9.6's default `ExchangeCollect` with the checks the hub needs.

The instructor's nbgrader (formgrader's Collect and ``nbgrader collect``) uses it through
``c.ExchangeFactory.collect = "autograders.hub.exchange.HubCollect"`` (autograders/hub, INSTRUCTOR_CONFIG).
nbgrader's own collect trusts the inbound folder, which every learner may write into:

- a learner may submit under another learner's name (``nbgrader submit --student B``); nbgrader only logs
  "cheating attempt?" and the newest entry wins. Here an entry, and everything in it, must belong to the Unix
  account it names; any other is dropped with an error naming both, *before* the newest per student is chosen,
  so the student's own newest submission is the one collected;
- the size limits are the learner's own client's; one oversized or unreadable entry made nbgrader's collect
  raise for every student after it, after deleting that learner's earlier collected copy. Here an entry over
  the course's ``CourseDirectory.max_dir_size`` (kB; nbgrader's default 100000, 100 MB, counted as nbgrader
  counts it: every regular file) or ``max_files`` entries, or one holding a symlink, a FIFO, a device or
  anything unreadable, is skipped with an error naming it (and its size); the student's next newest entry is
  taken instead, and a copy already collected is replaced only once the new one is complete;
- an entry without a readable ``timestamp.txt`` (nbgrader's submit writes it after copying the files, so a
  submit that failed part way leaves none) was collected and graded, though the learner never saw it
  submitted, and then stopped ``release_feedback`` for every later student. Here it is skipped, named.

The hub's release of feedback (``HubReleaseFeedback``, ``c.ExchangeFactory.release_feedback``): nbgrader's own
released nothing to a learner whose submission could not be autograded (a broken file, another module's
notebook, a kernel that died), so all they saw was "Could not find feedback"; and one student's missing
``timestamp.txt`` stopped the release for every student after them. Here each such learner gets a page saying
their submission could not be graded and why (autograders/collect.py's ``notebook_problem``), released as
nbgrader releases any feedback; and one student's error is logged, naming them, and the others still released.

Files are opened without following symlinks and their owner and size are checked on the open file, so a
learner who changes their entry during the collect gets it refused, never a file of the instructor's copied.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import html
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.exchange.default.collect import ExchangeCollect, groupby
from nbgrader.exchange.default.release_feedback import ExchangeReleaseFeedback
from nbgrader.utils import notebook_hash, parse_utc
from traitlets import Integer

CHUNK = 1 << 20


class Refused(Exception):
    """An inbound entry that is not collected; the message says why."""


class HubCollect(ExchangeCollect):
    max_files = Integer(
        10000, help="Most files and folders one submission may hold; a larger one is not collected."
    ).tag(config=True)

    @property
    def max_bytes(self) -> int:
        return 1000 * self.coursedir.max_dir_size

    def init_src(self):
        if self.coursedir.course_id == "":
            self.fail("No course id specified. Re-run with --course flag.")
        self.course_path = os.path.join(self.root, self.coursedir.course_id)
        self.inbound_path = os.path.join(self.course_path, "inbound")
        if not os.path.isdir(self.inbound_path):
            self.fail(f"Course not found: {self.inbound_path}")
        if not os.access(self.inbound_path, os.R_OK | os.X_OK):
            self.fail(f"You don't have read permissions for the directory: {self.inbound_path}")
        student = self.coursedir.student_id or "*"
        prefix = f"+{self.coursedir.assignment_id}+"
        names = [
            n
            for n in os.listdir(self.inbound_path)
            if prefix in n and fnmatch.fnmatchcase(n, f"{student}+{self.coursedir.assignment_id}+*")
        ]
        self.refused = []
        records = []
        for name in names:  # a learner may drop any name into inbound: one bad name must not stop the collect
            try:
                records.append(self._path_to_record(name))
            except Exception as error:  # noqa: BLE001  nbgrader's parse_utc raises what dateutil raises
                self._refuse(name, f"its name holds no submission time ({error})")
        with Gradebook(self.coursedir.db_url, self.coursedir.course_id) as gb:
            try:
                self.duedate = gb.find_assignment(self.coursedir.assignment_id).duedate
            except MissingEntry:
                self.duedate = None
        self.src_records = []
        for username, group in groupby(records, lambda r: r["username"]).items():
            newest = self._sort_by_timestamp(group)
            if self.duedate is not None and self.before_duedate:
                newest = [r for r in newest if r["timestamp"] <= self.duedate] + [
                    r for r in newest if r["timestamp"] > self.duedate
                ]
            for record in newest:  # the newest entry that passes: forged or broken ones never win
                try:
                    self._walk(os.path.join(self.inbound_path, record["filename"]), username)
                except Refused as why:
                    self._refuse(record["filename"], str(why))
                    continue
                self.src_records.append(record)
                break

    def _refuse(self, entry: str, why: str) -> None:
        self.refused.append((entry, why))
        self.log.error("Not collected: %s: %s", os.path.join(self.inbound_path, entry), why)

    def copy_files(self):
        assignment = self.coursedir.assignment_id
        if not self.src_records:
            course = self.coursedir.course_id
            self.log.warning(f"No submissions of '{assignment}' for course '{course}' to collect")
        for record in self.src_records:
            student = record["username"]
            src = os.path.join(self.inbound_path, record["filename"])
            dest = self.coursedir.format_path(self.coursedir.submitted_directory, student, assignment)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            updating = os.path.isdir(dest)
            if updating:
                existing = self.coursedir.get_existing_timestamp(dest)
                newer = existing is None or record["timestamp"] > existing
                if not (self.update and newer or self.before_duedate and existing != record["timestamp"]):
                    if self.update:
                        self.log.info(f"No newer submission to collect: {student} {assignment}")
                    else:
                        self.log.info(
                            f"Submission already exists, use --update to update: {student} {assignment}"
                        )
                    continue
            work = tempfile.mkdtemp(prefix=".collecting-", dir=os.path.dirname(dest))
            new, old = os.path.join(work, "new"), os.path.join(work, "old")
            try:
                self._walk(src, student, into=new)  # complete before the earlier copy is touched
                if updating:
                    os.rename(dest, old)
                try:
                    os.rename(new, dest)
                except OSError:
                    if updating:
                        os.rename(old, dest)
                    raise
                verb = "Updating" if updating else "Collecting"
                self.log.info(f"{verb} submission: {student} {assignment}")
            except (Refused, OSError) as why:
                kept = " (the copy collected earlier is kept)" if updating else ""
                self._refuse(record["filename"], f"{why}{kept}")
            finally:
                shutil.rmtree(work, ignore_errors=True)

    # ------------------------------------------------------------------ one entry
    def _walk(self, path: str, student: str, into: str | None = None) -> int:
        """Check the inbound entry `path` (and copy it `into` a new folder, leaving out the course's ignored
        and too large files as nbgrader does); its size in bytes. Raises Refused."""
        try:
            uid = pwd.getpwnam(student).pw_uid
        except KeyError:
            raise Refused(f"it is in the name of {student}, who has no account here") from None
        top = os.path.basename(path)
        state = {"bytes": 0, "files": 0}

        def owner(st, where: str) -> None:
            if st.st_uid != uid:
                try:
                    name = pwd.getpwuid(st.st_uid).pw_name
                except KeyError:
                    name = f"uid {st.st_uid}"
                raise Refused(f"submitted in the name of {student} by {name} ({where} is {name}'s)")

        def count(size: int, where: str) -> None:
            state["files"] += 1
            state["bytes"] += size
            if state["bytes"] > self.max_bytes:
                raise Refused(
                    f"more than {self.max_bytes} bytes (CourseDirectory.max_dir_size = "
                    f"{self.coursedir.max_dir_size} kB), {state['bytes']} bytes by {where}"
                )
            if state["files"] > self.max_files:
                raise Refused(f"more than {self.max_files} files and folders (HubCollect.max_files)")

        def ignored(name: str, size: int | None) -> bool:
            if any(fnmatch.fnmatch(name, glob) for glob in self.coursedir.ignore or []):
                return True
            if size is None:  # a folder
                return False
            include = self.coursedir.include
            if include and not any(fnmatch.fnmatch(name, glob) for glob in include):
                return True
            return bool(self.coursedir.max_file_size) and size > 1000 * self.coursedir.max_file_size

        def folder(fd: int, where: str, target: str | None) -> None:
            owner(os.fstat(fd), where)
            if target is not None:
                os.mkdir(target, 0o700)
            for name in sorted(os.listdir(fd)):
                inner = f"{where}/{name}"
                try:
                    child = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
                except OSError as error:
                    if error.errno == errno.ELOOP:
                        raise Refused(f"{inner} is a symlink") from None
                    raise Refused(f"cannot read {inner}: {error.strerror}") from None
                try:
                    st = os.fstat(child)
                    if stat.S_ISDIR(st.st_mode):
                        count(0, inner)
                        keep = target is not None and not ignored(name, None)
                        folder(child, inner, os.path.join(target, name) if keep else None)
                    elif stat.S_ISREG(st.st_mode):
                        owner(st, inner)
                        count(st.st_size, inner)
                        if inner == f"{top}/timestamp.txt":
                            stamp(child)
                        if target is not None and not ignored(name, st.st_size):
                            copy(child, st, inner, os.path.join(target, name))
                    else:
                        raise Refused(f"{inner} is not a regular file or folder")
                finally:
                    os.close(child)

        def stamp(fd: int) -> None:
            text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            try:
                parse_utc(text)
            except Exception:  # noqa: BLE001  dateutil's errors
                raise Refused(f"its timestamp.txt holds no time ({text[:40]!r})") from None
            state["stamped"] = True

        def copy(fd: int, st, where: str, target: str) -> None:
            left = st.st_size + 1  # a file that grows while it is copied is refused
            out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, (st.st_mode & 0o755) | 0o600)
            try:
                while chunk := os.read(fd, min(CHUNK, left)):
                    left -= len(chunk)
                    if left <= 0:
                        raise Refused(f"{where} grew while it was collected")
                    os.write(out, chunk)
            finally:
                os.close(out)
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))

        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as error:
            symlink = error.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path)
            why = f"{top} is a symlink" if symlink else f"cannot read {top}: {error.strerror}"
            raise Refused(why) from None
        try:
            folder(fd, top, into)
        except OSError as error:
            raise Refused(f"cannot read {top}: {error}") from None
        finally:
            os.close(fd)
        if not state.get("stamped"):  # nbgrader's submit writes it after the files: a submit that failed
            raise Refused("it has no timestamp.txt: a submit that did not finish (nbgrader writes the time "
                          "last); without it formgrader's feedback could not be released")
        return state["bytes"]


PROBLEM_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8">
<title>{assignment}: feedback</title></head><body><h1>{assignment}: {student}</h1>
<p><strong>Your submission could not be graded</strong>: {why}</p>
<p>No score was given for it. Submit the notebook file (.ipynb) of this module, saved from Jupyter, again
(Assignments panel: Submit), and tell your instructor.</p></body></html>
"""


class HubReleaseFeedback(ExchangeReleaseFeedback):
    def copy_files(self):
        self.problem_pages()
        failed = []
        for html_file in sorted(glob.glob(os.path.join(self.src_path, "*.html"))):
            try:
                self._release_one(html_file)
            except Exception as error:  # noqa: BLE001  one student's broken folder must not stop the rest
                failed.append(html_file)
                self.log.error("Feedback NOT released: %s: %s: %s", html_file, type(error).__name__, error)
        if failed:
            self.log.error("%d feedback page(s) not released (above); every other page was", len(failed))

    def _release_one(self, html_file: str) -> None:
        """nbgrader 0.9.6's ExchangeReleaseFeedback.copy_files, for one page."""
        excluded = set(filter(None, (self.coursedir.student_id_exclude or "").split(",")))
        folder, page = os.path.split(html_file)
        student = os.path.basename(os.path.dirname(folder))
        notebook = page[: -len(".html")]
        if student in excluded:
            return
        with open(os.path.join(folder, "timestamp.txt")) as fh:
            timestamp = fh.read()
        with open(os.path.join(folder, "submission_secret.txt")) as fh:
            secret = fh.read()
        checksum = notebook_hash(secret=secret, notebook_id=notebook)
        temporary = os.path.join(self.dest_path, f"{checksum}-tmp.html")
        self.log.info(
            f"Releasing feedback for student '{student}' on assignment "
            f"'{self.coursedir.course_id}/{self.coursedir.assignment_id}/{notebook}' ({timestamp})"
        )
        shutil.copy(html_file, temporary)
        shutil.move(temporary, os.path.join(self.dest_path, f"{checksum}.html"))

    def problem_pages(self) -> None:
        """A feedback page for each collected submission that autograde could not grade (its autograded copy
        is missing: nbgrader removes a failed one), unless one for that very submission is there already."""
        assignment = self.coursedir.assignment_id
        pattern = self.coursedir.format_path(
            self.coursedir.submitted_directory, self.coursedir.student_id or "*", assignment
        )
        released = self.coursedir.format_path(self.coursedir.release_directory, ".", assignment)
        notebooks = sorted(os.path.basename(p)[: -len(".ipynb")] for p in glob.glob(f"{released}/*.ipynb"))
        for submitted in sorted(glob.glob(pattern)):
            student = os.path.basename(os.path.dirname(submitted))
            graded = self.coursedir.format_path(self.coursedir.autograded_directory, student, assignment)
            feedback = self.coursedir.format_path(self.coursedir.feedback_directory, student, assignment)
            try:
                with open(os.path.join(submitted, "timestamp.txt")) as fh:
                    stamp = fh.read()
                with open(os.path.join(submitted, "submission_secret.txt")) as fh:
                    fh.read()
            except OSError:
                continue  # nothing a learner's client could match a page to
            if os.path.isdir(graded) or self._same_submission(feedback, stamp):
                continue
            shutil.rmtree(feedback, ignore_errors=True)  # an older submission's pages: not this one's
            os.makedirs(feedback)
            for name in ("timestamp.txt", "submission_secret.txt"):
                shutil.copyfile(os.path.join(submitted, name), os.path.join(feedback, name))
            for notebook in notebooks:
                why = _why_ungradable(os.path.join(submitted, f"{notebook}.ipynb"), assignment)
                page = PROBLEM_PAGE.format(assignment=html.escape(assignment), student=html.escape(student),
                                           why=html.escape(why))
                with open(os.path.join(feedback, f"{notebook}.html"), "w", encoding="utf-8") as fh:
                    fh.write(page)
            self.log.warning("Not autograded: %s %s: a page saying so goes to them", student, assignment)

    @staticmethod
    def _same_submission(feedback: str, stamp: str) -> bool:
        try:
            with open(os.path.join(feedback, "timestamp.txt")) as fh:
                return fh.read() == stamp and bool(glob.glob(os.path.join(feedback, "*.html")))
        except OSError:
            return False


def _why_ungradable(path: str, module: str) -> str:
    """In one sentence, why the notebook at `path` could not be graded, as `make grade` would say it."""
    if not os.path.isfile(path):
        return f"no notebook named {os.path.basename(path)} was in it"
    try:
        from autograders.collect import notebook_problem

        why = notebook_problem(Path(path), module)
    except Exception:  # noqa: BLE001  the course's checker missing or failing: say what is known
        why = None
    return why or ("the grader could not run it to the end (a cell stopped the kernel, or it ran out of "
                   "time or memory); your instructor sees the details")
