"""course.metrics: the course-wide record of what each module measured, and the closing view."""

import json

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402

from autograders import settings  # noqa: E402
from course import metrics  # noqa: E402


@pytest.fixture
def path(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    monkeypatch.setenv("COURSE_METRICS", str(target))
    return target


def test_records_survive_a_reload_and_a_rerun_replaces_its_own(path):
    metrics.record("01_edge", "fp32", accuracy=0.97, size_bytes=19_000, latency_ms=0.05, energy_nj=12.5)
    metrics.record("01_edge", "int8", accuracy=0.96, size_bytes=5_000, latency_ms=0.04)
    metrics.record("03_profiling", "pipeline", accuracy=0.9, train_s=1.5)
    metrics.record("01_edge", "fp32", accuracy=0.975, size_bytes=19_000, latency_ms=0.05)
    got = {m.variant: m for m in metrics.load()}
    assert set(got) == {"fp32", "int8", "pipeline"} and got["pipeline"].train_s == 1.5
    assert got["fp32"].accuracy == 0.975 and got["fp32"].energy_nj is None
    assert json.loads(path.read_text())[0]["module"] == "01_edge" and got["int8"].measured_on


@pytest.mark.parametrize("kwargs, words", [
    ({"accuracy": 97.0}, "accuracy must lie in [0, 1]"),
    ({"latency_ms": float("nan")}, "latency_ms must be a finite number"),
    ({"size_bytes": -1}, "size_bytes must lie in"),
    ({"energy_nj": "12"}, "energy_nj must be a finite number"),
])
def test_bad_values_are_refused_and_nothing_is_written(path, kwargs, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        metrics.record("00_orientation", "mlp", **kwargs)
    assert not path.exists()


def test_unknown_module_and_empty_variant_are_refused(path):
    with pytest.raises(ValueError, match="unknown module"):
        metrics.record("01-edge", "fp32")
    with pytest.raises(ValueError, match="non-empty"):
        metrics.record("01_edge", "  ")


def test_a_damaged_file_is_set_aside_not_lost(path, capsys):
    path.write_text("{ half a file")
    assert metrics.load() == []
    assert path.with_suffix(".corrupt").read_text() == "{ half a file"
    assert "unreadable" in capsys.readouterr().out
    metrics.record("02_snn", "25 steps", accuracy=0.9)
    assert [m.variant for m in metrics.load()] == ["25 steps"]


def test_the_summary_names_the_modules_not_run_yet(path):
    metrics.record("00_orientation", "MLP hidden 64", accuracy=0.97, size_bytes=19_240, latency_ms=0.026)
    text = metrics.summary(metrics.load())
    assert "MLP hidden 64" in text and "0.970" in text and "19.2" in text
    assert "not run yet: 01_edge, 02_snn" in text
    assert metrics.not_run(metrics.load())[0] == "01_edge"


def test_the_figure_plots_every_module_with_titles_and_labels(path):
    assert metrics.tradeoff_figure([]) is None
    metrics.record("00_orientation", "a", accuracy=0.9, size_bytes=1000, latency_ms=0.1)
    metrics.record("01_edge", "b", accuracy=0.8, size_bytes=500, latency_ms=0.05)
    metrics.record("02_snn", "no accuracy", energy_nj=3.0)
    fig = metrics.tradeoff_figure(metrics.load())
    left, right = fig.axes
    assert left.get_title() and right.get_title() and left.get_xlabel() and left.get_ylabel()
    assert len(left.collections) == 2  # one series per module that has an accuracy
    assert {c.get_label() for c in left.collections} == {"00_orientation", "01_edge"}


def test_the_course_modules_are_the_released_ones():
    assert metrics.COURSE_MODULES == settings.folders()


@pytest.mark.parametrize("low, high", [(0.0174, 0.0193), (0.02, 0.05), (4_840, 76_840), (5.0, 5.0), (1e2, 1e9)])
def test_a_log_axis_always_has_labelled_ticks_around_the_data(path, low, high):
    # A log axis labels only powers of ten: latencies of 0.017-0.019 ms showed no number at all.
    metrics.record("00_orientation", "low", accuracy=0.9, size_bytes=int(low) + 1, latency_ms=low)
    metrics.record("00_orientation", "high", accuracy=0.95, size_bytes=int(high) + 1, latency_ms=high)
    for ax in metrics.tradeoff_figure(metrics.load()).axes:
        first, last = ax.get_xlim()
        labelled = [(tick.get_loc(), tick.label1.get_text()) for tick in ax.xaxis.get_major_ticks()
                    if tick.label1.get_text() and first <= tick.get_loc() <= last]
        assert len(labelled) >= 2, labelled
        data = [c.get_offsets()[:, 0] for c in ax.collections]
        assert first < min(d.min() for d in data) and max(d.max() for d in data) < last


def test_the_summary_fits_a_notebook_output_and_keeps_long_names_whole(path):
    long_name = "int8 weights and activations, torchao dynamic quantization, per-channel scales"
    metrics.record("01_edge", long_name, accuracy=0.95, size_bytes=5_000, latency_ms=0.05, energy_nj=12.0,
                   device="cpu, 2 thread(s), onnxruntime 1.23, Intel(R) Xeon(R) Platinum 8370C CPU @ 2.80GHz")
    metrics.record("07_foundation_models", "TinyLM, decoding with a KV cache", size_bytes=3_300_000,
                   latency_ms=2.5)
    text = metrics.summary(metrics.load())
    assert max(len(line) for line in text.splitlines()) <= metrics.WIDTH
    assert long_name in " ".join(line.strip() for line in text.splitlines())
    assert "07_foundation_models (measured on" in text
    for word in ("06_reliability", "07_foundation_models", "onnxruntime"):  # never cut mid-word
        assert any(word in line for line in text.splitlines())
