import numpy as np
import pytest
import torch

from course import checks


def test_expect_close_numbers_message_names_values_and_hint():
    checks.expect_close(1.0 + 1e-9, 1.0, "x")
    with pytest.raises(AssertionError) as err:
        checks.expect_close(3.7, 3.0, "zero_point", hint="round it")
    text = str(err.value)
    assert "zero_point = 3.7" in text and "expected 3" in text and "Hint: round it" in text


def test_expect_close_rejects_non_numbers_and_nan():
    with pytest.raises(AssertionError, match="should be a number"):
        checks.expect_close("abc", 1.0, "x")
    with pytest.raises(AssertionError):
        checks.expect_close(float("nan"), 1.0, "x")


def test_expect_close_tensors_points_at_worst_element():
    expected = torch.zeros(2, 3)
    got = expected.clone()
    got[1, 2] = 0.5
    with pytest.raises(AssertionError, match=r"largest difference 0.5 at index \(1, 2\)"):
        checks.expect_close(got, expected, "weights")
    with pytest.raises(AssertionError, match=r"has shape \(3, 2\), expected \(2, 3\)"):
        checks.expect_close(torch.zeros(3, 2), expected, "weights")
    checks.expect_close(expected + 1e-12, expected, "weights")


def test_expect_close_names_a_nan_in_a_tensor_instead_of_crashing():
    """A NaN has no largest difference (max of NaN is NaN): the message says where it is, with the hint."""
    with pytest.raises(AssertionError, match=r"(?s)x holds NaN .* 1 of 2 entries, first at index \(0,\).*Hint: no sqrt of"):
        checks.expect_close(torch.tensor([float("nan"), 1.0]), torch.ones(2), "x", hint="no sqrt of a negative")


def test_expect_close_numpy_arrays_are_compared_like_tensors():
    checks.expect_close(np.array([9.0, 3.0]), np.array([9.0, 3.0 + 1e-12]), "step times")
    with pytest.raises(AssertionError, match=r"largest difference 1 at index \(1,\)"):
        checks.expect_close(np.array([9.0, 2.0]), np.array([9.0, 3.0]), "step times")
    with pytest.raises(AssertionError, match="should be a NumPy array, got list"):
        checks.expect_close([9.0, 3.0], np.array([9.0, 3.0]), "step times")


def test_expect_type_equal_shape_range():
    with pytest.raises(AssertionError, match="should be a int, got str"):
        checks.expect_type("3", int, "n")
    with pytest.raises(AssertionError, match="n = 2, expected 3"):
        checks.expect_equal(2, 3, "n")
    with pytest.raises(AssertionError, match="expected between 0 and 1"):
        checks.expect_in_range(1.5, 0, 1, "p")
    with pytest.raises(AssertionError, match="expected \\(4,\\)"):
        checks.expect_shape(torch.zeros(3), (4,), "v")
    checks.expect_in_range(0.5, 0, 1, "p")


def test_expect_raises():
    checks.expect_raises(lambda: int("x"), ValueError, "int('x')")
    with pytest.raises(AssertionError, match="returned normally"):
        checks.expect_raises(lambda: 1, ValueError, "f()")
    with pytest.raises(AssertionError, match="raised KeyError"):
        checks.expect_raises(lambda: {}["k"], ValueError, "f()")


def test_failures_are_assertion_errors_for_nbgrader():
    with pytest.raises(AssertionError):
        checks.expect(False, "nope")
    checks.expect(True, "fine")


def test_scripted_work_advances_clock_per_call_and_refuses_extra_calls():
    work = checks.ScriptedWork([2.0, 3.0])
    t0 = work.clock()
    work.work()
    assert work.clock() - t0 == 2.0
    work.work()
    assert work.clock() - t0 == 5.0 and work.calls == 2
    with pytest.raises(AssertionError, match="called 3 times"):
        work.work()


def test_passed_prints_a_pass_line(capsys):
    checks.passed("median_time")
    assert "✔ median_time" in capsys.readouterr().out


def test_yours_or_reference_falls_back_only_on_the_stub(capsys):
    def stub(x):
        raise NotImplementedError()

    def buggy(x):
        raise ValueError("bug")

    use = checks.yours_or_reference(stub, lambda x: x * 2, "double")
    assert use(3) == 6 and use(4) == 8
    assert capsys.readouterr().out.count("not written yet") == 1
    assert checks.yours_or_reference(lambda x: x + 1, lambda x: 0, "inc")(1) == 2
    with pytest.raises(ValueError, match="bug"):
        checks.yours_or_reference(buggy, lambda x: 0, "f")(1)
