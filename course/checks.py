"""Test helpers for exercise cells: failures that say what is wrong and where to look.

Taught in 00_orientation ("How exercises work"). A failed check raises AssertionError
whose message names the quantity, what was expected, what came back, and a hint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch


class ExerciseError(AssertionError):
    """A check failed. Subclasses AssertionError, so nbgrader and pytest treat it as a failure."""


def _fail(message: str, hint: str | None) -> None:
    raise ExerciseError(message + (f"\nHint: {hint}" if hint else ""))


def expect(condition: bool, message: str, hint: str | None = None) -> None:
    """Fail with `message` (and `hint`) unless `condition` holds."""
    if not condition:
        _fail(message, hint)


def expect_type(value, types: type | tuple[type, ...], name: str, hint: str | None = None) -> None:
    if not isinstance(value, types):
        wanted = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        _fail(f"{name} should be a {wanted}, got {type(value).__name__}: {value!r:.80}", hint)


def expect_close(actual, expected, name: str, rel: float = 1e-6, abs_: float = 1e-9,
                 hint: str | None = None) -> None:
    """Numbers, tensors or NumPy arrays equal within a tolerance; the message shows the worst difference."""
    if isinstance(expected, np.ndarray):  # compare arrays as tensors: same shapes, same messages
        expected = torch.from_numpy(expected)
        if not isinstance(actual, np.ndarray | torch.Tensor):
            _fail(f"{name} should be a NumPy array, got {type(actual).__name__}", hint)
        if isinstance(actual, np.ndarray):
            actual = torch.from_numpy(actual)
    if isinstance(expected, torch.Tensor) or isinstance(actual, torch.Tensor):
        expect_type(actual, torch.Tensor, name, hint)
        expected = torch.as_tensor(expected)
        expect_shape(actual, tuple(expected.shape), name, hint)
        actual_f, expected_f = actual.detach().double().cpu(), expected.detach().double().cpu()
        if not torch.allclose(actual_f, expected_f, rtol=rel, atol=abs_, equal_nan=False):
            bad = torch.isnan(actual_f) & ~torch.isnan(expected_f)
            if bad.any():  # a NaN has no "largest difference": name where it is
                where = tuple(int(i) for i in torch.nonzero(bad)[0])
                _fail(f"{name} holds NaN (not a number) in {int(bad.sum())} of {bad.numel()} entries, first at "
                      f"index {where} (expected {expected_f[where].item():.6g})", hint)
            diff = (actual_f - expected_f).abs().nan_to_num(nan=float("inf"))
            where = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
            _fail(f"{name} differs from the expected tensor: largest difference "
                  f"{diff.max().item():.3g} at index {where} "
                  f"(got {actual_f[where].item():.6g}, expected {expected_f[where].item():.6g})", hint)
        return
    try:
        actual_f = float(actual)
    except (TypeError, ValueError):
        _fail(f"{name} should be a number, got {type(actual).__name__}: {actual!r:.80}", hint)
    if math.isnan(actual_f) or not math.isclose(actual_f, float(expected), rel_tol=rel, abs_tol=abs_):
        _fail(f"{name} = {actual_f:.6g}, expected {float(expected):.6g}", hint)


def expect_equal(actual, expected, name: str, hint: str | None = None) -> None:
    if actual != expected:
        _fail(f"{name} = {actual!r:.120}, expected {expected!r:.120}", hint)


def expect_shape(tensor: torch.Tensor, shape: tuple[int, ...], name: str,
                 hint: str | None = None) -> None:
    expect_type(tensor, torch.Tensor, name, hint)
    if tuple(tensor.shape) != tuple(shape):
        _fail(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}", hint)


def expect_in_range(value, low: float, high: float, name: str, hint: str | None = None) -> None:
    expect_type(value, (int, float), name, hint)
    if not (low <= value <= high):
        _fail(f"{name} = {value:.6g}, expected between {low:.6g} and {high:.6g}", hint)


def expect_raises(fn, exception: type[BaseException], name: str, hint: str | None = None) -> None:
    """`fn()` must raise `exception` (a clear error beats a wrong answer or a crash elsewhere)."""
    try:
        fn()
    except exception:
        return
    except Exception as other:  # noqa: BLE001 - report what came instead
        _fail(f"{name} raised {type(other).__name__}: {other}, expected {exception.__name__}", hint)
    _fail(f"{name} returned normally, expected it to raise {exception.__name__}", hint)


def passed(exercise: str) -> None:
    """The pass line a test cell prints when every visible check held."""
    print(f"✔ {exercise}: all visible checks passed.")


class ScriptedWork:
    """A fake workload and a fake clock: each call of `work` takes the next scripted time.

    Lets a test check a timing function exactly, however it reads the clock:
    with durations [9, 9, 1, 3, 2] and two warm-up calls, the timed calls take 1, 3 and 2 s,
    whatever the real machine does. Use ``work`` as the function and ``clock`` as the clock.
    """

    def __init__(self, durations: Iterable[float]):
        self.durations = list(durations)
        self.calls = 0
        self._now = 100.0

    def clock(self) -> float:
        return self._now

    def work(self) -> None:
        if self.calls >= len(self.durations):
            raise ExerciseError(
                f"the function was called {self.calls + 1} times, more than the "
                f"{len(self.durations)} expected (warm-up + repeats): are extra calls being made?")
        self._now += self.durations[self.calls]
        self.calls += 1


def yours_or_reference(yours, reference, name: str):
    """Call the learner's function; while it is still the exercise stub, use the course's one.

    Demo cells call exercises through this, so a learner who skips an exercise can still run
    the rest of the notebook. Test cells call the learner's function directly, so grading is
    unaffected. Only NotImplementedError (the stub) falls back; a real bug still shows.
    """
    def call(*args, **kwargs):
        try:
            return yours(*args, **kwargs)
        except NotImplementedError:
            if not getattr(call, "warned", False):
                print(f"(your {name} is not written yet: this demo uses the course's version)")
                call.warned = True
            return reference(*args, **kwargs)

    return call
