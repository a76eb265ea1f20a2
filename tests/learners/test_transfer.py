"""Knowledge transfer between per-task adapters: start from the most similar one, or fuse the earlier ones."""

import json

import numpy as np
import pytest
import torch

from continual import files, metrics, migrations
from continual.adapters import BottleneckConfig, PrefixConfig
from continual.adapters.fusion import FusionConfig, SiteAttention
from continual.errors import ContinualError
from continual.learners import AdapterPerTask, AdapterPerTaskConfig
from continual.model.backbone import Backbone
from continual.model.training import TrainerConfig, pad
from continual.routers import OracleRouter
from continual.run.compat import check_adapter
from continual.run.experiment import RunOptions, run_stream
from continual.streams import DemoStream, Task
from continual.tracking import MemoryTracker

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


def test_fusion_init_similar_starts_the_fused_adapter_from_the_most_similar_one(tiny_backbone, tasks, tmp_path):
    """``fusion.init=similar``: the fused task's own adapter starts as a copy of the most similar earlier task's
    (then fuses its sources as before); the file records which, and loading restores it."""
    config = AdapterPerTaskConfig(progress=False, transfer="fusion", fusion=FusionConfig(init="similar"))
    learner = AdapterPerTask(tiny_backbone, BottleneckConfig(bottleneck_dim=8), FAST, config)
    learner.learn([tasks[0]])
    learner.learn([tasks[1]])
    learner.save(tmp_path)
    first = _state(learner.bank.adapters[0])
    k = learner._allocate(tasks[2])
    learner.transfer.start(learner.bank, k, tasks[2], learner.tasks)
    assert learner.transfer.copied == {1: 0, 2: 0}  # the same texts as task 0: cosine 1
    assert torch.equal(_state(learner.bank.adapters[2]), first)
    assert learner.bank.fusion["2"].source_list == [0, 1, 2]
    learner.bank.remove_hooks()
    restored = AdapterPerTask(tiny_backbone, BottleneckConfig(bottleneck_dim=8), FAST, config)
    restored.load(tmp_path, tasks[:2])
    assert restored.transfer.copied == {1: 0} and restored.transfer.metadata(1)["initialised_from"] == "0"
    restored.bank.remove_hooks()


def _fusing(backbone, kind: str, sources: str = "all") -> AdapterPerTask:
    config = AdapterPerTaskConfig(progress=False, transfer="fusion", fusion=FusionConfig(kind, sources))
    return AdapterPerTask(backbone, BottleneckConfig(bottleneck_dim=8), FAST, config)


@pytest.mark.parametrize("kind", ["attention", "static"])
def test_fusion_mixes_earlier_adapters_and_round_trips(tiny_backbone, tasks, tmp_path, kind):
    learner = _fusing(tiny_backbone, kind)
    for task in tasks[:2]:
        learner.learn([task])
    sites, hidden = len(learner.bank.adapters[0]), tiny_backbone.hidden_size
    fusion = learner.bank.fusion["1"]
    assert "0" not in learner.bank.fusion and fusion.source_list == [0, 1]
    per_site = 2 if kind == "static" else 3 * (hidden * hidden + hidden)  # static: 2 logits; attention: Q, K, V
    assert learner.trainable_parameters(1) == learner.trainable_parameters(0) + per_site * sites
    groups = learner._param_groups(1)  # fusion weights train at their own rate: attention's 1e-4, static's trainer.lr
    assert len(groups) == 2 and groups[1]["lr"] == (1e-4 if kind == "attention" else FAST.lr)
    assert len(learner._param_groups(0)) == 1 and "lr" not in learner._param_groups(0)[0]
    if kind == "static":
        assert not torch.equal(fusion.mix["0_ffn"], torch.zeros(2))  # the mixture was trained
    else:
        assert not torch.equal(fusion.mix["0_ffn"].value.weight, torch.eye(hidden))  # the value moved off identity

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
    learner.bank.remove_hooks()
    other = _fusing(tiny_backbone, "static" if kind == "attention" else "attention")
    with pytest.raises(ContinualError, match=f"fused with learner.fusion.kind={kind}; this run has"):
        other.load(tmp_path, tasks[:2])
    other.bank.remove_hooks()
    restored = _fusing(tiny_backbone, kind)
    restored.load(tmp_path, tasks[:2])
    assert restored.fingerprints().tasks == learner.fingerprints().tasks
    assert torch.equal(restored.classify(ids, mask, routes).labels, mixed.labels)


def test_static_fusion_files_of_earlier_versions_still_load(tiny_backbone, tasks, tmp_path):
    """Before attention fusion a fused task's file held ``fusion.<site>`` logits over adapters 0..k, and its
    metadata named no fusion kind: such files load as static fusion and answer as before."""
    from safetensors.torch import load_file

    learner = _fusing(tiny_backbone, "static")
    for task in tasks[:2]:
        learner.learn([task])
    learner.save(tmp_path)
    path = sorted(tmp_path.glob("01_*.safetensors"))[0]
    tensors, meta = load_file(str(path)), files.read_metadata(path)
    old = {name.replace("fusion.mix.", "fusion."): t for name, t in tensors.items() if name != "fusion.sources"}
    files.save_tensors(path, old, {k: v for k, v in meta.items() if k not in ("fusion", "attention")})
    learner.bank.remove_hooks()
    restored = _fusing(Backbone.load(tiny_backbone.name), "static")
    restored.load(tmp_path, tasks[:2])
    assert restored.bank.runs_through(1) == [0, 1]
    assert restored.fingerprints().tasks == learner.fingerprints().tasks
    # and such a run's config.yaml, which names no fusion kind, reads as static fusion
    old_config = {"learner": {"_target_": "continual.learners.AdapterPerTaskConfig", "transfer": "fusion"}}
    assert migrations.config(old_config)["learner"]["fusion"]["kind"] == "static"
    assert "fusion" not in migrations.config({"learner": {"transfer": "none"}})["learner"]


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
    with pytest.raises(ContinualError, match="transfer=fusion mixes adapter outputs"):
        check_adapter(AdapterPerTaskConfig(transfer="fusion"), PrefixConfig(length=2))
    check_adapter(AdapterPerTaskConfig(transfer="similar"), PrefixConfig(length=2))
    for fusion, message in [
        ({"kind": "cross"}, r"learner.fusion.kind must be one of \['attention', 'static'\], got 'cross'"),
        (
            {"sources": "top:0"},
            "learner.fusion.sources must be 'all' or 'top:M' with M >= 1 .e.g. top:3., got 'top:0'",
        ),
        ({"sources": "best"}, "learner.fusion.sources must be 'all' or 'top:M'"),
        ({"temperature": 0.5}, "learner.fusion.temperature must be a number >= 1, got 0.5"),
        ({"kind": "static", "temperature": 50}, "learner.fusion.temperature anneals attention"),
        ({"init": "copy"}, r"learner.fusion.init must be one of \['fresh', 'similar'\], got 'copy'"),
    ]:
        with pytest.raises(ContinualError, match=message):
            AdapterPerTaskConfig(transfer="fusion", fusion=fusion)


def test_attention_temperature_anneals_to_one_over_a_task(tiny_backbone, tasks, monkeypatch):
    """``fusion.temperature=50``: the temperature falls linearly from 50 at a task's first step to 1 at its
    last, and the fused task then answers at temperature 1; a high temperature spreads attention evenly."""
    config = AdapterPerTaskConfig(progress=False, transfer="fusion", fusion=FusionConfig(temperature=50))
    learner = AdapterPerTask(tiny_backbone, BottleneckConfig(bottleneck_dim=8), FAST, config)
    used, weights = [], SiteAttention.weights

    def spy(self, out, adapted, temperature=1.0):
        used.append(temperature)
        return weights(self, out, adapted, temperature)

    monkeypatch.setattr(SiteAttention, "weights", spy)
    for task in tasks[:2]:
        learner.learn([task])
    fusion = learner.bank.fusion["1"]
    assert max(used) == 50 and used[-1] == 1 and fusion.temperature == 1.0  # trained from 50, validated at 1
    monkeypatch.undo()
    seen = []
    loss = learner._annealed(1, lambda idx: seen.append(fusion.temperature), steps=5)
    for _ in range(5):
        loss(np.arange(2))
    assert seen == pytest.approx([50, 37.75, 25.5, 13.25, 1]) and fusion.temperature == 1.0
    assert learner._annealed(0, len, steps=5) is len  # task 0 fuses nothing: its loss unchanged
    out, adapted = torch.randn(3, 4, tiny_backbone.hidden_size), torch.randn(2, 3, 4, tiny_backbone.hidden_size)
    site = fusion.mix["0_ffn"]
    with torch.no_grad():
        site.query.weight.normal_(0, 1)
        hot, cold = site.weights(out, adapted * 10, 50.0), site.weights(out, adapted * 10, 1.0)
    assert (hot - 0.5).abs().max() < (cold - 0.5).abs().max()
    learner.bank.remove_hooks()


def test_site_attention_is_the_papers_formula():
    """The folded computation (no materialised keys; the value applied once to the mixed sources) equals the
    paper's ``o = sum_j softmax_j(Q h . K z_j) V z_j`` with every projection's bias non-zero."""
    torch.manual_seed(0)
    site = SiteAttention(16)
    with torch.no_grad():
        for p in site.parameters():
            p.normal_(0, 0.5)
    out, adapted = torch.randn(3, 5, 16), torch.randn(4, 3, 5, 16)  # 4 sources, batch 3, 5 tokens
    query, keys, values = site.query(out), site.key(adapted), site.value(adapted)
    paper_weights = (query * keys).sum(-1).softmax(0)  # [sources, batch, tokens]
    paper = (paper_weights.unsqueeze(-1) * values).sum(0)
    fused, weights = site(out, adapted)
    torch.testing.assert_close(weights, paper_weights)
    torch.testing.assert_close(fused, paper, rtol=1e-5, atol=1e-5)


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
        # keep=best scores the task between epochs, which drops the adapters it trains through (a zero budget)
        AdapterPerTaskConfig(progress=False, transfer=transfer, max_resident_mb=0, keep="best"),
    )
    again.load(tmp_path, tasks[:2])
    assert again.resident is not None and not again.resident.lru  # a zero budget: nothing stays in memory
    report = again.learn([tasks[2]])  # reads back the adapters it mixes or starts from
    assert np.isfinite(report.val_acc) and report.trainable_params >= first.trainable_parameters(1)
    assert again.resident.loads >= 1 and not again.resident.lru


def test_a_fused_run_keeps_its_answers_reports_attention_and_resumes(tiny_backbone, tmp_path):
    """Top-1 attention fusion through a whole stream: with the task given nothing is forgotten (BWT exactly 0:
    a fused task's sources are frozen), each fused task's mean attention is written, and a resumed learner
    rebuilds the same fusions (sources, weights, answers)."""
    from continual.model.backbone import Backbone

    stream = DemoStream(max_per_class=8).load()
    learner = _fusing(tiny_backbone, "attention", "top:1")
    result = run_stream(stream, learner, OracleRouter(), MemoryTracker(), RunOptions(tmp_path, progress=False))
    given = result.state.oracle_R
    for j in range(len(stream.tasks)):
        assert np.all(given[j:, j] == given[j, j])  # every later row: the same accuracy on task j
    assert [len(learner.bank.runs_through(k)) for k in range(4)] == [1, 2, 2, 2]  # one source and its own

    attention = json.loads((tmp_path / "fusion_attention.json").read_text())
    names = stream.task_names
    assert list(attention) == names[1:] and (tmp_path / "fusion_attention.png").is_file()
    for k, name in enumerate(names[1:], start=1):
        row = attention[name]
        assert names[k] in row and len(row) == 2 and sum(row.values()) == pytest.approx(1.0, abs=1e-4)

    again = _fusing(Backbone.load(tiny_backbone.name), "attention", "top:1")
    again.load(tmp_path / "adapters", stream.tasks)
    for name, row in learner.fusion_attention().items():  # saved to 6 decimals
        assert again.fusion_attention()[name] == pytest.approx(row, abs=1e-6)
    assert [again.bank.runs_through(k) for k in range(4)] == [learner.bank.runs_through(k) for k in range(4)]
    assert again.fingerprints() == learner.fingerprints()


def test_a_run_without_fusion_answers_as_before_fusion_changed(tiny_backbone):
    """Per-task adapters without transfer (heads started at random, the last weights kept) give, text for text,
    the labels and confidences they gave before attention fusion and head initialisation were added (recorded at
    c07ed7c)."""
    tiny = tiny_backbone
    tasks = DemoStream(max_per_class=8).load().tasks[:3]
    trainer = TrainerConfig(epochs=2, batch_size=8, lr=5e-3)
    config = AdapterPerTaskConfig(progress=False, head_init="random", keep="last")  # the recipe of c07ed7c
    learner = AdapterPerTask(tiny, BottleneckConfig(bottleneck_dim=8), trainer, config)
    for task in tasks:
        learner.learn([task])
    texts = [text for task in tasks for text in task.test.texts[:6]]
    routes = torch.tensor([k for k, task in enumerate(tasks) for _ in task.test.texts[:6]])
    ids, mask = pad(tiny.tokenize(texts, 32), tiny.pad_id, torch.device("cpu"))
    out = learner.classify(ids, mask, routes)
    assert out.labels.tolist() == [2, 3, 1, 1, 1, 1, 0, 3, 4, 4, 0, 0, 1, 1, 1, 1, 1, 1]
    recorded = [0.2295, 0.2277, 0.2418, 0.2355, 0.2886, 0.2212, 0.2482, 0.2136, 0.2662]
    recorded += [0.2481, 0.2426, 0.2283, 0.2522, 0.2651, 0.3033, 0.2337, 0.2678, 0.2846]
    np.testing.assert_allclose(out.confidence.numpy(), recorded, atol=6e-5)
