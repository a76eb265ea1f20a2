import json

import pytest
import torch
from safetensors import safe_open
from transformers import (
    BertTokenizer,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraModel,
    RobertaConfig,
    RobertaModel,
)

from continual.adapters import AdapterBank, BitFitConfig, BottleneckConfig, LoRAConfig, PrefixConfig, segments_for
from continual.errors import ContinualError
from continual.learners import AdapterPerTask, AdapterPerTaskConfig, SingleHeadConfig
from continual.model.backbone import Backbone, EncoderLayout
from continual.model.training import TrainerConfig
from continual.streams import DemoStream

from conftest import batch as _batch
from conftest import randomise as _randomise

FAST = TrainerConfig(epochs=1, batch_size=16, lr=5e-3)


@pytest.mark.parametrize("placement, per_layer", [("pfeiffer", 1), ("houlsby", 2)])
def test_new_adapter_is_identity_and_counts_params(tiny_backbone, placement, per_layer):
    bank = AdapterBank(tiny_backbone, BottleneckConfig(placement=placement, bottleneck_dim=4))
    k = bank.add()
    ids, mask = _batch(tiny_backbone, ["check my balance please", "book a flight to rome"])
    tiny_backbone.eval()
    plain = tiny_backbone(ids, mask)
    with bank.routed([(k, 0, 2)]):
        adapted = tiny_backbone(ids, mask)
    assert torch.equal(plain, adapted)  # up-projection starts at zero
    per_site = 32 * 4 + 4 + 4 * 32 + 32
    assert sum(p.numel() for p in bank.adapters[k].parameters()) == 2 * per_layer * per_site


def test_mixed_batch_equals_each_example_alone(tiny_backbone):
    bank = AdapterBank(tiny_backbone, BottleneckConfig(placement="houlsby", bottleneck_dim=8))
    for _ in range(3):
        bank.add()
    _randomise(bank)
    tiny_backbone.eval()
    texts = [
        "check my balance",
        "book a hotel in paris for two nights",
        "how long to boil eggs",
        "transfer money to savings",
        "is a visa needed",
        "plain backbone please",
    ]
    routes = torch.tensor([2, 0, 1, 2, 0, -1])
    ids, mask = _batch(tiny_backbone, texts)
    order, segments = segments_for(routes)
    with bank.routed(segments):
        mixed = tiny_backbone(ids[order], mask[order])
    mixed = mixed[torch.argsort(order)]
    for row, text in enumerate(texts):
        one_ids, one_mask = _batch(tiny_backbone, [text])
        adapter = int(routes[row])
        with bank.routed([(None if adapter < 0 else adapter, 0, 1)]):
            alone = tiny_backbone(one_ids, one_mask)
        torch.testing.assert_close(mixed[row], alone[0], rtol=1e-5, atol=1e-5)


def test_routed_adapters_change_features(tiny_backbone):
    bank = AdapterBank(tiny_backbone, BottleneckConfig(bottleneck_dim=8))
    bank.add(), bank.add()
    _randomise(bank)
    tiny_backbone.eval()
    ids, mask = _batch(tiny_backbone, ["check my balance"])
    with bank.routed([(0, 0, 1)]):
        a = tiny_backbone(ids, mask)
    with bank.routed([(1, 0, 1)]):
        b = tiny_backbone(ids, mask)
    assert not torch.allclose(a, b)


def test_earlier_adapters_heads_and_backbone_stay_bit_identical(tiny_backbone, tmp_path):
    stream = DemoStream(max_per_class=12).load()
    learner = AdapterPerTask(
        tiny_backbone, BottleneckConfig(bottleneck_dim=8), FAST, AdapterPerTaskConfig(progress=False), seed=0
    )
    learner.learn([stream.tasks[0]])
    frozen = {n: t.clone() for n, t in tiny_backbone.state_dict().items()}
    first = {
        n: t.clone()
        for n, t in [
            *learner.bank.adapters[0].state_dict().items(),
            *(("head." + k, v) for k, v in learner.heads[0].state_dict().items()),
        ]
    }
    report = learner.learn([stream.tasks[1]])
    learner.learn([stream.tasks[2]])
    assert report.steps > 0 and report.trainable_params == learner.trainable_parameters(1)
    for name, tensor in tiny_backbone.state_dict().items():
        assert torch.equal(tensor, frozen[name]), name
    after = dict(learner.bank.adapters[0].state_dict().items())
    after.update(("head." + k, v) for k, v in learner.heads[0].state_dict().items())
    for name, tensor in first.items():
        assert torch.equal(after[name], tensor), name
    # ...while the newest adapter did train
    assert learner.bank.adapters[2]["0_ffn"].up.weight.abs().sum() > 0

    paths = learner.save(tmp_path / "adapters")
    assert [p.name for p in paths] == ["00_banking.safetensors", "01_travel.safetensors", "02_cooking.safetensors"]
    with safe_open(str(paths[1]), "pt") as fh:
        meta = fh.metadata()
        assert json.loads(meta["labels"]) == list(stream.tasks[1].labels)
        assert fh.get_tensor("head.weight").shape == (5, 32)


def test_predict_routes_per_example(tiny_backbone):
    stream = DemoStream(max_per_class=12).load()
    learner = AdapterPerTask(
        tiny_backbone, BottleneckConfig(bottleneck_dim=8), FAST, AdapterPerTaskConfig(progress=False), seed=0
    )
    for t in stream.tasks[:3]:
        learner.learn([t])
    texts = [stream.tasks[k].test.texts[i] for k in range(3) for i in range(4)]
    routes = torch.tensor([k for k in range(3) for _ in range(4)])[
        torch.randperm(12, generator=torch.Generator().manual_seed(0))
    ]
    ids, mask = _batch(tiny_backbone, texts)
    mixed = learner.classify(ids, mask, routes).labels
    singles = torch.cat(
        [learner.classify(*_batch(tiny_backbone, [t]), routes[i : i + 1]).labels for i, t in enumerate(texts)]
    )
    assert torch.equal(mixed, singles)
    assert learner.classify(ids[:2], mask[:2], torch.tensor([-1, 0])).labels[0] == -1  # abstained: no label
    both = learner.classify(ids, mask, routes)
    alone = [learner.classify(*_batch(tiny_backbone, [t]), routes[i : i + 1]) for i, t in enumerate(texts)]
    for field in ("confidence", "certainty"):
        torch.testing.assert_close(
            getattr(both, field), torch.cat([getattr(a, field) for a in alone]), atol=1e-5, rtol=1e-5
        )
    assert torch.all((both.certainty >= 0) & (both.certainty <= 1)) and torch.all(both.confidence >= 1 / 5)


VOCAB = 120


@pytest.mark.parametrize(
    "make",
    [
        lambda: RobertaModel(
            RobertaConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=70,
            )
        ),
        lambda: ElectraModel(
            ElectraConfig(
                vocab_size=VOCAB,
                embedding_size=16,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
            )
        ),
        lambda: DistilBertModel(DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64)),
    ],
    ids=["roberta", "electra", "distilbert"],
)
def test_other_encoder_families(tiny_model_dir, make):
    tokenizer = BertTokenizer.from_pretrained(str(tiny_model_dir))
    model = make()
    backbone = Backbone(model, tokenizer, "tiny")
    bank = AdapterBank(backbone, BottleneckConfig(placement="houlsby", bottleneck_dim=4))
    bank.add()
    _randomise(bank)
    ids = torch.randint(5, VOCAB, (2, 7))
    mask = torch.ones_like(ids)
    backbone.eval()
    plain = backbone(ids, mask)
    with bank.routed([(0, 0, 2)]):
        adapted = backbone(ids, mask)
    assert plain.shape == (2, 32) and not torch.allclose(plain, adapted)


def test_layout_that_does_not_fit_is_a_clear_error(tiny_model_dir):
    with pytest.raises(ContinualError, match="does not fit this model"):
        Backbone.load(str(tiny_model_dir), layout=EncoderLayout("encoder.layer", "attention.nope", "output.dense"))


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ContinualError, match="no config.json"):
        Backbone.load(str(tmp_path))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"placement": "middle"}, "adapter.placement"),
        ({"reduction_factor": 0}, "adapter.reduction_factor"),
        ({"bottleneck_dim": -3}, "adapter.bottleneck_dim"),
        ({"non_linearity": "swishy"}, "adapter.non_linearity"),
    ],
)
def test_bad_adapter_config(kwargs, message):
    with pytest.raises(ContinualError, match=message):
        BottleneckConfig(**kwargs)


@pytest.mark.parametrize("flags, expected", [(set(), "fp32"), ({"avx", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16")])
def test_precision_auto_takes_bf16_only_where_the_cpu_has_it(flags, expected, monkeypatch, caplog):
    from continual.model import training

    monkeypatch.setattr(training, "_cpu_flags", lambda: flags)
    training._auto_precision.cache_clear()
    try:
        with caplog.at_level("INFO", logger="continual.model.training"):
            context = TrainerConfig(precision="auto").autocast(torch.device("cpu"))
    finally:
        training._auto_precision.cache_clear()
    assert isinstance(context, torch.autocast) == (expected == "bf16")
    assert f"trainer.precision=auto: {expected} on cpu" in caplog.text


@pytest.mark.parametrize(
    "adapter",
    [
        BottleneckConfig(bottleneck_dim=8),
        BottleneckConfig(bottleneck_dim=8, skip_layers=1),  # the frozen-prefix cache keeps bf16 states
        BitFitConfig(),  # an fp32 bias on a bf16 output: the site still hands bf16 on
        LoRAConfig(rank=4),
        PrefixConfig(length=4),
    ],
)
def test_bf16_holds_the_frozen_backbone_in_bf16_and_trains_fp32_weights(tiny_model_dir, adapter):
    """Under bf16 the frozen backbone's weights are bf16 (autocast casts none of them per call), the trained
    ones fp32 (their master copies), and on a CPU its attention is the plain form (the fused kernel trains bf16
    slowly there); the task learns and answers about as fp32 does. A backbone that is fine-tuned stays fp32
    (autocast computes it in bf16, so it attends plainly too)."""
    task = DemoStream(max_per_class=6).load().tasks[0]
    ids, mask = _batch(Backbone.load(str(tiny_model_dir)), list(task.test.texts[:8]))
    probs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        backbone = Backbone.load(str(tiny_model_dir))  # its own: holding it in bf16 rounds its weights
        trainer = TrainerConfig(epochs=2, batch_size=8, lr=1e-2, precision=precision)
        learner = AdapterPerTask(backbone, adapter, trainer, AdapterPerTaskConfig(progress=False, head_init="random"))
        learner.learn([task])
        expected = torch.bfloat16 if precision == "bf16" else torch.float32
        assert {p.dtype for p in backbone.model.parameters()} == {expected}
        assert backbone.model.config._attn_implementation == ("eager" if precision == "bf16" else "sdpa")
        assert {p.dtype for p in learner.bank.parameters()} | {p.dtype for p in learner.heads.parameters()} == {
            torch.float32
        }
        probs[precision] = learner.classify(ids, mask, torch.zeros(len(ids), dtype=torch.long)).confidence
    assert torch.allclose(probs["bf16"], probs["fp32"], atol=0.05)
    tuned = Backbone.load(str(tiny_model_dir))
    SingleHeadConfig(base="finetune", progress=False).build(tuned, adapter, TrainerConfig(precision="bf16"), 0)
    assert {p.dtype for p in tuned.model.parameters()} == {torch.float32}
    assert tuned.model.config._attn_implementation == "eager"  # it computes in bf16 (autocast) all the same


@pytest.mark.parametrize(
    "adapter, budget",
    [
        (BottleneckConfig(bottleneck_dim=8), None),  # routing per thread, stacked weights from many threads
        (BottleneckConfig(bottleneck_dim=8, skip_layers=1), 0.0),  # + the frozen-prefix cache's layer slices,
    ],  # and adapters read back from their files while other threads' batches run
)
def test_threads_sharing_a_learner_get_the_serial_answers(tiny_backbone, tmp_path, adapter, budget):
    """Each thread's batch is routed only by its own routes: concurrent classify calls on one learner equal
    the same calls one after another, bit for bit (as a served model's request workers need)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    stream = DemoStream(max_per_class=6).load()
    learner = AdapterPerTask(tiny_backbone, adapter, FAST, AdapterPerTaskConfig(progress=False), seed=0)
    for t in stream.tasks:
        learner.learn([t])
    if budget is not None:  # reload under a zero byte budget: every batch reads its adapters back
        learner.save(tmp_path)
        learner.bank.remove_hooks()
        config = AdapterPerTaskConfig(progress=False, max_resident_mb=budget)
        learner = AdapterPerTask(Backbone.load(tiny_backbone.name), adapter, FAST, config, seed=0)
        learner.load(tmp_path, stream.tasks)
    generator = torch.Generator().manual_seed(0)
    texts = [t for task in stream.tasks for t in task.test.texts[:6]]
    batches = []
    for n in range(24):
        pick = torch.randperm(len(texts), generator=generator)[: 2 + n % 9].tolist()
        routes = torch.randint(-1, len(stream.tasks), (len(pick),), generator=generator)
        batches.append((*_batch(learner.backbone, [texts[i] for i in pick]), routes))
    serial = [learner.classify(*batch) for batch in batches]
    start = threading.Barrier(len(batches))

    def run(batch):
        start.wait()
        return learner.classify(*batch)

    with ThreadPoolExecutor(len(batches)) as pool:
        concurrent = list(pool.map(run, batches))
    for one, other in zip(serial, concurrent):
        for a, b in zip(one, other):
            assert torch.equal(a, b)
