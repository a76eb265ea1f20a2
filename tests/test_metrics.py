import math

import numpy as np
import pytest

from continual import metrics

nan = float("nan")
# Hand-made 3-task matrix (rows: after task i; columns: task j).
R = np.array([
    [0.90, nan, nan],
    [0.70, 0.80, nan],
    [0.60, 0.85, 0.95],
])


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
