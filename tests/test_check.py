"""The learner's self-check command on real copies of module 00: answered, blank, half done, broken."""

import json

import pytest

from autograders import check
from tests.notebooks import reference_answers, submission

MODULE = "00_orientation"
PARAMS_ONLY = ("def model_size_bytes(model):\n"
               "    return sum(p.numel() * p.element_size() for p in model.parameters())")


@pytest.fixture(scope="module")
def half_done(tmp_path_factory):
    path = tmp_path_factory.mktemp("check") / f"{MODULE}.ipynb"
    path.write_text(json.dumps(submission(MODULE, {"median_time": None, "model_size": PARAMS_ONLY})))
    return path


def test_each_test_cell_is_passed_failed_or_unanswered(half_done):
    before = half_done.read_text()
    results = {r.name: r for r in check.run(half_done)}
    assert results["median_time_tests"].outcome == "passed"
    assert results["model_size_params_tests"].outcome == "passed"
    buffers = results["model_size_buffers_tests"]
    assert buffers.outcome == "failed" and "= 64, expected 136" in buffers.message  # the check's own words
    assert results["train_one_epoch_tests"].outcome == "not answered"
    assert half_done.read_text() == before  # the learner's file is untouched


def test_command_exit_status_and_table(tmp_path, capsys):
    done = tmp_path / f"{MODULE}.ipynb"
    done.write_text(json.dumps(submission(MODULE, reference_answers(MODULE))))
    assert check.main([str(done)]) == 0
    printed = capsys.readouterr().out
    assert "4 of 4 test cells pass (6 of 6 points)" in printed and "hidden tests" in printed


def test_unrunnable_input_gets_a_clear_message(tmp_path, capsys):
    assert check.main([str(tmp_path / "missing.ipynb")]) == 2
    assert "no such notebook" in capsys.readouterr().err
    (tmp_path / "bad.ipynb").write_text("{ not json")
    assert check.main([str(tmp_path / "bad.ipynb")]) == 2
    assert "cannot check" in capsys.readouterr().err
