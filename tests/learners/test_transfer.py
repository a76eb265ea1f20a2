"""Knowledge transfer between per-task adapters: start from the most similar one, or fuse the earlier ones."""

import numpy as np
import pytest
import torch

from continual import metrics
from continual.adapters import BottleneckConfig, PrefixConfig
from continual.errors import ContinualError
from continual.learners import AdapterPerTask, AdapterPerTaskConfig
from continual.model.training import TrainerConfig, pad
from continual.streams import DemoStream, Task

FAST = TrainerConfig(epochs=1, batch_size=16, lr=5e-3)


@pytest.fixture(scope="module")
def tasks():
    demo = DemoStream(max_per_class=8).load().tasks
    t0, t1 = demo[0], demo[1]
    return [t0, t1, Task("banking_again", t0.labels, t0.train, t0.validation, t0.test)]


def _state(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def test_similar_starts_from_the_most_similar_task(tiny_backbone, tasks):
    learner = AdapterPerTask(
        tiny_backbone,
        BottleneckConfig(bottleneck_dim=8),
        FAST,
        AdapterPerTaskConfig(progress=False, transfer="similar"),
    )
    learner.learn([tasks[0]])
    learner.learn([tasks[1]])
    first = _state(learner.bank.adapters[0])
    k = learner._allocate(tasks[2])
    learner.transfer.start(learner.bank, k, tasks[2], learner.tasks)
    assert learner.transfer.sources == {1: 0, 2: 0}  # the same texts as task 0: cosine 1
    assert torch.equal(_state(learner.bank.adapters[2]), first)
    assert learner.trainable_parameters(2) == learner.trainable_parameters(0)


def test_fusion_mixes_earlier_adapters_and_round_trips(tiny_backbone, tasks, tmp_path):
    learner = AdapterPerTask(
        tiny_backbone, BottleneckConfig(bottleneck_dim=8), FAST, AdapterPerTaskConfig(progress=False, transfer="fusion")
    )
    for task in tasks[:2]:
        learner.learn([task])
    sites = len(learner.bank.adapters[0])
    assert "0" not in learner.bank.fusion and learner.bank.fusion["1"]["0_ffn"].shape == (2,)
    assert learner.trainable_parameters(1) == learner.trainable_parameters(0) + 2 * sites
    assert not torch.equal(learner.bank.fusion["1"]["0_ffn"], torch.zeros(2))  # the mixture was trained

    texts = list(tasks[0].test.texts[:3]) + list(tasks[1].test.texts[:3])
    ids, mask = pad(tiny_backbone.tokenize(texts, 32), 0, torch.device("cpu"))
    routes = torch.tensor([0, 1, 0, 1, 1, 0])
    mixed = learner.classify(ids, mask, routes)
    for i in range(len(texts)):  # a fused task still routes per example
        alone = learner.classify(
            ids[i : i + 1, : int(mask[i].sum())], mask[i : i + 1, : int(mask[i].sum())], routes[i : i + 1]
        )
        assert alone.labels[0] == mixed.labels[i]
        torch.testing.assert_close(alone.confidence[0], mixed.confidence[i], rtol=1e-5, atol=1e-5)

    # a fused task's fingerprint covers the earlier adapters it mixes
    before = learner.fingerprints().tasks
    with torch.no_grad():
        learner.bank.adapters[0]["0_ffn"].up.bias.add_(1.0)
    after = learner.fingerprints().tasks
    assert before[0] != after[0] and before[1] != after[1]
    with torch.no_grad():
        learner.bank.adapters[0]["0_ffn"].up.bias.sub_(1.0)

    learner.save(tmp_path)
    restored = AdapterPerTask(
        tiny_backbone, BottleneckConfig(bottleneck_dim=8), FAST, AdapterPerTaskConfig(progress=False, transfer="fusion")
    )
    learner.bank.remove_hooks()
    restored.load(tmp_path, tasks[:2])
    assert restored.fingerprints().tasks == learner.fingerprints().tasks
    assert torch.equal(restored.classify(ids, mask, routes).labels, mixed.labels)


def test_loading_with_another_transfer_is_refused(tiny_backbone, tasks, tmp_path):
    learner = AdapterPerTask(
        tiny_backbone, BottleneckConfig(bottleneck_dim=8), FAST, AdapterPerTaskConfig(progress=False, transfer="fusion")
    )
    learner.learn([tasks[0]])
    learner.save(tmp_path)
    learner.bank.remove_hooks()
    other = AdapterPerTask(
        tiny_backbone, BottleneckConfig(bottleneck_dim=8), FAST, AdapterPerTaskConfig(progress=False)
    )
    with pytest.raises(ContinualError, match="saved for transfer=fusion, but this run has transfer=none"):
        other.load(tmp_path, tasks[:1])


def test_bad_transfer_settings(tiny_backbone):
    with pytest.raises(ContinualError, match="learner.transfer must be one of"):
        AdapterPerTask(tiny_backbone, BottleneckConfig(), FAST, AdapterPerTaskConfig(transfer="copy"))
    learner = AdapterPerTask(
        tiny_backbone, PrefixConfig(length=2), FAST, AdapterPerTaskConfig(progress=False, transfer="fusion")
    )
    with pytest.raises(ContinualError, match="transfer=fusion mixes adapter outputs"):
        learner._allocate(DemoStream(max_per_class=2).load().tasks[0])


def test_forward_transfer_against_the_reference():
    nan = np.nan
    R = np.array([[0.8, nan, nan], [0.8, 0.9, nan], [0.8, 0.9, 0.7]])
    reference = np.array([[0.8, nan, nan], [0.8, 0.85, nan], [0.8, 0.85, 0.75]])
    assert metrics.forward_transfer(R, reference) == pytest.approx(0.0)  # +0.05 and -0.05
    assert metrics.forward_transfer(R, R) == 0.0
    assert np.isnan(metrics.forward_transfer(R[:1, :1], reference[:1, :1]))
    with pytest.raises(ValueError, match="same stream"):
        metrics.forward_transfer(R, reference[:2, :2])


@pytest.mark.parametrize("transfer", ["fusion", "similar"])
def test_resumed_under_a_residency_budget_earlier_adapters_come_back_for_transfer(
    tiny_backbone, tasks, tmp_path, transfer
):
    from continual.model.backbone import Backbone

    config = BottleneckConfig(bottleneck_dim=8)
    first = AdapterPerTask(tiny_backbone, config, FAST, AdapterPerTaskConfig(progress=False, transfer=transfer))
    for task in tasks[:2]:
        first.learn([task])
    first.save(tmp_path)
    again = AdapterPerTask(
        Backbone.load(tiny_backbone.name),
        config,
        FAST,
        AdapterPerTaskConfig(progress=False, transfer=transfer, max_resident_mb=0),
    )
    again.load(tmp_path, tasks[:2])
    assert again.resident is not None and not again.resident.lru  # a zero budget: nothing stays in memory
    report = again.learn([tasks[2]])  # reads back the adapters it mixes or starts from
    assert np.isfinite(report.val_acc) and report.trainable_params >= first.trainable_parameters(1)
    assert again.resident.loads >= 1 and not again.resident.lru
