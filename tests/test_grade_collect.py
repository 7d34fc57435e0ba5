"""How the grader finds one notebook per student in what an instructor downloads."""

import json
import os
import zipfile

import pytest

from autograders import collect, grade

MODULE = "00_orientation"
NB = json.dumps({"cells": [{"id": "c1", "cell_type": "code", "source": "1", "metadata": {}, "outputs": [],
                            "execution_count": None}],
                 "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def by_student(subs):
    return {s.student: s for s in subs}


def test_files_folders_and_zips_each_make_one_student(tmp_path):
    src = tmp_path / "in"
    (src / "bob").mkdir(parents=True)
    (src / "ann.ipynb").write_text(NB)
    (src / "bob" / f"{MODULE}.ipynb").write_text(NB)
    (src / "bob" / "scratch.ipynb").write_text(NB)  # the module's own name wins
    with zipfile.ZipFile(src / "cat.zip", "w") as zf:
        zf.writestr("work/whatever.ipynb", NB)
    (src / "notes.pdf").write_text("not a submission")
    (src / ".DS_Store").write_text("")
    subs = by_student(collect.collect_submissions(src, MODULE, tmp_path / "scratch"))
    assert sorted(subs) == ["ann", "bob", "cat"]
    assert all(s.problem is None for s in subs.values())
    assert subs["bob"].notebook.name == f"{MODULE}.ipynb"
    assert json.loads(subs["cat"].notebook.read_text()) == json.loads(NB)


def test_several_notebooks_in_a_folder_are_chosen_by_name_and_time_and_named(tmp_path):
    src = tmp_path / "in"
    (src / "dan").mkdir(parents=True)
    (src / "eve").mkdir()
    (src / "dan" / "a.ipynb").write_text(NB)
    (src / "dan" / "b.ipynb").write_text(NB)
    os.utime(src / "dan" / "a.ipynb", (2e9, 2e9))  # a is newer
    os.utime(src / "dan" / "b.ipynb", (1e9, 1e9))
    subs = by_student(collect.collect_submissions(src, MODULE, tmp_path / "scratch"))
    assert subs["dan"].problem is None and subs["dan"].notebook.name == "a.ipynb"
    assert any("not graded: dan/b.ipynb" in note for note in subs["dan"].notes)
    assert "no notebook" in subs["eve"].problem


def test_lms_export_zip_with_id_regex_and_unsafe_members(tmp_path):
    export = tmp_path / "export.zip"
    with zipfile.ZipFile(export, "w") as zf:
        zf.writestr("smithjane_12345_678_00_orientation.ipynb", NB)
        zf.writestr("doejohn_67890_679_00_orientation.ipynb", NB)
        zf.writestr("../escaped.ipynb", NB)
        zf.writestr("__MACOSX/._smithjane.ipynb", "junk")
    subs = by_student(collect.collect_submissions(export, MODULE, tmp_path / "scratch",
                                                id_regex=r"^[a-z]+_(?P<student>\d+)_"))
    assert sorted(subs) == ["12345", "67890"]
    assert not (tmp_path / "escaped.ipynb").exists()
    assert not list(tmp_path.rglob("escaped.ipynb"))


def test_student_ids_are_made_safe_and_one_students_files_are_one_student(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "José Ñ; rm -rf.ipynb").write_text(NB)
    (src / "kim.ipynb").write_text(NB)
    (src / "kim.zip").write_bytes(b"")
    subs = by_student(collect.collect_submissions(src, MODULE, tmp_path / "scratch"))
    assert sorted(subs) == ["José_Ñ_rm_-rf", "kim"]
    assert subs["José_Ñ_rm_-rf"].name == "José Ñ; rm -rf"
    kim = subs["kim"]  # the readable notebook is graded, the broken zip named
    assert kim.problem is None and kim.notebook.name == "kim.ipynb" and kim.superseded == ["kim.zip"]


def test_bad_and_oversized_archives_are_clear_problems(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    (src / "liz.zip").write_bytes(b"PK\x03\x04 broken")
    with zipfile.ZipFile(src / "max.zip", "w") as zf:
        zf.writestr("a.ipynb", NB * 100)
    monkeypatch.setattr(collect, "MAX_MEMBER_BYTES", 1000)
    subs = by_student(collect.collect_submissions(src, MODULE, tmp_path / "scratch"))
    assert "not a readable zip" in subs["liz"].problem
    assert "unpacks to more than" in subs["max"].problem


def test_missing_or_wrong_input_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        collect.collect_submissions(tmp_path / "nope", MODULE, tmp_path / "s")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SystemExit, match="neither a folder nor a zip"):
        collect.collect_submissions(tmp_path / "file.txt", MODULE, tmp_path / "s")


def test_notebook_problem(tmp_path):
    good, bad, empty = tmp_path / "g.ipynb", tmp_path / "b.ipynb", tmp_path / "e.ipynb"
    good.write_text(NB)
    bad.write_text("{not json")
    empty.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert collect.notebook_problem(good) is None
    assert "not a readable notebook" in collect.notebook_problem(bad)
    assert "no code cells" in collect.notebook_problem(empty)


def test_diagnose_names_the_failure():
    assert "kernel died" in grade.diagnose("[AutogradeApp | ERROR] Kernel died while waiting", 60)
    assert "60 s limit" in grade.diagnose("[ERROR] Timeout waiting for execute reply (60s).", 60)
    assert "boom" in grade.diagnose("[AutogradeApp | ERROR] boom\n[AutogradeApp | ERROR] Please see", 60)


def test_unknown_module_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown module 'nope'"):
        grade.grade("nope", tmp_path, tmp_path / "out")


def test_a_damaged_record_of_an_earlier_run_means_grading_again(tmp_path):
    notebook = tmp_path / "ann.ipynb"
    notebook.write_text(NB)
    run = grade.Run(tmp_path / "out", MODULE, cell_timeout_s=60, student_timeout_s=60)
    sub = collect.Submission(student="ann", origin="ann.ipynb", notebook=notebook)
    kept = grade.Result(student="ann", status="not gradable", detail="no code", max_score=6)
    run.remember(sub, kept)
    assert run.kept(sub).detail == "no code" and run.kept(sub).reused  # same bytes: kept
    notebook.write_text(NB.replace('"1"', '"2"'))
    assert run.kept(sub) is None  # changed notebook: graded again
    (tmp_path / "out" / "results" / "ann.json").write_text("{ damaged")
    assert run.kept(sub) is None
