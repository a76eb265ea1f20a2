import csv

import numpy as np
import pytest

from continual.adapters import BottleneckConfig
from continual.errors import ContinualError
from continual.learners import AdapterPerTask, AdapterPerTaskConfig
from continual.learners.head_init import PROBE_L2S
from continual.model.training import TrainerConfig
from continual.routers import OracleRouter, RouterInputs
from continual.run.experiment import RunOptions, run_stream
from continual.streams import DemoStream
from continual.tracking import MemoryTracker


def test_run_stream_fills_matrix_logs_steps_and_bwt_is_exactly_zero(tiny_backbone, tmp_path):
    stream = DemoStream(max_per_class=20).load()
    learner = AdapterPerTask(
        tiny_backbone,
        BottleneckConfig(bottleneck_dim=8),
        TrainerConfig(epochs=5, batch_size=16, lr=2e-2, log_every=2),
        AdapterPerTaskConfig(progress=False, keep="best"),
    )
    tracker = MemoryTracker()
    result = run_stream(stream, learner, OracleRouter(), tracker, RunOptions(tmp_path, progress=False))

    R, T = result.state.R, 4
    assert R.shape == (T, T)
    assert np.all(np.isnan(R[np.triu_indices(T, 1)]))
    assert np.all(np.isfinite(R[np.tril_indices(T)]))
    # frozen, isolated adapters + oracle: every column is constant below the diagonal
    for j in range(T):
        assert np.all(R[j:, j] == R[j, j])
    assert result.metrics["bwt"] == 0.0 and result.metrics["forgetting"] == 0.0
    # learned something: well above the 20% chance level of 5 labels
    assert result.metrics["avg_acc"] > 0.3

    for j, name in enumerate(stream.task_names):
        history = tracker.metrics[f"acc/{name}"]
        assert [s for s, _ in history] == list(range(j, T))
        assert [v for _, v in history] == list(R[j:, j])
    assert [s for s, _ in tracker.metrics["avg_acc"]] == list(range(T))
    assert [s for s, _ in tracker.metrics["bwt"]] == list(range(1, T))  # undefined after one task
    assert tracker.metrics["router_acc"][-1][1] == 1.0
    assert "train_loss/banking" in tracker.metrics and "trainable_params" in tracker.metrics
    for j, name in enumerate(stream.task_names):  # learner.keep=best: which epoch's weights each task kept
        ((step, kept),) = tracker.metrics[f"kept_epoch/{name}"]
        assert step == j and kept in range(learner.trainer.epochs + 1)
        ((step, l2),) = tracker.metrics[f"probe_l2/{name}"]  # the probe's penalty, chosen on validation
        assert step == j and l2 in PROBE_L2S

    with open(tmp_path / "accuracy_matrix.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == stream.task_names
    assert rows[1][1:] == ["", "", ""] and float(rows[-1][0]) == pytest.approx(R[-1, 0])
    logged = {p.name for p, _ in tracker.artifacts}
    assert {"accuracy_matrix.csv", "accuracy_matrix.png", "accuracy_curves.png", "adapters"} <= logged
    assert len(list((tmp_path / "adapters").glob("*.safetensors"))) == T


def test_oracle_needs_task_ids():
    inputs = RouterInputs(1, lambda pooling, layers: np.zeros((1, 4)), lambda k: np.zeros(1))  # no task ids
    with pytest.raises(ContinualError, match="oracle"):
        OracleRouter().route(inputs)


def _learned(tiny_backbone):
    import torch

    torch.manual_seed(0)
    stream = DemoStream(max_per_class=12).load()
    learner = AdapterPerTask(
        tiny_backbone,
        BottleneckConfig(bottleneck_dim=8),
        TrainerConfig(epochs=2, batch_size=16, lr=2e-2),
        AdapterPerTaskConfig(progress=False),
    )
    return stream, learner


def test_memoised_evaluation_equals_plain_and_runs_each_adapter_once(tiny_backbone, tmp_path):
    from continual.run.evaluation import Evaluator

    stream, learner = _learned(tiny_backbone)
    router = OracleRouter()
    memo, plain = (Evaluator(learner, router, stream.tasks, memoise=m) for m in (True, False))
    computed = 0
    for i, task in enumerate(stream.tasks):
        learner.learn([task])
        router.add_task(i, task, None, None)
        memo.new_step()
        for j in range(i + 1):
            a, b = memo.evaluate(j), plain.evaluate(j)
            assert a.accuracy == b.accuracy and a.router_accuracy == b.router_accuracy
            assert b.computed == len(stream.tasks[j].test)
            computed += a.computed
    assert computed == sum(len(t.test) for t in stream.tasks)  # O(T*N), not O(T^2*N)


def test_memo_is_invalidated_when_an_old_adapter_changes(tiny_backbone):
    import torch

    from continual.run.evaluation import Evaluator

    stream, learner = _learned(tiny_backbone)
    router = OracleRouter()
    learner.learn([stream.tasks[0]])
    router.add_task(0, stream.tasks[0], None, None)
    evaluator = Evaluator(learner, router, stream.tasks)
    evaluator.evaluate(0)
    with torch.no_grad():  # what a learner that updates old parameters would do
        learner.heads[0].weight.mul_(-1.0)
    evaluator.new_step()
    again = evaluator.evaluate(0)
    assert again.computed == len(stream.tasks[0].test)
    assert again.accuracy == Evaluator(learner, router, stream.tasks, memoise=False).evaluate(0).accuracy


def test_an_evaluation_schedule_bounds_what_long_streams_evaluate_and_log(tiny_backbone, tmp_path):
    from continual.run.schedule import EvalConfig
    from continual.streams import ManyTasks

    stream = ManyTasks(num_tasks=7, train_per_label=4, eval_per_label=2).load()
    learner = AdapterPerTask(
        tiny_backbone, BottleneckConfig(bottleneck_dim=4), TrainerConfig(epochs=1), AdapterPerTaskConfig(progress=False)
    )
    schedule = EvalConfig(every=3, tasks="sample:2", seed=1)
    followed = schedule.sample(7).tolist()
    tracker = MemoryTracker()
    result = run_stream(
        stream, learner, OracleRouter(), tracker, RunOptions(tmp_path, progress=False, schedule=schedule)
    )

    evaluated = {i: np.flatnonzero(np.isfinite(result.state.R[i])).tolist() for i in range(7)}
    assert evaluated == {
        0: [],
        1: [],
        2: sorted({*[j for j in followed if j <= 2], 2}),
        3: [],
        4: [],
        5: sorted({*[j for j in followed if j <= 5], 5}),
        6: list(range(7)),  # the last step evaluates every task: ACC is exact
    }
    assert [s for s, _ in tracker.metrics["tasks_learned"]] == list(range(7))  # every step marked as logged
    assert [s for s, _ in tracker.metrics["avg_acc"]] == [2, 5, 6]  # summaries at evaluated steps only
    name = stream.task_names[followed[0]]
    assert [s for s, _ in tracker.metrics[f"acc/{name}"]][-1] == 6 and "acc/client00001" in tracker.metrics
    with np.load(tmp_path / "matrices.npz") as saved:
        np.testing.assert_array_equal(saved["R"], result.state.R)
        assert saved["task_names"].tolist() == stream.task_names
    assert result.metrics["bwt"] == 0.0  # oracle, frozen adapters: on what was evaluated, as on the full matrix


def test_metrics_on_what_was_evaluated():
    from continual import metrics

    nan = np.nan
    R = np.array(
        [
            [nan, nan, nan, nan],
            [0.8, 0.6, nan, nan],  # task 0 first evaluated after task 1
            [nan, nan, nan, nan],  # a step not evaluated
            [0.7, 0.5, 0.9, 0.4],
        ]
    )
    assert metrics.average_accuracy(R) == pytest.approx(0.625)
    assert metrics.learning_accuracy(R) == pytest.approx((0.8 + 0.6 + 0.9 + 0.4) / 4)
    assert metrics.backward_transfer(R) == pytest.approx(((0.7 - 0.8) + (0.5 - 0.6)) / 2)  # task 2: no earlier
    assert metrics.forgetting(R) == pytest.approx(0.1)
    full = np.tril(np.full((3, 3), 0.5)) + np.triu(np.full((3, 3), nan), 1)
    assert metrics.summary(full) == {"avg_acc": 0.5, "bwt": 0.0, "forgetting": 0.0, "learning_acc": 0.5}
