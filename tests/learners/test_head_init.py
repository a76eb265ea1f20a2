"""Heads that start from the data: LDA or a logistic probe on the new adapter's (frozen) features."""

import pytest
import torch

from continual.adapters import BottleneckConfig
from continual.errors import ContinualError
from continual.learners import AdapterPerTask, AdapterPerTaskConfig, adapter_per_task
from continual.learners.base import encode, oracle_score, padded_batches
from continual.learners.head_init import PROBE_L2, PROBE_L2S, lda, probe, validated_probe
from continual.model.training import KeepBest, TrainerConfig
from continual.streams import DemoStream, StreamSpec

from conftest import slot_task_files


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian classes in 20 dimensions (fixed centres, noise drawn from ``seed``), correlated noise,
    class 1 twice as frequent."""
    fixed = torch.Generator().manual_seed(0)
    centres, mixing = torch.randn(3, 20, generator=fixed), torch.randn(20, 20, generator=fixed) / 4
    labels = torch.tensor([0, 1, 1, 2] * (n // 4))
    noise = torch.randn(len(labels), 20, generator=torch.Generator().manual_seed(seed))
    return centres[labels] + noise @ mixing, labels


@pytest.mark.parametrize("fit", [lda, probe])
def test_a_fitted_head_separates_held_out_classes(fit):
    weight, bias = fit(*_blobs(200, 1), 3)
    assert weight.shape == (3, 20) and bias.shape == (3,) and weight.dtype == torch.float32
    held_out, labels = _blobs(400, 2)
    assert ((held_out @ weight.T + bias).argmax(1) == labels).float().mean() > 0.95


def _noisy_blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The blobs with 100 dimensions of pure noise added and 40% of their labels drawn at random."""
    x, labels = _blobs(n, seed)
    draw = torch.Generator().manual_seed(seed + 10)
    x = torch.cat([x, torch.randn(len(x), 100, generator=draw)], 1)
    flip = torch.rand(len(labels), generator=draw) < 0.4
    return x, torch.where(flip, torch.randint(0, 3, labels.shape, generator=draw), labels)


def test_the_probe_penalty_is_the_one_validation_prefers():
    """Clean, separable classes: the weakest penalty (a sharper probe is right more confidently); few noisy
    examples in many dimensions: a strong one (a weak one fits the noise, and validation pays for it)."""
    assert validated_probe(_blobs(200, 1), _blobs(200, 2), 3)[2] == PROBE_L2S[0]
    weight, bias, l2 = validated_probe(_noisy_blobs(40, 1), _noisy_blobs(200, 2), 3)
    assert l2 >= 0.1
    assert torch.equal(weight, probe(*_noisy_blobs(40, 1), 3, l2)[0])


def test_lda_never_picks_a_class_without_examples():
    x, labels = _blobs(100, 0)
    weight, bias = lda(x[labels != 2], labels[labels != 2], 3)
    assert torch.all(weight[2] == 0)
    assert not bool(((x @ weight.T + bias).argmax(1) == 2).any())


def _head_after_learning(backbone, task, head_init: str) -> AdapterPerTask:
    """A learner that learned ``task`` with a learning rate too small to move anything: the head is its start."""
    learner = AdapterPerTask(
        backbone,
        BottleneckConfig(bottleneck_dim=8),
        TrainerConfig(epochs=1, batch_size=16, lr=1e-12),
        AdapterPerTaskConfig(progress=False, head_init=head_init),
    )
    learner.learn([task])
    return learner


def _frozen(learner: AdapterPerTask, task, split) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen features of ``split``'s texts as ``task``'s head reads them, and their labels."""
    tokens = encode(learner, task.kind, split.texts, "split").tokens
    features = torch.empty(len(tokens), learner.backbone.hidden_size)
    for idx, ids, mask in padded_batches(learner, tokens):
        features[idx] = learner.features(ids, mask, learner.backbone.pooling)
    return features, torch.as_tensor(split.labels)


def test_the_head_starts_at_lda_on_the_frozen_features(tiny_backbone):
    task = DemoStream(max_per_class=8).load().tasks[0]
    learner = _head_after_learning(tiny_backbone, task, "lda")
    weight, bias = lda(*_frozen(learner, task, task.train), task.outputs)
    assert torch.allclose(learner.heads[0].weight, weight, atol=1e-4)
    assert torch.allclose(learner.heads[0].bias, bias, atol=1e-4)


def test_the_head_starts_at_the_probe_validation_chose(tiny_backbone):
    task = DemoStream(max_per_class=8).load().tasks[0]
    assert len(task.validation) > 0
    learner = _head_after_learning(tiny_backbone, task, "probe")
    train, held_out = _frozen(learner, task, task.train), _frozen(learner, task, task.validation)
    weight, bias, l2 = validated_probe(train, held_out, task.outputs)  # L-BFGS: equal up to float summation order
    assert l2 != PROBE_L2  # so that the fixed penalty's head would not pass
    assert torch.allclose(learner.heads[0].weight, weight, atol=2e-3)
    assert torch.allclose(learner.heads[0].bias, bias, atol=2e-3)


def test_a_token_head_starts_from_its_tagged_tokens(tiny_backbone, tmp_path):
    spec = StreamSpec.from_dict({"name": "x", "tasks": slot_task_files(tmp_path, ("trip_slots",))})
    (task,) = spec.load(tmp_path).tasks
    started = _head_after_learning(tiny_backbone, task, "probe").heads[0]
    drawn = _head_after_learning(tiny_backbone, task, "random").heads[0]
    assert started.weight.shape == drawn.weight.shape == (task.outputs, tiny_backbone.hidden_size)
    assert not torch.allclose(started.weight, drawn.weight, atol=1e-3)
    assert started.weight.abs().sum(1).min() > 0  # every tag seen in training got a row


def test_an_unknown_head_init_is_one_line():
    with pytest.raises(ContinualError, match=r"head_init must be one of \['random', 'lda', 'probe'\], got 'zero'"):
        AdapterPerTaskConfig(head_init="zero")


def test_keep_best_restores_the_first_best_check_and_never_a_nan_one():
    weight = torch.zeros(2)
    checks = [(0.5, 1.0), (0.7, 2.0), (0.7, 3.0), (float("nan"), 4.0), (0.6, 5.0)]  # (score, weights then)
    scores = iter(score for score, _ in checks)
    keep = KeepBest([weight], lambda: next(scores))
    for _, value in checks:
        weight.fill_(value)
        keep.check()
    keep.restore()
    assert keep.kept == 1 and keep.best == 0.7 and torch.equal(weight, torch.full((2,), 2.0))


@pytest.mark.parametrize("keep", ["best", "last"])
def test_a_task_ends_with_the_weights_its_report_names(tiny_backbone, monkeypatch, keep):
    checks: list[KeepBest] = []

    class Recorded(KeepBest):
        def __init__(self, *args) -> None:
            super().__init__(*args)
            checks.append(self)

    monkeypatch.setattr(adapter_per_task, "KeepBest", Recorded)
    task = DemoStream(max_per_class=8).load().tasks[0]
    learner = AdapterPerTask(
        tiny_backbone,
        BottleneckConfig(bottleneck_dim=8),
        TrainerConfig(epochs=3, batch_size=4, lr=0.3),  # large steps: the validation score moves from epoch to epoch
        AdapterPerTaskConfig(progress=False, keep=keep),
    )
    report = learner.learn([task])
    now = oracle_score(learner, 0, task, task.validation)
    assert report.val_acc == now
    if keep == "last":
        assert report.kept_epoch is None and not checks
        return
    (check,) = checks
    assert len(check.scores) == 4  # the start and each epoch's end
    assert report.kept_epoch == check.scores.index(max(check.scores)) and now == max(check.scores)
