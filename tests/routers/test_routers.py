"""Learned routers on synthetic frozen features: accuracy, rejection, state round trips, errors."""

import numpy as np
import pytest

from continual.errors import ContinualError
from continual.learners import Head
from continual.routers import ClassifierRouter, EntropyRouter, OracleRouter, PrototypeRouter, RouterInputs
from continual.routers.state import load_router, save_router
from continual.run.compat import check as check_compatible
from continual.streams import Split, Stream, Task

DIM, CLASSES = 8, 3


def _world(num_tasks=3, per_class=40, seed=0):
    """Tasks whose texts are keys into a feature table: class c of task t is a Gaussian blob."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(num_tasks, CLASSES, DIM))
    table: dict[str, np.ndarray] = {}

    def split(t, name, n):
        texts, labels = [], []
        for c in range(CLASSES):
            for k in range(n):
                text = f"{t}-{name}-{c}-{k}"
                table[text] = centres[t, c] + rng.normal(0, 1, DIM)
                texts.append(text)
                labels.append(c)
        return Split(tuple(texts), np.array(labels))

    tasks = [
        Task(f"task{t}", tuple("abc"), split(t, "train", per_class), split(t, "val", 20), split(t, "test", 20))
        for t in range(num_tasks)
    ]

    def encode(texts, labels=None):
        feats = np.stack([table[t] for t in texts]).astype(np.float32)
        return RouterInputs(len(texts), lambda pooling, layers: feats, lambda k: np.zeros(len(texts)), labels=labels)

    def far(n=50):  # inputs from nowhere near any class
        key = [f"far-{k}" for k in range(n)]
        for text in key:
            table[text] = rng.normal(0, 1, DIM) + 40.0
        return encode(key)

    return tasks, encode, far


ROUTERS = [
    lambda **kw: PrototypeRouter(**kw),
    lambda **kw: PrototypeRouter(metric="cosine", **kw),
    lambda **kw: PrototypeRouter(metric="euclidean", **kw),
    lambda **kw: ClassifierRouter(pseudo_per_class=50, **kw),
    lambda **kw: ClassifierRouter(pseudo_per_class=0, memory_per_class=10, **kw),
]


def _learn(router, tasks, encode):
    for i, task in enumerate(tasks):
        router.add_task(
            i, task, encode(task.train.texts, task.train.labels), encode(task.validation.texts, task.validation.labels)
        )
    return router


@pytest.mark.parametrize("make", ROUTERS)
def test_feature_routers_find_the_task_and_reload_identically(make, tmp_path):
    tasks, encode, _ = _world()
    router = _learn(make(), tasks, encode)
    texts = [t for task in tasks for t in task.test.texts]
    truth = np.repeat(np.arange(len(tasks)), [len(t.test) for t in tasks])
    routing = router.route(encode(texts))
    assert routing.scores.shape == (len(texts), len(tasks))
    assert np.mean(routing.tasks == truth) > 0.95

    save_router(router, tmp_path, [t.name for t in tasks], "tiny")
    again = make()
    load_router(again, tmp_path, [t.name for t in tasks], "tiny")
    np.testing.assert_array_equal(again.route(encode(texts)).tasks, routing.tasks)


def test_mahalanobis_beats_euclidean_when_one_direction_is_noise():
    """A shared covariance discounts a high-variance nuisance direction; plain distance does not."""
    rng = np.random.default_rng(1)
    table = {}

    def split(t, n, tag):
        texts = []
        for k in range(n):
            x = rng.normal(0, 0.3, 2)
            x[0] += 1.0 * t  # tasks differ a little along axis 0 ...
            x[1] += rng.normal(0, 10)  # ... and axis 1 is large noise
            table[f"{tag}{t}-{k}"] = x
            texts.append(f"{tag}{t}-{k}")
        return Split(tuple(texts), np.zeros(n, dtype=np.int64))

    tasks = [Task(f"t{t}", ("x", "y"), split(t, 200, "tr"), split(t, 10, "va"), split(t, 100, "te")) for t in range(2)]

    def encode(texts, labels=None):
        feats = np.stack([table[t] for t in texts])
        return RouterInputs(len(texts), lambda pooling, layers: feats, lambda k: np.zeros(len(texts)), labels=labels)

    texts = [t for task in tasks for t in task.test.texts]
    truth = np.repeat([0, 1], 100)
    acc = {
        m: np.mean(_learn(PrototypeRouter(metric=m, shrinkage=0.0), tasks, encode).route(encode(texts)).tasks == truth)
        for m in ("mahalanobis", "euclidean")
    }
    assert acc["mahalanobis"] > 0.9 and acc["mahalanobis"] > acc["euclidean"] + 0.2


@pytest.mark.parametrize("make", [ROUTERS[0], ROUTERS[3]])
def test_rejection_keeps_about_accept_rate_of_validation_and_rejects_far_inputs(make):
    tasks, encode, far = _world()
    router = _learn(make(accept_rate=0.9), tasks, encode)
    val = [t for task in tasks for t in task.validation.texts]
    accepted = np.mean(router.route(encode(val)).tasks >= 0)
    assert 0.85 <= accepted <= 0.95
    assert np.mean(router.route(far()).tasks == -1) == 1.0
    assert np.all(_learn(make(), tasks, encode).route(far()).tasks >= 0)  # no accept_rate: never abstains


def test_entropy_router_picks_the_most_certain_head_and_calibrates():
    certainty = {0: np.array([0.9, 0.1, 0.2, 0.05]), 1: np.array([0.2, 0.8, 0.1, 0.06])}
    inputs = RouterInputs(4, lambda pooling, layers: np.zeros((4, 2)), lambda k: certainty[k])
    router = EntropyRouter()
    router.add_task(0, None, None, None)
    router.add_task(1, None, None, None)
    np.testing.assert_array_equal(router.route(inputs).tasks, [0, 1, 0, 1])

    val = {0: np.linspace(0.5, 1.0, 11), 1: np.linspace(0.0, 0.2, 11)}
    task = Task("t", ("a", "b"), Split((), np.zeros(0)), Split(tuple("v" * 11), np.zeros(11)), Split((), np.zeros(0)))
    calibrated = EntropyRouter(accept_rate=0.9)
    for i in range(2):
        calibrated.add_task(i, task, None, RouterInputs(11, lambda pooling, layers: None, lambda k: val[k]))
    assert calibrated.threshold == pytest.approx(0.55)
    np.testing.assert_array_equal(calibrated.route(inputs).tasks, [0, 1, -1, -1])


def test_router_state_checks_router_tasks_and_backbone(tmp_path):
    tasks, encode, _ = _world(2)
    router = _learn(PrototypeRouter(), tasks, encode)
    names = [t.name for t in tasks]
    save_router(router, tmp_path, names, "tiny")
    with pytest.raises(ContinualError, match="backbone=tiny, but this run has backbone=other"):
        load_router(PrototypeRouter(), tmp_path, names, "other")
    with pytest.raises(ContinualError, match="router=PrototypeRouter"):
        load_router(EntropyRouter(), tmp_path, names, "tiny")
    with pytest.raises(ContinualError, match="no router state"):
        load_router(PrototypeRouter(), tmp_path / "empty", names, "tiny")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PrototypeRouter(metric="manhattan"), "router.metric must be one of"),
        (lambda: PrototypeRouter(pooling="max"), "router.pooling"),
        (lambda: PrototypeRouter(accept_rate=1.5), r"router.accept_rate must be in \(0, 1\]"),
        (lambda: ClassifierRouter(pseudo_per_class=0), "nothing to train"),
        (lambda: ClassifierRouter(memory_per_class=-1), "memory_per_class must be a non-negative integer, got -1"),
        (lambda: EntropyRouter(accept_rate=0), "accept_rate"),
    ],
)
def test_bad_router_settings_are_one_clear_error(make, message):
    with pytest.raises(ContinualError, match=message):
        make()


def test_stream_checks_before_training():
    tasks, _, _ = _world(1)
    with pytest.raises(ContinualError, match="at least 2 tasks"):
        check_compatible(Stream("s", tuple(tasks)), PrototypeRouter(), Head.PER_TASK, "learner")
    check_compatible(Stream("s", tuple(tasks)), OracleRouter(), Head.PER_TASK, "learner")  # fine with one task
    no_val = [Task(t.name, t.labels, t.train, Split((), np.zeros(0)), t.test) for t in _world(2)[0]]
    with pytest.raises(ContinualError, match="accept_rate: calibrating rejection needs validation"):
        check_compatible(Stream("s", tuple(no_val)), PrototypeRouter(accept_rate=0.9), Head.PER_TASK, "learner")


def test_class_statistics_scores_tasks_in_one_pass_and_refresh_after_each_task():
    from continual.routers.prototype import ClassStatistics

    rng = np.random.default_rng(0)
    stats = ClassStatistics()
    queries = rng.normal(size=(7, 5))

    def by_loop() -> np.ndarray:
        """The definition: per task, the best of its classes' minus squared Mahalanobis distances."""
        root = stats.precision_root()
        diff = (queries @ root)[:, None, :] - (stats.means @ root)[None, :, :]
        scores = -(diff**2).sum(-1)
        return np.stack([scores[:, stats.class_task == t].max(1) for t in range(num_tasks)], axis=1)

    for num_tasks, num_labels in enumerate((3, 1, 4), start=1):
        labels = np.arange(40) % num_labels
        stats.add(num_tasks - 1, rng.normal(size=(40, 5)) + labels[:, None], labels, num_labels)
        fast = stats.task_scores(stats.class_scores(queries, "mahalanobis"), num_tasks)
        np.testing.assert_allclose(fast, by_loop(), rtol=1e-9, atol=1e-9)
    first_two = stats.task_scores(stats.class_scores(queries, "euclidean"), 2)
    assert first_two.shape == (7, 2)
    stats.class_task = stats.class_task[::-1].copy()
    with pytest.raises(ContinualError, match="not in task order"):
        stats.task_scores(stats.class_scores(queries, "euclidean"), 3)
