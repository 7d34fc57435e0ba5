"""One running story across the course: each module records what its variants measured, one view shows all.

Every module ends its main comparison with `record(...)`: a variant's accuracy, size, latency and
energy estimate, and where it was measured. The records live in one small JSON file on your
machine (``~/.sysml-course/metrics.json``, or the path in ``COURSE_METRICS``), so the closing view
in the orientation module (`tradeoff_figure`, `summary`) can put the whole course's trade-offs side
by side from whatever modules you have run, and name the ones you have not run yet.
"""

from __future__ import annotations

import json
import math
import os
import platform
import textwrap
from dataclasses import asdict, dataclass, fields
from datetime import date
from pathlib import Path

COURSE_MODULES = ["00_orientation", "01_edge", "02_snn", "03_profiling", "04_distributed", "05_federated",
                  "06_reliability", "07_foundation_models"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


@dataclass(frozen=True)
class Measurement:
    module: str
    variant: str
    accuracy: float | None = None      # fraction correct on the module's test split, 0..1
    size_bytes: int | None = None      # the model as stored
    latency_ms: float | None = None    # one input, median
    energy_nj: float | None = None     # an estimate per inference, from the module's energy model
    train_s: float | None = None       # seconds to train (per epoch where the module says so)
    device: str = ""                   # where it was measured, e.g. "cpu (2 cores)"
    measured_on: str = ""              # the date


def metrics_path() -> Path:
    return Path(os.environ.get("COURSE_METRICS") or Path.home() / ".sysml-course" / "metrics.json")


def _check_number(name: str, value, low: float = 0.0, high: float = math.inf):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or None, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got {value!r}")
    return value


def load(path: Path | None = None) -> list[Measurement]:
    """Every record so far; an unreadable file is set aside (``.corrupt``) and counts as empty."""
    path = Path(path or metrics_path())
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
        known = {f.name for f in fields(Measurement)}
        return [Measurement(**{k: v for k, v in row.items() if k in known}) for row in rows]
    except (ValueError, TypeError) as err:
        aside = path.with_suffix(".corrupt")
        path.replace(aside)
        print(f"course.metrics: {path} was unreadable ({err}); moved it to {aside} and started afresh")
        return []


def record(module: str, variant: str, *, accuracy: float | None = None, size_bytes: int | None = None,
           latency_ms: float | None = None, energy_nj: float | None = None, train_s: float | None = None,
           device: str = "", path: Path | None = None) -> Measurement:
    """Add (or replace) the record of `variant` in `module`, and save it at once."""
    if module not in COURSE_MODULES:
        raise ValueError(f"unknown module {module!r}; one of {', '.join(COURSE_MODULES)}")
    if not isinstance(variant, str) or not variant.strip():
        raise ValueError("variant must be a non-empty name, e.g. 'int8 (torchao)'")
    entry = Measurement(module, variant.strip(), _check_number("accuracy", accuracy, 0.0, 1.0),
                        _check_number("size_bytes", size_bytes), _check_number("latency_ms", latency_ms),
                        _check_number("energy_nj", energy_nj), _check_number("train_s", train_s),
                        device or f"cpu ({platform.machine()})",
                        date.today().isoformat())
    path = Path(path or metrics_path())
    kept = [m for m in load(path) if (m.module, m.variant) != (entry.module, entry.variant)]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps([asdict(m) for m in [*kept, entry]], indent=1))
    partial.replace(path)  # whole file or old file, never half of one
    return entry


def not_run(measurements: list[Measurement]) -> list[str]:
    """Course modules with no record yet."""
    done = {m.module for m in measurements}
    return [m for m in COURSE_MODULES if m not in done]


WIDTH = 100  # characters: a notebook's output area at its default width


def summary(measurements: list[Measurement], width: int = WIDTH) -> str:
    """A table of every record, by module, and a line naming the modules not run yet.

    Every line fits in `width` characters: each module gets a heading line that says where and when it was
    measured, its variants sit below it, and a variant name too long for its column gets a line of its own.
    """
    def show(value, fmt):
        return "—" if value is None else format(value, fmt)

    name_width = 34
    header = (f"{'module, then its variants':<{name_width}} {'acc':>6} {'size (kB)':>10} {'latency (ms)':>12} "
              f"{'energy (nJ)':>11} {'train (s)':>9}")
    lines = [header]
    order = {name: index for index, name in enumerate(COURSE_MODULES)}
    ordered = sorted(measurements, key=lambda m: order.get(m.module, len(order)))  # stable: recorded order
    for module in dict.fromkeys(m.module for m in ordered):
        rows = [m for m in ordered if m.module == module]
        where = "; ".join(dict.fromkeys(f"{m.device}, {m.measured_on}" for m in rows))
        lines.extend(textwrap.wrap(f"{module} (measured on {where})", width, subsequent_indent="    ",
                                   break_long_words=False, break_on_hyphens=False))
        for m in rows:
            size = None if m.size_bytes is None else m.size_bytes / 1000
            numbers = (f"{show(m.accuracy, '.3f'):>6} {show(size, ',.1f'):>10} {show(m.latency_ms, '.3f'):>12} "
                       f"{show(m.energy_nj, ',.1f'):>11} {show(m.train_s, '.2f'):>9}")
            name = f"  {m.variant}"
            if len(name) > name_width:  # the whole name on its own line, the numbers under it
                lines.extend(textwrap.wrap(m.variant, width, initial_indent="  ", subsequent_indent="    "))
                name = ""
            lines.append(f"{name:<{name_width}} {numbers}")
    missing = not_run(measurements)
    if missing:
        lines.extend(textwrap.wrap(f"not run yet: {', '.join(missing)} (run a module to the end and its "
                                   "results appear here)", width, break_long_words=False, break_on_hyphens=False))
    return "\n".join(lines)


def _nice_log_ticks(low: float, high: float) -> tuple[tuple[float, float], list[float]]:
    """Axis limits and labelled ticks for a log axis over [low, high], at 1-2-5 steps (or decades when wide).

    Matplotlib labels only powers of ten on a log axis, so values that span less than a decade get no
    labelled tick at all; this picks ticks that always include at least two inside the limits.
    """
    low, high = min(low, high), max(low, high)
    first, last = math.floor(math.log10(low / 1.25)) - 1, math.ceil(math.log10(high * 1.25)) + 1
    for steps, most in (((1, 1.5, 2, 3, 5, 7), 6), ((1, 2, 5), 9), ((1,), 9)):
        candidates = [round(m * 10.0 ** e, 12 - e) for e in range(first, last + 1) for m in steps]
        lo = max(v for v in candidates if v <= low / 1.1)
        hi = min(v for v in candidates if v >= high * 1.1)
        ticks = [v for v in candidates if lo <= v <= hi]
        if len(ticks) <= most:
            return (lo, hi), ticks
    return (lo, hi), [v for v in ticks if round(math.log10(v)) % 2 == 0]


def _tick_label(value: float, unit: str) -> str:
    """'0.02' for milliseconds; '20 k', '5 M' for bytes (plain numbers, no 10^x to decode)."""
    if unit == "bytes":
        for scale, prefix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
            if value >= scale:
                return f"{value / scale:g}{prefix}"
    return f"{value:g}"


def tradeoff_figure(measurements: list[Measurement]):
    """Accuracy against latency and against size, a colour and marker per module; None if nothing to plot."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from course.plots import OKABE_ITO as PALETTE  # colour-blind-safe, one colour per module

    panels = [("latency_ms", "latency per input (ms, log scale)"),
              ("size_bytes", "model size (bytes: k = 1,000, M = 1,000,000; log scale)")]
    usable = [m for m in measurements if m.accuracy is not None]
    if not usable:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (field, label) in zip(axes, panels, strict=True):
        for index, module in enumerate(COURSE_MODULES):
            points = [m for m in usable if m.module == module and getattr(m, field) is not None]
            if points:
                ax.scatter([getattr(m, field) for m in points], [m.accuracy for m in points], s=60,
                           color=PALETTE[index % len(PALETTE)], marker=MARKERS[index % len(MARKERS)],
                           label=module, edgecolors="white", linewidths=0.5)
        ax.set_xscale("log")
        values = [getattr(m, field) for m in usable if getattr(m, field)]
        if values:  # label ticks however narrow the range (a log axis labels only powers of ten)
            limits, ticks = _nice_log_ticks(min(values), max(values))
            ax.set_xlim(*limits)
            ax.set_xticks(ticks, [_tick_label(v, "bytes" if field == "size_bytes" else "ms") for v in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].set_title("Accuracy against latency, every module you ran")
    axes[1].set_title("Accuracy against size")
    handles, labels = axes[0].get_legend_handles_labels()
    more, more_labels = axes[1].get_legend_handles_labels()
    seen = dict(zip(labels + more_labels, handles + more, strict=True))
    fig.legend(seen.values(), seen.keys(), loc="lower center", ncol=min(len(seen), 7), frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig
