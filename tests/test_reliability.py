"""course.reliability: checkpoints, restarts, silent errors, stragglers (06_reliability)."""

import io
import linecache
import math
import os
import subprocess
import sys
import tempfile
import time
from unittest import mock

import nbformat
import numpy as np
import psutil
import pytest
import torch
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from course import reliability as rel
from course.bench import limit_threads
from course.checks import yours_or_reference
from course.data import load_digit_splits
from course.launch import WorkerError, launch
from course.models import digit_mlp
from course.training import accuracy
from tests.notebooks import solution_path


def test_table5_counts_add_up_to_the_unexpected_interruptions():
    assert sum(count for _, _, count in rel.LLAMA3_TABLE5) == rel.LLAMA3["unexpected"] == 419
    gpu = sum(count for _, category, count in rel.LLAMA3_TABLE5 if category == "GPU")
    assert gpu == 268  # the paper's "58.7 %" for GPU issues adds its misprinted 30.1 % for 148 faulty GPUs


def test_failure_arithmetic_the_renewal_model_and_the_simulation():
    mtbf = rel.LLAMA3["days"] * 24 / rel.LLAMA3["unexpected"] * rel.HOUR
    assert rel.job_mtbf(mtbf * 16_384, 16_384) == pytest.approx(mtbf)
    best = rel.young_daly_interval(60, mtbf)
    assert best / 60 == pytest.approx(19.3, abs=0.1)  # the research notes' worked example
    taus = best * np.array([0.1, 0.5, 1.0, 2.0, 10.0])
    simulated = [np.mean([rel.simulate_waste(t, 60, mtbf, 300, work=300 * mtbf, seed=s) for s in range(2)])
                 for t in taus]
    assert int(np.argmin(simulated)) == 2
    for tau, sim in zip(taus, simulated, strict=True):  # the renewal model is exact for the simulated job
        assert sim == pytest.approx(rel.renewal_waste(tau, 60, mtbf, 300), abs=0.03)

    def gap(tau):
        return rel.expected_waste(tau, 60, mtbf, 300) - rel.renewal_waste(tau, 60, mtbf, 300)

    assert abs(gap(best)) < 0.01  # the first-order formula holds near the optimum only
    assert gap(best / 10) > 0.10 and gap(3 * rel.HOUR) > 0.05
    assert rel.renewal_waste(3 * rel.HOUR, 60, mtbf, 300) == pytest.approx(0.43, abs=0.01)
    with pytest.raises(ValueError):
        rel.young_daly_interval(0, mtbf)
    with pytest.raises(ValueError):
        rel.renewal_waste(0, 60, mtbf)


def test_a_complete_checkpoint_resumes_bit_for_bit_and_each_missing_piece_shows():
    whole, resumed = rel.resumed_losses(rel.make_checkpoint, rel.restore_checkpoint, 60, 23)
    assert whole == resumed

    def without_scheduler(run, checkpoint):
        rel.restore_checkpoint(run, {**checkpoint, "scheduler": run.scheduler.state_dict()})

    def without_numpy(run, checkpoint):
        state = run.np_rng.bit_generator.state
        rel.restore_checkpoint(run, checkpoint)
        run.np_rng.bit_generator.state = state

    for broken in (without_scheduler, without_numpy):
        assert rel.resumed_losses(rel.make_checkpoint, broken, 60, 23)[1] != whole, broken.__name__


def test_checkpoint_files_are_atomic_verified_and_pruned(tmp_path):
    for step in (1, 2, 3, 4):
        rel.save_checkpoint({"w": torch.full((5,), float(step))}, tmp_path, step, keep=2)
    assert [p.name for p in rel.checkpoints(tmp_path)] == ["ckpt-00000003.pt", "ckpt-00000004.pt"]
    with mock.patch("os.replace", side_effect=OSError("crash before the rename")), pytest.raises(OSError):
        rel.save_checkpoint({"w": torch.zeros(5)}, tmp_path, 5)
    assert rel.load_latest(tmp_path)[0] == 4  # the half-written .tmp is not a checkpoint
    rel.damage(rel.checkpoint_path(tmp_path, 4), "flip")
    messages = []
    step, state = rel.load_latest(tmp_path, log=messages.append)
    assert step == 3 and torch.equal(state["w"], torch.full((5,), 3.0))
    assert "ckpt-00000004.pt" in messages[0] and "checksum" in messages[0]
    rel.damage(rel.checkpoint_path(tmp_path, 3), "truncate")
    assert rel.load_latest(tmp_path, log=messages.append) is None
    with pytest.raises(rel.CorruptCheckpoint, match="no checksum header"):
        (tmp_path / "x.pt").write_bytes(b"")
        rel.read_checkpoint(tmp_path / "x.pt")
    assert rel.load_latest(tmp_path / "missing") is None


def test_flipped_tensor_bytes_load_silently_without_the_checksum(tmp_path):
    """Why the checksum exists: torch.load itself accepts a file with a flipped bit in tensor data."""
    path = rel.save_checkpoint({"w": torch.randn(2000)}, tmp_path, 1)
    rel.damage(path, "flip")
    payload = path.read_bytes().partition(b"\n")[2]
    torch.load(io.BytesIO(payload), weights_only=True)  # no error
    with pytest.raises(rel.CorruptCheckpoint):
        rel.read_checkpoint(path)


def test_a_killed_training_process_restarts_from_its_checkpoint(tmp_path):
    log, folder = tmp_path / "log.txt", tmp_path / "ckpt"

    def start(attempt):
        proc = rel.start_training(folder, 60, 10, log, step_delay=0.02)
        if attempt == 0:
            rel.kill_at_step(proc, log, 25)
        return proc

    assert rel.supervise(start) == [-9, 0]
    killed, resumed = rel.read_log(log)
    assert killed[-1][0] >= 25 and resumed[0][0] == 21  # resumed after the step-20 checkpoint
    with limit_threads(1):
        run = rel.TrainingRun(0)
        uninterrupted = [run.train_step() for _ in range(60)]
    assert all(uninterrupted[s - 1] == loss for s, loss in killed + resumed)
    assert not psutil.Process().children(recursive=True)


def test_supervise_gives_up_and_reports_the_codes():
    def start(attempt):
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    with pytest.raises(RuntimeError, match=r"exit codes \[3, 3\]"):
        rel.supervise(start, max_restarts=1)


def test_supervise_kills_a_hung_process_at_its_timeout():
    procs = []

    def start(attempt):
        procs.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]))
        return procs[-1]

    began = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        rel.supervise(start, timeout=0.5)
    assert time.monotonic() - began < 10
    assert len(procs) == 1 and procs[0].poll() is not None  # killed, not restarted


def test_an_exception_in_notebook_code_inside_the_trainer_comes_back_with_its_traceback(tmp_path):
    """A function defined in a notebook, shipped to the training process, raises there: the
    notebook gets TrainingProcessError with the traceback and the failing source line."""
    source = ("def make_checkpoint(run):\n"
              "    state = {'step': run.step}\n"
              "    return {**state, 'rng': state['rng']}  # the learner's bug\n")
    cell = "/tmp/ipykernel_0/cell-1.py"  # what IPython names a cell; it exists only in linecache
    linecache.cache[cell] = (len(source), None, source.splitlines(True), cell)
    namespace = {"__name__": "__main__"}
    exec(compile(source, cell, "exec"), namespace)
    make = yours_or_reference(namespace["make_checkpoint"], rel.make_checkpoint, "make_checkpoint")
    log = tmp_path / "log.txt"
    with pytest.raises(rel.TrainingProcessError) as err, rel.crash_report(log):
        rel.supervise(lambda attempt: rel.start_training(tmp_path / "ckpt", 20, 10, log, 0.0, make=make),
                      max_restarts=1)
    message = str(err.value)
    assert "KeyError: 'rng'" in message and "in make_checkpoint" in message
    assert "return {**state, 'rng': state['rng']}  # the learner's bug" in message
    assert isinstance(err.value.__cause__, RuntimeError)  # supervise gave up: exit codes [1, 1]
    assert not psutil.Process().children(recursive=True)


def test_an_exception_in_a_notebook_elastic_worker_comes_back_with_its_traceback(tmp_path):
    """The other training processes the notebook starts: a torchrun group with --max-restarts, whose
    worker (Exercise 5) raises on every attempt; `launch` names the error and the learner's line."""
    source = ("def elastic_worker(folder, steps, every, crash_at=None):\n"
              "    checkpoint = {'step': 0}\n"
              "    return checkpoint['model']  # the learner's bug\n")
    cell = "/tmp/ipykernel_0/cell-2.py"
    linecache.cache[cell] = (len(source), None, source.splitlines(True), cell)
    namespace = {"__name__": "__main__"}
    exec(compile(source, cell, "exec"), namespace)
    with pytest.raises(WorkerError) as err:  # as the notebook's test calls it: through rel.elastic_cases
        launch(rel.elastic_cases, 2, namespace["elastic_worker"], {"calm": (str(tmp_path / "a"), 10, 5, None)},
               str(tmp_path), quiet=True, max_restarts=1)
    assert "KeyError: 'model'" in str(err.value)
    assert "return checkpoint['model']  # the learner's bug" in str(err.value)


def test_crash_report_passes_other_errors_through(tmp_path):
    with pytest.raises(ValueError), rel.crash_report(tmp_path / "log.txt"):
        raise ValueError("not a training process")


def test_torchrun_restarts_a_crashed_group_and_it_resumes_exactly(tmp_path):
    """Three cases in one launch (as the notebook's test runs them): torchrun restarts the group once per
    crash, each case sees its own attempt number, and every case ends with the uninterrupted weights."""
    cases = {"calm": (str(tmp_path / "a"), 30, 10, None), "crashed": (str(tmp_path / "b"), 30, 10, 13),
             "late": (str(tmp_path / "c"), 30, 5, 22)}
    (tmp_path / "books").mkdir()
    job = launch(rel.elastic_cases, 2, rel.elastic_worker, cases, str(tmp_path / "books"), quiet=True,
                 max_restarts=2)
    calm, crashed, late = [[rank[name] for rank in job.results] for name in cases]
    assert [r["attempt"] for r in calm] == [0, 0]
    assert [r["attempt"] for r in crashed] == [1, 1] and [r["attempt"] for r in late] == [1, 1]
    assert [r["resumed_from"] for r in (*calm, *crashed, *late)] == [0, 0, 10, 10, 20, 20]
    for other in (*crashed, *late):
        for key, value in calm[0]["model"].items():
            assert torch.equal(value, other["model"][key])
    assert os.environ.get("TORCHELASTIC_RESTART_COUNT") is None  # the cases' counts stayed inside the ranks


def test_a_rank_that_dies_without_a_traceback_is_named_first(tmp_path):
    with pytest.raises(WorkerError) as err:
        launch(rel.elastic_worker, 2, str(tmp_path), 30, 10, 3, quiet=True)
    detail = str(err.value).splitlines()[1]
    assert detail.startswith("rank 1: exited with code 13")


def test_guard_and_rollback_survive_damaged_batches(tmp_path):
    test = load_digit_splits().test
    clean = rel.train_with_rollback(100, {}, tmp_path / "clean")
    damaged = rel.train_with_rollback(100, {30: "nan", 60: "scale"}, tmp_path / "damaged", log=lambda m: None)
    assert damaged["skipped"] == [30]
    assert [i for i, _ in damaged["rollbacks"]] == [60]
    assert all(torch.isfinite(p).all() for p in damaged["run"].model.parameters())
    assert accuracy(damaged["run"].model, test) > accuracy(clean["run"].model, test) - 0.03
    assert rel.is_spike([1.0] * 20, math.inf) and not rel.is_spike([1.0] * 5, 100.0)


def test_checksum_sees_one_flipped_bit():
    model = digit_mlp((64,), seed=0)
    before = rel.weights_checksum(model)
    rel.flip_bit(model.net[0].weight, 3, 0)
    assert rel.weights_checksum(model) != before
    rel.flip_bit(model.net[0].weight, 3, 0)
    assert rel.weights_checksum(model) == before
    with pytest.raises(ValueError):
        rel.flip_bit(model.net[0].weight.double(), 0, 1)


def test_a_straggler_sets_everyones_step_time():
    compute = np.array([[1.0, 5.0, 2.0]])
    assert rel.sync_step_times(compute).tolist() == [5.0]
    assert rel.backup_step_times(compute, 2).tolist() == [2.0]
    with pytest.raises(ValueError):
        rel.backup_step_times(compute, 4)
    result = launch(rel.straggler_steps, 2, 10, 1, 0.05, quiet=True)
    fast = result.results[0]
    assert np.mean(fast["compute"]) < 0.04  # rank 0 computes quickly ...
    assert np.mean(fast["step"][1:]) > 0.045  # ... and waits for rank 1 in the all-reduce


def test_the_notebook_leaves_no_process_or_file_when_a_cell_fails(tmp_path):
    """Run 06 up to a cell that fails while a training process runs; stop the kernel as a learner
    would; nothing of the course's may remain."""
    path = solution_path("06_reliability")
    nb = nbformat.read(path, as_version=4)
    at = next(i for i, cell in enumerate(nb.cells) if cell.get("id") == "supervise_tests") + 1
    nb.cells[at:] = [nbformat.v4.new_code_cell(
        "proc = ref.start_training(ref.scratch_folder(), 10**6, 50, ref.scratch_folder() / 'log.txt')\n"
        "raise RuntimeError('a cell fails while a training process runs')")]
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch), "COURSE_FAST": "1"}
    with mock.patch.dict(os.environ, env):
        client = NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        with pytest.raises(CellExecutionError, match="a cell fails"):
            client.execute()
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if any("course.reliability" in part for part in (p.info["cmdline"] or []))]
    gone, alive = psutil.wait_procs(leftovers, timeout=10)
    assert not alive, alive
    assert not [p for p in scratch.iterdir() if p.name.startswith(("course-06-", "torchrun-"))]


def test_a_kernel_killed_outright_leaves_nothing_running_and_its_folders_are_swept(tmp_path):
    """SIGKILL runs no exit handler: the trainer dies with its parent (PDEATHSIG), and the next
    scratch_folder() deletes the dead process's folders."""
    script = ("import sys, time; from course import reliability as rel\n"
              "f = rel.scratch_folder(); p = rel.start_training(f, 10**6, 50, f / 'log.txt')\n"
              "print(p.pid, f, flush=True); time.sleep(60)")
    repo = str(solution_path("06_reliability").parents[2])
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": repo}
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    trainer_pid, folder = parent.stdout.readline().split()
    trainer = psutil.Process(int(trainer_pid))
    parent.kill()
    parent.wait()
    trainer.wait(timeout=10)  # raises TimeoutExpired if it outlived its parent
    assert os.path.isdir(folder)
    with mock.patch.dict(os.environ, {"TMPDIR": str(tmp_path)}):
        tempfile.tempdir = None  # re-read TMPDIR
        try:
            mine = rel.scratch_folder()
        finally:
            tempfile.tempdir = None
    assert not os.path.exists(folder) and mine.exists()


def test_simulate_waste_refuses_a_job_that_would_run_for_hours():
    """06's demo with a job MTBF multiplied by the GPU count instead of divided ran its cell for hours (grading
    waited out the cell limit); the simulation now says why at once."""
    mtbf = rel.LLAMA3["days"] * 24 / rel.LLAMA3["unexpected"] * rel.HOUR
    wrong = mtbf * 16_384 * 16_384  # a device's MTBF times the device count: what the wrong answer gives
    best = rel.young_daly_interval(60, wrong)
    with pytest.raises(ValueError, match="shorter MTBF than one device"):
        rel.simulate_waste(best / 10, 60, wrong, 300, work=300 * wrong)
    assert 0 < rel.simulate_waste(rel.young_daly_interval(60, mtbf) / 10, 60, mtbf, 300, work=300 * mtbf) < 1
