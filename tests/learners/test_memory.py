"""The episodic replay memory and the EWC penalty, without a model."""

from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from continual.errors import ContinualError
from continual.learners import EpisodicMemory, EWCConfig, MemoryConfig
from continual.learners.techniques import AGEM, EWC, options


def _task(n: int, labels: int, offset: int = 0) -> tuple[list[list[int]], np.ndarray]:
    """``n`` examples whose token ids name them (distinct across tasks through ``offset``)."""
    return [[offset + i, 7, offset + i] for i in range(n)], np.arange(n) % labels


@pytest.mark.parametrize("sampling", ["reservoir", "per_class"])
def test_memory_never_holds_more_than_its_size_and_keeps_examples_intact(sampling):
    memory = EpisodicMemory(MemoryConfig(size=25, sampling=sampling), seed=1)
    originals = {}
    for k, (n, labels) in enumerate([(40, 4), (7, 2), (60, 5)]):
        tokens, y = _task(n, labels, offset=1000 * k)
        originals.update({(k, ids[0]): int(label) for ids, label in zip(tokens, y)})
        memory.add(k, tokens, y)
        assert len(memory) == len(memory.labels) == len(memory.tasks) <= 25
    assert len(memory) == 25 and memory.seen == 107
    for ids, label, owner in zip(memory.tokens, memory.labels, memory.tasks):
        assert (
            ids[0] // 1000 == owner and originals[(int(owner), ids[0])] == label
        )  # token ids, label, task travel together


def test_per_class_sampling_is_balanced_over_every_class_seen():
    memory = EpisodicMemory(MemoryConfig(size=20, sampling="per_class"))
    memory.add(0, *_task(50, 2))
    assert Counter(zip(memory.tasks.tolist(), memory.labels.tolist())) == {(0, 0): 10, (0, 1): 10}
    memory.add(1, *_task(50, 3, offset=1000))
    counts = Counter(zip(memory.tasks.tolist(), memory.labels.tolist()))
    assert len(counts) == 5 and sum(counts.values()) == 20 and set(counts.values()) == {4}
    memory.add(2, *_task(30, 2, offset=2000))
    counts = Counter(zip(memory.tasks.tolist(), memory.labels.tolist()))
    assert len(counts) == 7 and sum(counts.values()) == 20 and max(counts.values()) - min(counts.values()) <= 1


def test_reservoir_keeps_every_task_in_proportion_to_its_size():
    memory = EpisodicMemory(MemoryConfig(size=200), seed=0)
    for k in range(4):
        memory.add(k, *_task(500, 5, offset=1000 * k))
    shares = np.bincount(memory.tasks, minlength=4) / 200
    assert np.all(np.abs(shares - 0.25) < 0.1)  # uniform over the 2000 seen: about 50 each


def test_memory_is_seeded_and_survives_its_state_dict():
    def filled(seed):
        memory = EpisodicMemory(MemoryConfig(size=10), seed=seed)
        memory.add(0, *_task(30, 3))
        return memory

    a, b, c = filled(0), filled(0), filled(1)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    restored = EpisodicMemory(MemoryConfig(size=10))
    restored.load_state_dict(a.state_dict())
    assert restored.tokens == a.tokens and restored.seen == a.seen
    np.testing.assert_array_equal(restored.labels, a.labels)
    a.add(1, *_task(30, 3, offset=1000))
    restored.seed = 0
    restored.add(1, *_task(30, 3, offset=1000))
    assert restored.tokens == a.tokens  # a resumed memory fills exactly as the uninterrupted one
    assert len(a.sample(4, np.random.default_rng(0))) == 4 and len(set(a.sample(10, np.random.default_rng(0)))) == 10


@pytest.mark.parametrize(
    "options, field",
    [
        ({"size": 0}, "learner.memory.size"),
        ({"sampling": "fifo"}, "learner.memory.sampling"),
        ({"batch_size": -1}, "learner.memory.batch_size"),
        ({"capacity": 3}, "learner.memory: unknown keys"),
    ],
)
def test_memory_config_errors_name_the_field(options, field):
    with pytest.raises(ContinualError, match=field):
        MemoryConfig.from_mapping(options)


def _penalty(ewc):
    return ewc.penalty(None, None, None, None, None)


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_when_the_weights_move():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    ewc = EWC(EWCConfig(lambda_=2.0, fisher_samples=0, decay=0.5), list(layer.named_parameters()), seed=0)
    assert _penalty(ewc) is None  # nothing consolidated yet
    inputs, targets = torch.randn(8, 4), torch.randint(0, 3, (8,))
    data = ([[i] for i in range(8)], targets.numpy())

    def loss_of(i):
        return nn.functional.cross_entropy(layer(inputs[i : i + 1]), targets[i : i + 1])

    ewc.end_task(0, data, loss_of)
    assert all(torch.all(f >= 0) and f.sum() > 0 for f in ewc.fisher.values())
    assert _penalty(ewc).item() == 0.0
    with torch.no_grad():
        layer.weight.add_(0.1)
    moved = _penalty(ewc).item()
    expected = 0.5 * 2.0 * (ewc.fisher["weight"] * 0.01).sum().item()
    assert moved > 0 and moved == pytest.approx(expected)
    first = {n: f.clone() for n, f in ewc.fisher.items()}
    ewc.end_task(1, data, loss_of)  # online EWC: decay * old Fisher + the new one; the anchor moves here
    new = ewc.fisher["weight"] - 0.5 * first["weight"]
    assert torch.all(new >= -1e-7) and new.sum() > 0 and _penalty(ewc).item() == 0.0
    again = EWC(EWCConfig(lambda_=2.0), list(layer.named_parameters()), seed=0)
    again.load_state_dict(ewc.state_dict())
    assert torch.equal(again.fisher["bias"], ewc.fisher["bias"]) and _penalty(again).item() == 0.0


@pytest.mark.parametrize(
    "values, field",
    [
        ({"lambda": -1.0}, "learner.ewc.lambda"),
        ({"fisher_samples": 1.5}, "learner.ewc.fisher_samples"),
        ({"decay": 2}, "learner.ewc.decay"),
        ({"gamma": 1.0}, "learner.ewc: unknown keys"),
    ],
)
def test_ewc_config_errors_name_the_field(values, field):
    with pytest.raises(ContinualError, match=field):
        options(EWCConfig, values, "learner.ewc")
    assert options(EWCConfig, {"lambda": 5}, "learner.ewc").lambda_ == 5


def test_agem_projects_a_gradient_that_would_raise_the_memory_loss():
    torch.manual_seed(0)
    layer = nn.Linear(4, 2)
    agem = AGEM(MemoryConfig(size=8, batch_size=8), seed=0)
    features = {i: torch.randn(4) for i in range(8)}
    agem.end_task(0, ([[i] for i in range(8)], np.array([0, 1] * 4)), lambda i: None)

    def forward(tokens):
        return layer(torch.stack([features[t[0]] for t in tokens]))

    params = list(layer.parameters())
    memory_loss = nn.functional.cross_entropy(forward([[i] for i in range(8)]), torch.tensor([0, 1] * 4))
    reference = torch.autograd.grad(memory_loss, params)
    for p, r in zip(params, reference):
        p.grad = -r.clone()  # straight up the memory's loss
    agem.after_backward(forward, params, np.random.default_rng(0))
    projected = torch.cat([p.grad.flatten() for p in params])
    ref = torch.cat([r.flatten() for r in reference])
    assert torch.dot(projected, ref).item() == pytest.approx(0.0, abs=1e-6)  # no longer against the memory
    for p, r in zip(params, reference):
        p.grad = r.clone()  # a gradient that agrees with the memory is left alone
    agem.after_backward(forward, params, np.random.default_rng(0))
    assert all(torch.equal(p.grad, r) for p, r in zip(params, reference))
