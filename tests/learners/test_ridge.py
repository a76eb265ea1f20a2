"""The closed-form baseline: ridge on random features of the frozen backbone, as a learner and as a router."""

import json
import re

import numpy as np
import pytest

from continual.errors import ContinualError
from continual.learners import RidgeConfig, RidgeLearner
from continual.model.training import TrainerConfig
from continual.routers import HeadRouter, RidgeRouter
from continual.routers.ridge import RidgeClassifier, ValidationMemory, search_grid
from continual.run.experiment import RunOptions, run_stream
from continual.streams import DemoStream
from continual.tracking import MemoryTracker

from conftest import demo_task_files, main_in_process, stream_yaml, tiny_overrides


def _blobs(rng, classes, per_class, dim=16, spread=0.3):
    centres = rng.standard_normal((classes, dim)) * 3
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + spread * rng.standard_normal((len(labels), dim)), labels


def test_statistics_added_task_by_task_equal_one_joint_fit():
    """G and C add up: fitting two tasks one after the other gives exactly ridge regression on both at once."""
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 6, 20)
    stepwise = RidgeClassifier(64, seed=3, lambdas=[1.0])
    first = y < 3
    stepwise.add(x[first], y[first], 3)
    stepwise.add(x[~first], y[~first], 3)
    stepwise.fit()
    h = stepwise._project(x)  # the features every input was mapped to (standardised as the first task)
    joint = np.linalg.solve(h.T @ h + np.eye(64), h.T @ np.eye(6)[y])
    np.testing.assert_allclose(stepwise.weights, joint, rtol=1e-4, atol=1e-5)
    assert (stepwise.scores(x).argmax(1) == y).mean() > 0.95


def test_lambda_is_chosen_on_validation_and_the_state_round_trips():
    rng = np.random.default_rng(1)
    x, y = _blobs(rng, 4, 30, spread=1.5)
    ridge = RidgeClassifier(128, seed=0, lambdas=[1e-3, 1.0, 1e6])
    ridge.add(x[::2], y[::2], 4)
    accuracy = ridge.fit(x[1::2], y[1::2])
    assert set(accuracy) == {1e-3, 1.0, 1e6} and ridge.lam == max(accuracy, key=lambda lam: (accuracy[lam], lam))
    again = RidgeClassifier(128, seed=0, lambdas=[1e-3, 1.0, 1e6])
    again.load_state_dict(ridge.state_dict())
    np.testing.assert_array_equal(again.scores(x), ridge.scores(x))  # the projection is redrawn from its seed
    with pytest.raises(ContinualError, match="saved with dim=128, seed=0; this run has dim=64"):
        RidgeClassifier(64).load_state_dict(ridge.state_dict())


def test_later_fits_search_lambda_locally_from_the_last_choice():
    grid = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3]
    scores = dict(zip(grid, [0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.1]))  # best: 10 and 100 tie, the larger wins
    asked: list[float] = []

    def score(lam):
        asked.append(lam)
        return scores[lam]

    assert search_grid(grid, score, None) == scores and len(asked) == 7  # a first fit tries them all
    asked.clear()
    assert search_grid(grid, score, 1e-2) == scores  # climbs from 0.01 to 100 and looks one step past it
    assert asked == [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3]
    asked.clear()
    assert search_grid(grid, score, 100.0) == {10.0: 0.9, 100.0: 0.9, 1e3: 0.1} and len(asked) == 3
    assert search_grid(grid, score, 1e3) == {10.0: 0.9, 100.0: 0.9, 1e3: 0.1}  # at the grid's end: one neighbour

    rng = np.random.default_rng(2)
    x, y = _blobs(rng, 4, 30, spread=1.5)
    ridge = RidgeClassifier(128, seed=0, lambdas=list(reversed(grid)))  # any order: searched ascending
    ridge.add(x[::2], y[::2], 4)
    tried = ridge.fit(x[1::2], y[1::2])
    assert list(tried) == grid and ridge.lam == max(tried, key=lambda lam: (tried[lam], lam))
    ridge.add(x[1::2], y[1::2], 0)
    again = ridge.fit(x[::2], y[::2])
    assert len(again) < len(grid) and ridge.lam == max(again, key=lambda lam: (again[lam], lam))


def test_the_validation_memory_stays_bounded_and_keeps_each_tasks_first_rows():
    rng = np.random.default_rng(2)
    capped, small = ValidationMemory(10, limit=20, seed=1), ValidationMemory(4, seed=1)
    for task in range(5):
        features = rng.standard_normal((30, 8))
        capped.add(task, features, np.arange(30) % 3 + 3 * task)
        small.add(task, features, np.arange(30) % 3 + 3 * task)
    assert len(capped.features) == 20 and np.bincount(capped.tasks).tolist() == [4] * 5
    np.testing.assert_array_equal(capped.features, small.features)  # the first 4 of each task's seeded sample
    np.testing.assert_array_equal(capped.columns, small.columns)
    again = ValidationMemory(10, limit=20, seed=1)
    again.load_state_dict(capped.state_dict())
    again.add(5, rng.standard_normal((30, 8)), np.zeros(30, dtype=np.int64))
    assert np.bincount(again.tasks).tolist() == [3] * 6


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: RidgeConfig(dim=0), "learner.dim must be a positive integer, got 0"),
        (lambda: RidgeConfig(lambdas=[10, -1]), "learner.lambdas must be a positive number, got -1"),
        (lambda: RidgeConfig(lambdas=[]), "learner.lambdas must be a non-empty list"),
        (lambda: RidgeConfig(lambdas=["x"]), "learner.lambdas must be a positive number, got 'x'"),
        (lambda: RidgeRouter(dim=-5), "router.dim must be a positive integer, got -5"),
        (lambda: RidgeRouter(validation_limit=-1), "router.validation_limit must be"),
        (lambda: RidgeRouter(rule="vote"), "router.rule must be one of ['max', 'sum']"),
    ],
)
def test_bad_values_are_one_line(make, message):
    with pytest.raises(ContinualError, match=re.escape(message)):
        make()


def test_the_ridge_learner_runs_both_protocols_saves_and_resumes(tiny_backbone, tmp_path):
    from continual.model.backbone import Backbone

    stream = DemoStream(max_per_class=12).load()
    config = RidgeConfig(dim=256, progress=False)
    learner = RidgeLearner(tiny_backbone, TrainerConfig(), config)
    result = run_stream(stream, learner, HeadRouter(), MemoryTracker(), RunOptions(tmp_path, progress=False))
    R, given = result.state.R, result.state.oracle_R
    assert np.isfinite(R[-1]).all() and np.all(given[-1] >= R[-1] - 1e-12)  # the task given never hurts
    # a random tiny backbone: well above chance (1 in 20 labels without the task, 1 in 5 with it)
    assert result.metrics["avg_acc"] > 0.15 and result.state.oracle_average > 0.4
    assert learner.trained_parameters() == 256 * 20
    restored = RidgeLearner(Backbone.load(tiny_backbone.name), TrainerConfig(), config)
    restored.load(tmp_path / "adapters", stream.tasks)
    assert restored.fingerprints() == learner.fingerprints()
    assert len(learner._memo) == sum(len(t.validation) + len(t.test) for t in stream.tasks)  # not the train texts


def test_remembered_features_stay_bounded_and_equal_computed_ones(tiny_backbone, monkeypatch):
    from continual.learners import ridge as ridge_module
    from continual.learners.base import padded_batches, tokenize

    monkeypatch.setattr(ridge_module, "MEMO_TEXTS", 3)
    learner = RidgeLearner(tiny_backbone, TrainerConfig(), RidgeConfig(dim=64, progress=False))
    texts = ["book a flight", "my card is lost", "what time is it", "set an alarm", "play some jazz"]
    (_, ids, mask), *_ = list(padded_batches(learner, tokenize(learner, texts)))
    first, again = learner._frozen(ids, mask), learner._frozen(ids, mask)
    assert len(learner._memo) == 3
    np.testing.assert_allclose(again, first, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(learner._frozen(ids, mask, remember=False), first, rtol=1e-5, atol=1e-6)


def test_the_ridge_router_routes_adapters_and_reloads_identically(tiny_backbone, tmp_path):
    from continual.adapters import BottleneckConfig
    from continual.learners import AdapterPerTask, AdapterPerTaskConfig
    from continual.routers.state import load_router, save_router

    stream = DemoStream(max_per_class=12).load()
    learner = AdapterPerTask(
        tiny_backbone, BottleneckConfig(bottleneck_dim=4), TrainerConfig(epochs=1), AdapterPerTaskConfig(progress=False)
    )
    router = RidgeRouter(dim=256, accept_rate=0.9)
    result = run_stream(stream, learner, router, MemoryTracker(), RunOptions(tmp_path, progress=False))
    assert result.state.router_accuracy > 0.3  # a random tiny backbone: above chance (1 in 4), rejections included
    again = RidgeRouter(dim=256, accept_rate=0.9)
    load_router(again, tmp_path, stream.task_names, tiny_backbone.name)
    features = np.random.default_rng(0).standard_normal((5, router.ridge.input_dim))
    np.testing.assert_array_equal(again.ridge.scores(features), router.ridge.scores(features))
    assert again.threshold == router.threshold
    save_router(again, tmp_path / "copy", stream.task_names, tiny_backbone.name)


@pytest.mark.parametrize("method", [("+method=ridge", "learner.dim=64"), ("+method=adapters_ridge", "router.dim=64")])
def test_the_ridge_methods_run_predict_and_extend_through_the_command(
    tmp_path, tiny_model_dir, monkeypatch, capsys, method
):
    """The ridge learner, and adapters routed by the ridge router: a run, ``predict`` from its folder, and
    ``extend`` by a task (the ridge's statistics grow by its classes)."""
    conf = stream_yaml(tmp_path / "conf", demo_task_files(tmp_path, ("banking", "travel")), max_per_class=8)
    stream_yaml(conf, demo_task_files(tmp_path, ("cooking",)), name="more", max_per_class=8)
    run = tmp_path / "run"
    overrides = tiny_overrides(tmp_path, tiny_model_dir, *method, f"hydra.run.dir={run}")
    proc = main_in_process(monkeypatch, capsys, "--config-dir", conf, "stream=two_tasks", *overrides)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = main_in_process(monkeypatch, capsys, "predict", run, "--text", "book a flight to paris", "--no-progress")
    assert proc.returncode == 0 and '"task"' in proc.stdout, proc.stderr[-2000:]
    ext = tmp_path / "ext"
    proc = main_in_process(monkeypatch, capsys, "extend", run, "stream=more", "--config-dir", conf, "--output", ext)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((ext / "results.json").read_text())
    assert results["task_names"] == ["banking", "travel", "cooking"] and np.isfinite(results["R"][2]).all()
