import random

import numpy as np
import pytest
import torch

from course import env


def test_setup_seeds_every_generator_and_is_idempotent(capsys):
    ctx = env.setup("unit", seed=7)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    env.setup("unit", seed=7)
    second = (random.random(), np.random.rand(), torch.rand(1).item())
    assert first == second
    assert ctx.seed == 7 and ctx.module == "unit"
    printed = capsys.readouterr().out
    assert "[unit]" in printed and "torch" in printed and "device=" in printed


def test_setup_picks_cpu_without_cuda(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert env.setup("unit", quiet=True).device == torch.device("cpu")


def test_setup_picks_cuda_when_present(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert env.pick_device() == torch.device("cuda")


def test_course_device_cuda_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        env.pick_device("cuda")


def test_threads_follow_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    try:
        assert env.setup("unit", quiet=True).threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_threads_are_capped_without_omp(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(env, "available_cores", lambda: 64)
    assert env.choose_threads() == env.MAX_THREADS


def test_fast_mode_follows_nbgrader(monkeypatch):
    monkeypatch.delenv("COURSE_FAST", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert env.fast_mode() is False
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert env.fast_mode() is True


def test_setup_applies_plot_defaults():
    import matplotlib as mpl

    mpl.rcParams["axes.grid"] = False
    env.setup("unit", quiet=True)
    assert mpl.rcParams["axes.grid"] is True


def test_environment_report_flags_missing_package(monkeypatch):
    monkeypatch.setattr(env, "REPORTED_PACKAGES", ("torch", "no-such-package-xyz"))
    monkeypatch.setattr(env.package_versions, "__defaults__", (("torch", "no-such-package-xyz"),))
    rows = {name: (ok, detail) for name, ok, detail in env.environment_report()}
    assert rows["torch"][0] is True
    assert rows["no-such-package-xyz"] == (False, "missing")
    assert rows["python"][0] is True


def test_environment_report_flags_small_memory(monkeypatch):
    monkeypatch.setattr(env, "memory_limit_bytes", lambda: 512 * 2**20)
    rows = {name: (ok, detail) for name, ok, detail in env.environment_report()}
    assert rows["memory"][0] is False and "limit" in rows["memory"][1]


def test_requirement_pins_reads_names_as_written_and_bare(tmp_path):
    """The one parser of requirements.txt's pins (tests/test_colab.py compares env.PINNED and the extras with
    it): comments and unpinned lines skipped, extras kept in one key and dropped in the other."""
    path = tmp_path / "requirements.txt"
    path.write_text("# c\ntorch==2.13.0  # cpu\nflwr[simulation]==1.42.0\nTyping_Extensions==4.1\nrich>=13\n")
    pins = env.requirement_pins(path)
    assert pins == {"torch": "2.13.0", "flwr[simulation]": "1.42.0", "flwr": "1.42.0",
                    "typing_extensions": "4.1", "typing-extensions": "4.1"}
