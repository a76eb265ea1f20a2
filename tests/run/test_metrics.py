import math

import numpy as np
import pytest

from continual import metrics

nan = float("nan")
# Hand-made 3-task matrix (rows: after task i; columns: task j).
R = np.array(
    [
        [0.90, nan, nan],
        [0.70, 0.80, nan],
        [0.60, 0.85, 0.95],
    ]
)


def test_average_accuracy_is_mean_of_last_row():
    assert metrics.average_accuracy(R) == pytest.approx((0.60 + 0.85 + 0.95) / 3)


def test_learning_accuracy_is_mean_of_diagonal():
    assert metrics.learning_accuracy(R) == pytest.approx((0.90 + 0.80 + 0.95) / 3)


def test_bwt_lopez_paz():
    # ((0.60 - 0.90) + (0.85 - 0.80)) / 2
    assert metrics.backward_transfer(R) == pytest.approx(-0.125)


def test_forgetting_is_max_minus_final_not_first_minus_final():
    # task 0: max(0.90, 0.70) - 0.60 = 0.30; task 1: max(0.80) - 0.85 = -0.05
    assert metrics.forgetting(R) == pytest.approx(0.125)
    # Max-based differs from first-minus-last when a task improves before it drops.
    R2 = np.array([[0.5, nan, nan], [0.9, 0.8, nan], [0.4, 0.8, 0.7]])
    assert metrics.forgetting(R2) == pytest.approx(((0.9 - 0.4) + (0.8 - 0.8)) / 2)


def test_prefix_is_the_matrix_as_it_stood():
    block = metrics.prefix(R, 1)
    assert block.shape == (2, 2)
    assert metrics.average_accuracy(block) == pytest.approx(0.75)
    assert metrics.backward_transfer(block) == pytest.approx(-0.20)


def test_single_task_transfer_metrics_are_undefined():
    one = np.array([[0.7]])
    assert math.isnan(metrics.backward_transfer(one))
    assert math.isnan(metrics.forgetting(one))
    assert metrics.summary(one)["avg_acc"] == pytest.approx(0.7)


def test_frozen_columns_give_zero_bwt_and_forgetting():
    diag = np.array([0.8, 0.9, 0.7])
    frozen = np.where(np.tril(np.ones((3, 3))) > 0, diag[None, :], nan)
    assert metrics.backward_transfer(frozen) == 0.0
    assert metrics.forgetting(frozen) == 0.0


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros((0, 0)), np.zeros(3)])
def test_non_square_matrix_is_rejected(bad):
    with pytest.raises(ValueError, match="square"):
        metrics.average_accuracy(bad)


# Property-based checks over random accuracy matrices (values in [0, 1], nan above the diagonal).
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402


@st.composite
def matrices(draw, min_tasks=2):
    T = draw(st.integers(min_tasks, 8))
    values = draw(arrays(np.float64, (T, T), elements=st.floats(0.0, 1.0, allow_nan=False)))
    return np.where(np.tril(np.ones((T, T))) > 0, values, np.nan)


@settings(max_examples=200, deadline=None)
@given(matrices())
def test_metric_bounds(R):
    # (Relabelling tasks cannot change a metric: the functions take positions only, never names.)
    m = metrics.summary(R)
    assert 0.0 <= m["avg_acc"] <= 1.0 and 0.0 <= m["learning_acc"] <= 1.0
    assert -1.0 <= m["bwt"] <= 1.0 and -1.0 <= m["forgetting"] <= 1.0


@settings(max_examples=200, deadline=None)
@given(matrices())
def test_forgetting_is_at_least_minus_bwt(R):
    # max_l R[l, j] >= R[j, j], so each forgetting term >= the matching -BWT term
    assert metrics.forgetting(R) >= -metrics.backward_transfer(R) - 1e-12


@settings(max_examples=200, deadline=None)
@given(matrices())
def test_bwt_sign_follows_final_versus_just_learned(R):
    T = R.shape[0]
    final_drop = [R[T - 1, j] - R[j, j] for j in range(T - 1)]
    if all(d <= 0 for d in final_drop):
        assert metrics.backward_transfer(R) <= 0
    if all(d >= 0 for d in final_drop):
        assert metrics.backward_transfer(R) >= 0


@settings(max_examples=200, deadline=None)
@given(matrices(), st.floats(-0.5, 0.5, allow_nan=False))
def test_shifting_every_accuracy_shifts_acc_and_keeps_transfer(R, c):
    shifted = R + c
    assert metrics.average_accuracy(shifted) == pytest.approx(metrics.average_accuracy(R) + c, abs=1e-9)
    assert metrics.backward_transfer(shifted) == pytest.approx(metrics.backward_transfer(R), abs=1e-9)
    assert metrics.forgetting(shifted) == pytest.approx(metrics.forgetting(R), abs=1e-9)
