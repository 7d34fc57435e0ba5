"""Real classes' exports: attempts, names in every script, legacy zips, renamed copies, big outputs.

Fast tests read `collect.collect_submissions` on each layout; one slow run grades an export that
holds every kind at once through `grade.grade` (issue 18, cases 2, 3, 5, 9) and grades it again.
"""

import csv
import io
import json
import os
import zipfile
import zlib

import pytest

from autograders import collect, grade
from tests.notebooks import reference_answers, submission

MODULE = "00_orientation"
FULL = 6.0


def nb_bytes(nb) -> bytes:
    return json.dumps(nb).encode()


def blank() -> bytes:
    return nb_bytes(submission(MODULE))


def complete() -> bytes:
    return nb_bytes(submission(MODULE, reference_answers(MODULE)))


def partial() -> bytes:  # median_time only: 2 of 6
    return nb_bytes(submission(MODULE, {"median_time": None}))


def with_outputs(data: bytes, megabytes: int) -> bytes:
    """`data` (a notebook) with `megabytes` of printed output saved in its first code cell."""
    nb = json.loads(data)
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x" * (megabytes * 2**20)}]
    return nb_bytes(nb)


class LegacyInfo(zipfile.ZipInfo):
    """A member whose name is written as raw bytes, without the UTF-8 flag (old Windows tools)."""

    def __init__(self, raw: bytes, extra: bytes = b""):
        super().__init__(raw.decode("cp437"), date_time=(2026, 5, 1, 10, 0, 0))
        self.extra = extra

    def _encodeFilenameFlags(self):
        return self.filename.encode("cp437"), self.flag_bits & ~0x800


def unicode_path_extra(raw: bytes, name: str) -> bytes:
    """Info-ZIP's Unicode Path extra field (0x7075): version 1, CRC of the raw name, UTF-8 name."""
    body = b"\x01" + zlib.crc32(raw).to_bytes(4, "little") + name.encode("utf-8")
    return (0x7075).to_bytes(2, "little") + len(body).to_bytes(2, "little") + body


def write_zip(path, members: dict, stamps: dict | None = None, padding: tuple[str, int] | None = None):
    """A zip of `members` (name or ZipInfo -> bytes), each dated by `stamps` (name -> date_time),
    and `padding` (name, MB) of zeros written in chunks (cheap: it compresses to almost nothing).

    Written in one go: appending would rewrite legacy names with the UTF-8 flag."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        if padding:
            with zf.open(padding[0], "w") as out:
                for _ in range(padding[1]):
                    out.write(bytes(2**20))
        for name, data in members.items():
            if isinstance(name, zipfile.ZipInfo):
                name.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(name, data)
            else:
                info = zipfile.ZipInfo(name, date_time=(stamps or {}).get(name, (2026, 5, 1, 9, 0, 0)))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)


def collect_zip(tmp_path, members, **kwargs):
    export = tmp_path / "export.zip"
    write_zip(export, members, kwargs.pop("stamps", None))
    return {s.student: s for s in collect.collect_submissions(export, MODULE, tmp_path / "scratch", **kwargs)}


def answered(sub) -> bool:
    return json.loads(sub.notebook.read_text()) == json.loads(complete())


# ---------------------------------------------------------------- attempts (case 2)

BB = "Assignment 1_{user}_attempt_{stamp}_00_orientation.ipynb"


@pytest.mark.parametrize("blank_first", [True, False])
def test_blackboard_attempts_grade_the_latest_by_the_stamp_in_the_name(tmp_path, blank_first):
    early, late = (blank(), complete()) if blank_first else (complete(), blank())
    subs = collect_zip(tmp_path, {BB.format(user="amy", stamp="2026-05-01-10-22-33"): early,
                                  BB.format(user="amy", stamp="2026-05-02-08-00-00"): late,
                                  "Assignment 1_amy_attempt_2026-05-02-08-00-00.txt": b"receipt"},
                       # the zip's own dates say the opposite: the name's stamp wins
                       stamps={BB.format(user="amy", stamp="2026-05-01-10-22-33"): (2026, 6, 1, 0, 0, 0)})
    assert list(subs) == ["amy"]
    amy = subs["amy"]
    assert amy.superseded == [BB.format(user="amy", stamp="2026-05-01-10-22-33")]
    assert answered(amy) == blank_first  # the later one is the complete one when the blank came first
    if not blank_first:  # a blank latest attempt is graded, but never silently
        assert any("latest attempt answers nothing" in n for n in amy.notes)


def test_canvas_resubmissions_grade_the_latest_whichever_is_listed_first(tmp_path):
    # "00_orientation-1.ipynb" sorts before "00_orientation.ipynb": the later one is listed first
    subs = collect_zip(tmp_path, {"leeben_20001_300_00_orientation.ipynb": blank(),
                                  "leeben_20001_301_00_orientation-1.ipynb": complete(),
                                  "ngkim_LATE_20002_310_00_orientation.ipynb": partial()})
    assert sorted(subs) == ["20001", "20002"]
    assert subs["20001"].name == "leeben" and answered(subs["20001"])
    assert subs["20001"].superseded == ["leeben_20001_300_00_orientation.ipynb"]
    assert subs["20002"].name == "ngkim" and subs["20002"].superseded == []


def test_moodle_folders_and_brightspace_files_are_recognised(tmp_path):
    subs = collect_zip(tmp_path, {
        "Ana Souza_4711_assignsubmission_file_/00_orientation.ipynb": complete(),
        "Ana Souza_4711_assignsubmission_onlinetext_/onlinetext.html": b"<p>hi</p>",
        "123-456 - Raj Patel - May 1, 2026 1022 AM - 00_orientation.ipynb": blank(),
        "123-789 - Raj Patel - May 2, 2026 922 AM - 00_orientation.ipynb": complete()})
    assert sorted(subs) == ["4711", "Raj_Patel"]
    assert subs["4711"].name == "Ana Souza" and answered(subs["4711"])
    assert answered(subs["Raj_Patel"]) and subs["Raj_Patel"].name == "Raj Patel"
    earlier = "123-456 - Raj Patel - May 1, 2026 1022 AM - 00_orientation.ipynb"
    assert subs["Raj_Patel"].superseded == [earlier]


def test_without_a_stamp_the_files_time_decides_and_ties_go_by_name(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "ann.ipynb").write_bytes(complete())
    with zipfile.ZipFile(src / "ann.zip", "w") as zf:
        zf.writestr("00_orientation.ipynb", blank())
    os.utime(src / "ann.ipynb", (2e9, 2e9))
    os.utime(src / "ann.zip", (1e9, 1e9))
    runs = [collect.collect_submissions(src, MODULE, tmp_path / f"s{i}") for i in range(3)]
    assert all(len(subs) == 1 for subs in runs)
    assert {(subs[0].origin, tuple(subs[0].superseded)) for subs in runs} == {("ann.ipynb", ("ann.zip",))}


def test_id_regex_with_an_attempt_group(tmp_path):
    subs = collect_zip(tmp_path, {"hw0-s123-try2.ipynb": complete(), "hw0-s123-try10.ipynb": blank(),
                                  "hw0-s124-try1.ipynb": blank()},
                       id_regex=r"-(?P<student>s\d+)-try(?P<attempt>\d+)")
    assert sorted(subs) == ["s123", "s124"]
    assert subs["s123"].superseded == ["hw0-s123-try2.ipynb"]  # 10 > 2: numbers compare as numbers


def test_the_documented_canvas_regex_reads_compound_names(tmp_path):
    # the resubmission is listed first; the regex has no attempt group: Canvas's "-1" still orders them
    subs = collect_zip(tmp_path, {"lastname_first_12345_67890_00_orientation.ipynb": blank(),
                                  "lastname_first_12345_67890_00_orientation-1.ipynb": complete()},
                       id_regex=r"_(?P<student>\d+)_\d+_")
    assert list(subs) == ["12345"] and answered(subs["12345"]) and subs["12345"].name == "12345"
    assert subs["12345"].superseded == ["lastname_first_12345_67890_00_orientation.ipynb"]


# ---------------------------------------------------------------- names (case 3)

SCRIPTS = ["Müller", "Möller", "Иван Петров", "王小明", "राहुल शर्मा", "கார்த்திக்"]


def test_names_in_every_script_stay_distinct_readable_ids(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in SCRIPTS:
        (src / f"{name}.ipynb").write_bytes(complete())
    subs = {s.name: s for s in collect.collect_submissions(src, MODULE, tmp_path / "s")}
    assert sorted(subs) == sorted(SCRIPTS)
    ids = {name: s.student for name, s in subs.items()}
    assert ids["Müller"] == "Müller" and ids["Möller"] == "Möller" and ids["王小明"] == "王小明"
    assert ids["Иван Петров"] == "Иван_Петров" and ids["राहुल शर्मा"] == "राहुल_शर्मा"
    assert ids["கார்த்திக்"] == "கார்த்திக்"  # vowel signs and virama kept
    assert all(s.problem is None for s in subs.values())


def test_nfd_and_nfc_spellings_are_one_student_and_collisions_two(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "Mu\u0308ller.ipynb").write_bytes(blank())  # macOS writes names decomposed
    (src / "Müller.zip").write_bytes(b"")
    (src / "Anna Lee.ipynb").write_bytes(complete())
    (src / "Anna_Lee.ipynb").write_bytes(blank())
    (src / "anna lee.ipynb").write_bytes(partial())  # differs by case only: apart on every disk
    subs = collect.collect_submissions(src, MODULE, tmp_path / "s")
    ids = sorted(s.student for s in subs)
    assert "Müller" in ids and len(ids) == 4
    anna = sorted(i for i in ids if i.casefold().startswith("anna_lee-"))
    assert len(anna) == 3 and len({i.casefold() for i in anna}) == 3
    again = sorted(s.student for s in collect.collect_submissions(src, MODULE, tmp_path / "s2"))
    assert again == ids  # stable


@pytest.mark.parametrize("raw, safe", [("a/b\\c", "a_b_c"), ("..hidden", "hidden"), ("x*?[y]", "x_y"),
                                       ("tab\there\nnew", "tab_here_new"), ("-rf", "rf"), ("", "unnamed"),
                                       ("ab\u202ecd", "ab_cd"), ("क्\u200dष", "क्\u200dष")])
def test_safe_id_replaces_only_what_is_unsafe(raw, safe):
    assert collect.safe_id(raw) == safe


def test_ascii_ids_are_reversible():
    for name in ["Möller", "王小明", "राहुल_शर्मा", "plain_ascii", "xn--trick"]:
        made = collect.ascii_id(name)
        assert made.isascii() and collect.from_ascii_id(made) == name


def test_legacy_zip_names_are_recovered_or_reported(tmp_path):
    tamil = "கார்த்திக்.ipynb"
    members = {
        LegacyInfo("Сидоров.ipynb".encode("cp1251")): complete(),
        LegacyInfo("राहुल.ipynb".encode()): complete(),   # UTF-8 without the flag
        LegacyInfo(b"karthik?.ipynb", unicode_path_extra(b"karthik?.ipynb", tamil)): complete(),
    }
    subs = {s.name: s for s in collect.collect_submissions(
        _zip(tmp_path / "a.zip", members), MODULE, tmp_path / "s", zip_encoding="cp1251")}
    assert sorted(subs) == sorted(["Сидоров", "राहुल", "கார்த்திக்"])
    assert all(not s.notes for s in subs.values())
    # without --zip-encoding the cp1251 name cannot be known: graded, and the report says so
    subs = collect.collect_submissions(_zip(tmp_path / "b.zip", members), MODULE, tmp_path / "s2")
    garbled = [s for s in subs if s.name not in ("राहुल", "கார்த்திக்")]
    assert len(garbled) == 1 and garbled[0].problem is None
    assert any("--zip-encoding" in n for n in garbled[0].notes)


def _zip(path, members):
    write_zip(path, members)
    return path


def test_an_unknown_zip_encoding_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown --zip-encoding"):
        collect.collect_submissions(tmp_path, MODULE, tmp_path / "s", zip_encoding="klingon")


# ---------------------------------------------------------------- renamed copies (case 5)

@pytest.mark.parametrize("copy_name", ["00_orientation-Copy1.ipynb", "Copy of 00_orientation.ipynb",
                                       "00_orientation (1).ipynb"])
def test_the_copy_that_differs_from_the_release_is_graded_and_the_original_named(tmp_path, copy_name):
    src = tmp_path / "in" / "zoe"
    src.mkdir(parents=True)
    (src / f"{MODULE}.ipynb").write_bytes(blank())
    (src / copy_name).write_bytes(complete())
    os.utime(src / copy_name, (1e9, 1e9))  # older than the untouched original: still the one
    (zoe,) = collect.collect_submissions(src.parent, MODULE, tmp_path / "s")
    assert zoe.notebook.name == copy_name and answered(zoe)
    assert any(f"zoe/{MODULE}.ipynb (the untouched release)" in n for n in zoe.notes)


def test_of_several_changed_copies_the_most_answered_is_graded(tmp_path):
    members = {"zoe/00_orientation.ipynb": partial(), "zoe/00_orientation-Copy1.ipynb": complete(),
               "zoe/00_orientation-Copy2.ipynb": blank(), "ann/00_orientation.ipynb": blank()}
    subs = collect_zip(tmp_path, members)
    assert answered(subs["zoe"])
    note = " ".join(subs["zoe"].notes)
    assert "3 exercises answered" in note and "1 exercise answered" in note and "untouched release" in note
    assert any("no exercise answered" in n for n in subs["ann"].notes)  # a blank is never silent


# ---------------------------------------------------------------- large outputs (case 9)

def test_outputs_are_cleared_before_the_size_rule(tmp_path, monkeypatch):
    monkeypatch.setattr(collect, "MAX_NOTEBOOK_BYTES", 2**20)
    src = tmp_path / "in"
    src.mkdir()
    (src / "big.ipynb").write_bytes(with_outputs(complete(), 3))
    (big,) = collect.collect_submissions(src, MODULE, tmp_path / "s")
    assert big.notebook.stat().st_size < 2**20 and answered(big)
    assert collect.notebook_problem(big.notebook, MODULE) is None


def test_a_member_over_the_cap_costs_only_its_student(tmp_path, monkeypatch):
    monkeypatch.setattr(collect, "MAX_MEMBER_BYTES", 4 * 2**20)
    big = with_outputs(complete(), 5)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("work/00_orientation.ipynb", big)
    subs = collect_zip(tmp_path, {"big.ipynb": big, "nested.zip": inner.getvalue(),
                                  "ok.ipynb": with_outputs(complete(), 3), "video.mp4": b"\0" * (5 * 2**20)})
    assert sorted(subs) == ["big", "nested", "ok"]
    assert "Clear All Outputs" in subs["big"].problem and "Clear All Outputs" in subs["nested"].problem
    assert subs["ok"].problem is None and answered(subs["ok"])
    assert (tmp_path / "scratch" / "unpacked" / "ok.ipynb").stat().st_size < 2**20  # outputs never on disk


def test_a_lying_header_costs_only_its_member(tmp_path, monkeypatch):
    monkeypatch.setattr(collect, "MAX_MEMBER_BYTES", 2**20)
    export = tmp_path / "bomb.zip"
    write_zip(export, {"bomb.ipynb": b"{" * (8 * 2**20), "ok.ipynb": complete()})
    data = bytearray(export.read_bytes())
    for header, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # bomb's sizes: "10 bytes"
        at = data.find(header)
        data[at + offset: at + offset + 4] = (10).to_bytes(4, "little")
    export.write_bytes(bytes(data))
    subs = {s.student: s for s in collect.collect_submissions(export, MODULE, tmp_path / "s")}
    assert "damaged" in subs["bomb"].problem and answered(subs["ok"])
    assert not any(p.stat().st_size > 2**20 for p in (tmp_path / "s").rglob("*") if p.is_file())


# ---------------------------------------------------------------- other layouts

def test_wrapped_exports_nested_zips_and_odd_files(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("My Work/Module 0/00_orientation.IPYNB", complete())
    crlf = complete().replace(b"\n", b"\r\n").replace(b'", "', b'",\r\n "')
    subs = collect_zip(tmp_path, {
        "course/export/gradebook_0/bom.ipynb": b"\xef\xbb\xbf" + complete(),
        "course/export/gradebook_0/crlf.ipynb": crlf,
        "course/export/gradebook_0/utf16.ipynb": complete().decode().encode("utf-16"),
        "course/export/gradebook_0/nested.zip": inner.getvalue(),
        "course/export/gradebook_0/.ipynb_checkpoints/bom-checkpoint.ipynb": blank(),
        "__MACOSX/course/._bom.ipynb": b"junk"})
    assert sorted(subs) == ["bom", "crlf", "nested", "utf16"]
    assert all(s.problem is None and answered(s) for s in subs.values())
    assert collect.notebook_problem(subs["bom"].notebook, MODULE) is None


def test_a_lone_students_folder_or_zip_is_not_mistaken_for_a_wrapper(tmp_path):
    subs = collect_zip(tmp_path, {"zoe/00_orientation.ipynb": complete()})
    assert list(subs) == ["zoe"]
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("00_orientation.ipynb", blank())
        zf.writestr("00_orientation-Copy1.ipynb", complete())
    (tmp_path / "one").mkdir()
    subs = collect_zip(tmp_path / "one", {"ann.zip": inner.getvalue()})
    assert list(subs) == ["ann"] and answered(subs["ann"])


def test_an_export_zipped_again_is_opened(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("gradebook/ann.ipynb", complete())
        zf.writestr("gradebook/bob.ipynb", blank())
    subs = collect_zip(tmp_path, {"Downloads/submissions.zip": inner.getvalue()})
    assert sorted(subs) == ["ann", "bob"]


def test_grades_csv_and_summary_show_names_and_superseded_attempts(tmp_path):
    from autograders import report

    r = report.Result(student="Иван_Петров-2b8929", status="graded", score=6, max_score=6,
                      name="Иван Петров", superseded=["old.ipynb"])
    report.write_csv(tmp_path / "g.csv", [r])
    (row,) = csv.DictReader(open(tmp_path / "g.csv", encoding="utf-8"))
    assert (row["student"], row["name"], row["superseded"]) == (r.student, r.name, "old.ipynb")
    table = report.summary_table([r])
    assert "name: Иван Петров" in table and "superseded (not graded): old.ipynb" in table


# ---------------------------------------------------------------- through the grader

CLASS = {  # file in the export -> (student id or its prefix, name, expected score)
    BB.format(user="amy", stamp="2026-05-01-10-22-33"): None,
    BB.format(user="amy", stamp="2026-05-02-08-00-00"): ("amy", "amy", FULL),
    "leeben_20001_300_00_orientation.ipynb": None,
    "leeben_20001_301_00_orientation-1.ipynb": ("20001", "leeben", FULL),
    "Müller.ipynb": ("Müller", "Müller", FULL),
    "Möller.ipynb": ("Möller", "Möller", 0.0),
    "Иван Петров.ipynb": ("Иван_Петров-", "Иван Петров", FULL),
    "Иван_Петров.ipynb": ("Иван_Петров-", "Иван_Петров", 2.0),
    "王小明.ipynb": ("王小明", "王小明", FULL),
}
LEGACY = {"राहुल शर्मा.ipynb": ("राहुल_शर्मा", FULL, "utf-8"),      # UTF-8 without the flag
          "Сидоров.ipynb": ("Сидоров", FULL, "cp1251"),             # a Russian Windows zip tool
          "கார்த்திக்.ipynb": ("கார்த்திக்", FULL, "unicode path")}  # Info-ZIP's extra field


def build_class_export(path):
    """Every kind at once, over 200 MB unpacked; attempts listed in both orders."""
    members = {}
    for name, expect in CLASS.items():
        members[name] = partial() if expect and expect[2] == 2.0 else (
            complete() if expect and expect[2] == FULL else blank())
    for name, (_, _, how) in LEGACY.items():
        if how == "unicode path":
            raw = b"karthik.ipynb"
            members[LegacyInfo(raw, unicode_path_extra(raw, name))] = complete()
        else:
            members[LegacyInfo(name.encode(how))] = complete()
    members["zoe/00_orientation.ipynb"] = blank()
    members["zoe/00_orientation-Copy1.ipynb"] = with_outputs(complete(), 30)
    # a recording next to the notebook: 180 MB the grader never needs
    write_zip(path, members, padding=("zoe/lecture.mp4", 180))


@pytest.fixture(scope="module")
def class_graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("class")
    export = base / "export.zip"
    build_class_export(export)
    out = base / "course"
    # honest work only: the default cell limit, so that a busy CI machine cannot fail a cell
    first = grade.grade(MODULE, export, out, cell_timeout_s=60, student_timeout_s=600, jobs=2,
                        zip_encoding="cp1251")
    csv_first = (out / "grades.csv").read_text(encoding="utf-8")
    again = grade.grade(MODULE, export, out, cell_timeout_s=60, student_timeout_s=600, jobs=2,
                        zip_encoding="cp1251")
    return out, {r.student: r for r in first}, {r.student: r for r in again}, csv_first


def _find(results, prefix, name):
    (hit,) = [r for s, r in results.items() if s.startswith(prefix) and r.name == name]
    return hit


@pytest.mark.slow
def test_every_student_of_the_class_is_graded_honestly_once(class_graded):
    out, results, _, _ = class_graded
    expected = [(p, n, s) for p, n, s in filter(None, CLASS.values())]
    expected += [(sid, name[: -len(".ipynb")], s) for name, (sid, s, _) in LEGACY.items()]
    expected += [("zoe", "zoe", FULL)]
    assert len(results) == len(expected)
    for prefix, name, score in expected:
        r = _find(results, prefix, name)
        assert (r.status, r.score, r.max_score) == ("graded", score, FULL), (name, r.detail)
        assert (out / "feedback" / r.student / MODULE / f"{MODULE}.html").exists(), name
        assert (out / "logs" / f"{r.student}.log").exists(), name
    with grade._gradebook(out) as gb:
        for r in results.values():
            assert gb.find_submission_notebook(MODULE, MODULE, r.student).score == r.score, r.student


@pytest.mark.slow
def test_attempts_are_superseded_not_graded(class_graded):
    out, results, _, _ = class_graded
    assert results["amy"].superseded == [BB.format(user="amy", stamp="2026-05-01-10-22-33")]
    assert results["20001"].superseded == ["leeben_20001_300_00_orientation.ipynb"]
    rows = {r["student"]: r for r in csv.DictReader(open(out / "grades.csv", encoding="utf-8"))}
    assert rows["amy"]["superseded"] == BB.format(user="amy", stamp="2026-05-01-10-22-33")
    assert rows["Müller"]["name"] == "Müller" and rows["Möller"]["score"] == "0"
    assert "no exercise answered" in rows["Möller"]["detail"]


@pytest.mark.slow
def test_a_collision_grades_both_and_the_copy_is_named(class_graded):
    _, results, _, _ = class_graded
    ivans = sorted(s for s in results if s.startswith("Иван_Петров-"))
    assert len(ivans) == 2
    zoe = results["zoe"]
    assert "zoe/00_orientation.ipynb (the untouched release)" in zoe.detail
    assert "zoe/00_orientation-Copy1.ipynb" in zoe.detail


@pytest.mark.slow
def test_grading_the_class_again_makes_the_same_choices(class_graded):
    out, first, again, csv_first = class_graded
    assert sorted(first) == sorted(again)
    for student, r in again.items():
        assert (r.score, r.status, r.superseded, r.detail) == (
            first[student].score, first[student].status, first[student].superseded, first[student].detail)
        assert r.reused, student
    assert (out / "grades.csv").read_text(encoding="utf-8") == csv_first


# ---------------------------------------------------------------- no merge without a sign it is one person
# (from a newcomer's review: built-in LMS patterns once merged different students, dropping one's work)

def test_plain_names_with_dates_are_not_taken_for_canvas(tmp_path):
    subs = collect_zip(tmp_path, {"maria_garcia_2026_05_01.ipynb": complete(),
                                  "ahmed_khan_2026_05_01.ipynb": partial()})
    assert len(subs) == 2 and all(not s.superseded for s in subs.values()), subs


def test_blackboard_usernames_with_underscores_stay_apart(tmp_path):
    subs = collect_zip(tmp_path, {BB.format(user="john_smith", stamp="2026-05-01-10-22-33"): complete(),
                                  BB.format(user="jane_smith", stamp="2026-05-01-11-22-33"): blank()})
    assert sorted(subs) == ["jane_smith", "john_smith"] and answered(subs["john_smith"])
    assert subs["jane_smith"].superseded == [] and subs["john_smith"].superseded == []


def test_one_name_under_two_brightspace_numbers_is_graded_apart_and_said(tmp_path):
    subs = collect_zip(tmp_path, {
        "111-222 - Jane Doe - May 1, 2026 1000 AM - 00_orientation.ipynb": complete(),
        "333-444 - Jane Doe - May 1, 2026 1100 AM - 00_orientation.ipynb": partial()})
    assert len(subs) == 2 and all("same name" in " ".join(s.notes) for s in subs.values()), subs


@pytest.mark.parametrize("early, late", [
    ("2026-05-01T09:00:00", "2026-05-01 10:22"),                  # with and without seconds
    ("2026-05-01T10:00:00+02:00", "2026-05-01T09:00:00Z"),        # offsets compared in UTC
    ("2026-05-01T09:00:00.250Z", "2026-05-01T09:00:00.750Z"),     # fractional seconds
    ("1 May 2026", "2 May 2026")])
def test_attempt_stamps_in_other_formats_order_the_attempts(tmp_path, early, late):
    regex = r"-(?P<student>s\d+)-(?P<attempt>.+?)\.ipynb$"
    subs = collect_zip(tmp_path, {f"hw-s1-{late}.ipynb": complete(), f"hw-s1-{early}.ipynb": blank()},
                       id_regex=regex, stamps={f"hw-s1-{early}.ipynb": (2026, 6, 1, 0, 0, 0)})
    assert answered(subs["s1"]) and subs["s1"].superseded == [f"hw-s1-{early}.ipynb"]


def test_a_stamp_that_cannot_be_read_is_said_and_never_ranks_an_attempt_first(tmp_path):
    regex = r"-(?P<student>s\d+)-(?P<attempt>.+?)\.ipynb$"
    subs = collect_zip(tmp_path, {"hw-s1-2026-05-01T09:00:00.ipynb": blank(),
                                  "hw-s1-05-10-2026 11h.ipynb": complete()},
                       id_regex=regex, stamps={"hw-s1-05-10-2026 11h.ipynb": (2026, 6, 1, 0, 0, 0),
                                               "hw-s1-2026-05-01T09:00:00.ipynb": (2026, 5, 1, 0, 0, 0)})
    assert answered(subs["s1"])  # ordered by the files' own times, which the note says
    assert any("time stamp not understood" in note for note in subs["s1"].notes), subs["s1"].notes


# ---------------------------------------------------------------- a module folder of two notebooks

@pytest.mark.parametrize("module", ["04_distributed", "04b_model_parallel"])
def test_a_student_who_hands_in_both_notebooks_of_a_folder_is_graded_on_the_right_one(tmp_path, module):
    """04_distributed/ holds two notebooks, graded apart. A learner who zips the whole folder (with
    every exercise of the other notebook answered) is graded on the notebook of the module asked for."""
    other = next(m for m in ("04_distributed", "04b_model_parallel") if m != module)
    members = {f"zoe/04_distributed/{m}.ipynb": nb_bytes(submission(m, reference_answers(m)))
               for m in (module, other)}
    members["ann/" + f"{other}.ipynb"] = nb_bytes(submission(other, reference_answers(other)))
    export = tmp_path / "export.zip"
    write_zip(export, members)
    subs = {s.student: s for s in collect.collect_submissions(export, module, tmp_path / "scratch")}
    assert subs["zoe"].notebook.name == f"{module}.ipynb" and not subs["zoe"].problem
    assert any("not this module's" in n for n in subs["zoe"].notes)
    problem = collect.notebook_problem(subs["ann"].notebook, module)  # what grading reports for ann
    assert problem == f"this is module {other}'s notebook, not {module}'s: submit {module}.ipynb"


@pytest.mark.parametrize("later", ["04_distributed", "04b_model_parallel"])
def test_both_notebooks_uploaded_as_two_files_of_one_submission_grade_each_module(tmp_path, later):
    """Canvas lists each file of a submission apart (newcomer's review of issue 20): the file of the other
    module is not a later attempt at this one, whichever was uploaded last."""
    first = next(m for m in ("04_distributed", "04b_model_parallel") if m != later)
    members = {f"doehank_12345_67890_{first}.ipynb": nb_bytes(submission(first, reference_answers(first))),
               f"doehank_12345_67891_{later}.ipynb": nb_bytes(submission(later, reference_answers(later)))}
    export = tmp_path / "export.zip"
    write_zip(export, members)
    for module in (first, later):
        (sub,) = collect.collect_submissions(export, module, tmp_path / module)
        assert sub.notebook.name.endswith(f"{module}.ipynb") and not sub.problem, sub
        assert collect.notebook_problem(sub.notebook, module) is None
        assert sub.superseded == []
        assert any("not this module's" in n for n in sub.notes), sub.notes


def test_a_notebook_saved_under_the_other_modules_name_is_graded_with_a_note(tmp_path):
    members = {"frank/04_distributed.ipynb": nb_bytes(submission("04b_model_parallel",
                                                                 reference_answers("04b_model_parallel")))}
    export = tmp_path / "export.zip"
    write_zip(export, members)
    (sub,) = collect.collect_submissions(export, "04b_model_parallel", tmp_path / "s")
    assert not sub.problem
    assert any("named as 04_distributed's notebook but holds 04b_model_parallel's" in n for n in sub.notes)
