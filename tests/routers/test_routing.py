"""Learned routers inside a run: task-agnostic R, oracle-routed R, router metrics, OOS rejection, memo."""

import csv

import numpy as np
import pytest

from continual.adapters import BottleneckConfig
from continual.learners import AdapterPerTask, AdapterPerTaskConfig
from continual.model.training import TrainerConfig
from continual.routers import EntropyRouter, PrototypeRouter
from continual.routers.state import FILENAME
from continual.run.evaluation import Evaluator, encode_texts, split_inputs
from continual.run.experiment import RunOptions, run_stream
from continual.streams import DemoStream, Stream
from continual.tracking import MemoryTracker

OUT_OF_SCOPE = ("zq zq zq zq", "the the the the the the", "mmm", "quantum chromodynamics lattice")


def _learner(tiny_backbone):
    return AdapterPerTask(
        tiny_backbone,
        BottleneckConfig(bottleneck_dim=8),
        TrainerConfig(epochs=2, batch_size=16, lr=2e-2),
        AdapterPerTaskConfig(progress=False),
    )


def test_learned_router_run_logs_routing_cost_and_rejection(tiny_backbone, tmp_path):
    demo = DemoStream(max_per_class=12).load()
    stream = Stream(demo.name, demo.tasks[:3], OUT_OF_SCOPE)
    tracker = MemoryTracker()
    result = run_stream(
        stream, _learner(tiny_backbone), PrototypeRouter(accept_rate=0.9), tracker, RunOptions(tmp_path, progress=False)
    )
    R, oracle, T = result.state.R, result.state.oracle_R, 3
    low = np.tril_indices(T)
    # correct routed = routed right AND labelled right by that same adapter, so never above the oracle
    assert np.all(R[low] <= oracle[low] + 1e-12) and np.all(result.state.router_R[low] <= 1.0)
    for j, name in enumerate(stream.task_names):
        assert [s for s, _ in tracker.metrics[f"router_acc/{name}"]] == list(range(j, T))
        assert [v for _, v in tracker.metrics[f"oracle_acc/{name}"]] == list(oracle[j:, j])
    assert tracker.metrics["oracle_avg_acc"][-1][1] == pytest.approx(np.mean(oracle[-1]))
    assert 0.0 <= tracker.metrics["oos_recall"][-1][1] <= 1.0
    assert 0.0 < tracker.metrics["rejected_in_scope"][-1][1] < 0.5  # calibrated to accept ~90% of validation

    with open(tmp_path / "router_confusion.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["true_task", *stream.task_names, "rejected"]
    for row, task in zip(rows[1:], stream.tasks):
        assert sum(int(v) for v in row[1:]) == len(task.test)
    assert result.confusion.trace() / result.confusion.sum() == pytest.approx(
        np.mean(result.state.router_R[-1]), abs=0.02
    )
    logged = {p.name for p, _ in tracker.artifacts}
    assert {"router_confusion.csv", "router_confusion.png", "oracle_accuracy_matrix.csv", FILENAME} <= logged


def test_entropy_router_memo_equals_plain_and_runs_each_adapter_once_per_test_set(tiny_backbone):
    stream = DemoStream(max_per_class=12).load()
    learner = _learner(tiny_backbone)
    routers = EntropyRouter(), EntropyRouter()
    memo, plain = (
        Evaluator(learner, routers[0], stream.tasks),
        Evaluator(learner, routers[1], stream.tasks, memoise=False),
    )
    for i, task in enumerate(stream.tasks):
        learner.learn([task])
        for router in routers:
            router.add_task(i, task, split_inputs(learner, task.train), split_inputs(learner, task.validation))
        memo.new_step()
        for j in range(i + 1):
            a, b = memo.evaluate(j), plain.evaluate(j)
            assert (a.accuracy, a.router_accuracy, a.oracle_accuracy) == (
                b.accuracy,
                b.router_accuracy,
                b.oracle_accuracy,
            )
            np.testing.assert_array_equal(a.routes, b.routes)
    # every (test set, adapter) pair ran once: T * N passes, where recomputing would be O(T^2 * N) more
    assert memo.computed == len(stream.tasks) * sum(len(t.test) for t in stream.tasks)
    assert plain.computed > memo.computed


def test_router_layers_out_of_range_is_a_clear_error(tiny_backbone):
    from continual.errors import ContinualError

    learner = _learner(tiny_backbone)
    inputs = encode_texts(learner, ["check my balance"])
    assert inputs.features("mean", (0, 1, 2)).shape == (1, 3 * 32)  # embeddings + both layers of the tiny BERT
    with pytest.raises(ContinualError, match=r"router.layers: \[5\] out of range"):
        inputs.features("mean", (-1, 5))
