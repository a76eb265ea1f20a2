"""The frozen-prefix cache (AdapterDrop): cached paths give what the plain path gives, within a memory budget."""

import logging

import numpy as np
import pytest
import torch

from continual.adapters import BottleneckConfig, LoRAConfig
from continual.learners import AdapterPerTask, AdapterPerTaskConfig
from continual.model.cache import PrefixCache
from continual.model.training import TrainerConfig, pad
from continual.routers import PrototypeRouter
from continual.run.evaluation import Evaluator, split_inputs
from continual.streams import DemoStream

TEXTS = ["check my balance", "book a hotel in paris for two nights", "how long to boil eggs", "is a visa needed"]


def _batch(backbone, texts):
    return pad(backbone.tokenize(texts, 32), backbone.pad_id, torch.device("cpu"))


@pytest.mark.parametrize("layers", [(-1,), (1, 2), (2, 1, -1)])
def test_encoding_from_cached_states_equals_the_full_pass(tiny_backbone, layers):
    tiny_backbone.eval()
    ids, mask = _batch(tiny_backbone, TEXTS)
    plain = tiny_backbone.encode(ids, mask, "mean", layers)
    cache = PrefixCache(tiny_backbone, 1, budget_mb=10)
    resumed = tiny_backbone.encode(ids, mask, "mean", layers, start=1, hidden=cache.states(ids, mask))
    torch.testing.assert_close(resumed, plain, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="below the cached layer"):
        tiny_backbone.encode(ids, mask, "mean", (0, -1), start=1, hidden=cache.states(ids, mask))


def test_cache_keys_by_tokens_and_reuses(tiny_backbone):
    tiny_backbone.eval()
    cache = PrefixCache(tiny_backbone, 1, budget_mb=10)
    ids, mask = _batch(tiny_backbone, TEXTS)
    first = cache.states(ids, mask)
    assert (cache.misses, cache.hits, len(cache)) == (4, 0, 4)
    # the same texts in another order and padded wider come back from the cache, unchanged
    ids2, mask2 = _batch(tiny_backbone, [TEXTS[2], TEXTS[0], "a much longer text about booking flights to rome"])
    again = cache.states(ids2, mask2)
    assert (cache.hits, len(cache)) == (2, 5)
    n0 = int(mask[0].sum())
    assert torch.equal(again[1, :n0], first[0, :n0]) and again[1, n0:].abs().sum() == 0


def test_budget_stops_growth_with_one_warning(tiny_backbone, caplog):
    tiny_backbone.eval()
    ids, mask = _batch(tiny_backbone, TEXTS)
    one_text = int(mask[0].sum()) * tiny_backbone.hidden_size * 4
    cache = PrefixCache(tiny_backbone, 1, budget_mb=1.5 * one_text / 2**20)
    with caplog.at_level(logging.WARNING, logger="continual.model.cache"):
        states = cache.states(ids, mask)
        cache.states(ids, mask)
    assert len(cache) == 1 and cache.bytes <= cache.budget
    assert sum("frozen-prefix cache is full" in r.message for r in caplog.records) == 1
    plain = tiny_backbone.hidden_after(ids, mask, 1)
    for i, n in enumerate(mask.sum(1).tolist()):  # uncached texts are computed, not dropped
        torch.testing.assert_close(states[i, :n], plain[i, :n], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "adapter",
    [BottleneckConfig(bottleneck_dim=8, skip_layers=1), LoRAConfig(rank=4, skip_layers=1)],
    ids=["pfeiffer", "lora"],
)
def test_learner_with_cache_equals_learner_without(tiny_backbone, adapter):
    stream = DemoStream(max_per_class=12).load()
    results = []
    for cache_mb in (64, 0):
        cfg = TrainerConfig(epochs=2, batch_size=16, lr=5e-3, cache_mb=cache_mb)
        learner = AdapterPerTask(tiny_backbone, adapter, cfg, AdapterPerTaskConfig(progress=False), seed=0)
        for task in stream.tasks[:2]:
            learner.learn([task])
        assert (learner.cache is None) == (cache_mb == 0)
        evaluator = Evaluator(learner, PrototypeRouter(layers=(1, 2)), stream.tasks[:2])
        for j, task in enumerate(stream.tasks[:2]):
            evaluator.router.add_task(
                j, task, split_inputs(learner, task.train), split_inputs(learner, task.validation)
            )
        evals = [evaluator.evaluate(j) for j in range(2)]
        weights = torch.cat([p.detach().flatten() for p in learner.bank.parameters()])
        results.append((evals, weights, learner.cache))
        learner.bank.remove_hooks()
    (cached, w_cached, cache), (plain, w_plain, _) = results
    torch.testing.assert_close(w_cached, w_plain, rtol=1e-4, atol=1e-5)
    for a, b in zip(cached, plain):
        assert a.accuracy == b.accuracy and np.array_equal(a.routes, b.routes)
    assert cache.hits > 0  # the router's features and the adapters' passes shared the frozen states
