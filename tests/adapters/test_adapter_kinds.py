"""Every adapter kind through the same bank: identity at start, per-example routing, AdapterDrop, errors."""

import numpy as np
import pytest
import torch
from transformers import BertTokenizer, DistilBertConfig, DistilBertModel

from continual.adapters import AdapterBank, BitFitConfig, BottleneckConfig, LoRAConfig, PrefixConfig, segments_for
from continual.adapters.lora import LoRA
from continual.errors import ContinualError
from continual.model.backbone import Backbone

from conftest import batch as _batch
from conftest import randomise as _randomise

H = 32  # the tiny BERT: 2 layers, hidden 32, intermediate 64
KINDS = {
    "houlsby": (BottleneckConfig(placement="houlsby", bottleneck_dim=4), 2 * 2 * (H * 4 + 4 + 4 * H + H)),
    "pfeiffer": (BottleneckConfig(bottleneck_dim=4), 2 * (H * 4 + 4 + 4 * H + H)),
    "lora": (LoRAConfig(rank=2), 2 * 2 * (2 * H + H * 2)),
    "prefix": (PrefixConfig(length=3), 2 * 2 * 3 * H),
    # q, k, v, attention dense, intermediate (64), output dense + the two LayerNorms, per layer
    "bitfit": (BitFitConfig(), 2 * (3 * H + H + 64 + H + 2 * H)),
}
TEXTS = [
    "check my balance",
    "book a hotel in paris for two nights",
    "how long to boil eggs",
    "transfer money to savings",
    "is a visa needed",
    "plain backbone please",
]


@pytest.mark.parametrize("kind", KINDS)
def test_parameter_count_and_start(tiny_backbone, kind):
    config, params = KINDS[kind]
    bank = AdapterBank(tiny_backbone, config)
    bank.add()
    assert sum(p.numel() for p in bank.adapters[0].parameters()) == params
    tiny_backbone.eval()
    ids, mask = _batch(tiny_backbone, TEXTS[:2])
    plain = tiny_backbone(ids, mask)
    with bank.routed([(0, 0, 2)]):
        adapted = tiny_backbone(ids, mask)
    if kind == "prefix":  # attending to extra (random) positions changes the output from the start
        assert not torch.allclose(plain, adapted)
    else:  # zero-initialised updates: a new adapter is the identity
        assert torch.equal(plain, adapted)


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_batch_equals_each_example_alone(tiny_backbone, kind):
    bank = AdapterBank(tiny_backbone, KINDS[kind][0])
    for _ in range(3):
        bank.add()
    _randomise(bank)
    tiny_backbone.eval()
    routes = torch.tensor([2, 0, 1, 2, 0, -1])
    ids, mask = _batch(tiny_backbone, TEXTS)
    order, segments = segments_for(routes)
    with bank.routed(segments):
        mixed = tiny_backbone(ids[order], mask[order])[torch.argsort(order)]
    plain = tiny_backbone(ids, mask)
    for row, text in enumerate(TEXTS):
        adapter = int(routes[row])
        with bank.routed([(None if adapter < 0 else adapter, 0, 1)]):
            alone = tiny_backbone(*_batch(tiny_backbone, [text]))
        torch.testing.assert_close(mixed[row], alone[0], rtol=1e-5, atol=1e-5)
        # the adapters do act, and an example routed to no adapter (-1) is left untouched
        assert torch.allclose(mixed[row], plain[row], atol=1e-5) == (adapter < 0)


def test_lora_adds_the_low_rank_update(tiny_backbone):
    bank = AdapterBank(tiny_backbone, LoRAConfig(rank=2, alpha=4, targets=("value",)))
    bank.add()
    _randomise(bank)
    value = tiny_backbone.layers[1].attention.self.value
    lora: LoRA = bank.adapters[0]["1_attention_self_value"]
    x = torch.randn(3, 5, H)
    with bank.routed([(0, 0, 3)]):
        got = value(x)
    torch.testing.assert_close(
        got, torch.nn.functional.linear(x, value.weight, value.bias) + x @ lora.A.T @ lora.B.T * 2.0
    )


@pytest.mark.parametrize("kind", ["pfeiffer", "lora", "prefix", "bitfit"])
def test_skip_layers_leaves_the_lowest_layers_alone(tiny_backbone, kind):
    config = KINDS[kind][0].__class__(**{**KINDS[kind][0].__dict__, "skip_layers": 1})
    bank = AdapterBank(tiny_backbone, config)
    bank.add()
    assert bank.first_layer == 1 and all(name.startswith("1_") for name in bank.adapters[0])
    assert sum(p.numel() for p in bank.adapters[0].parameters()) == KINDS[kind][1] // 2


@pytest.mark.parametrize(
    "config, message",
    [
        (LoRAConfig(targets=("query", "nope")), r"adapter.targets: \['nope'\] name no Linear module in layer 0"),
        (BottleneckConfig(skip_layers=2), "adapter.skip_layers=2 leaves no layer to adapt"),
        (BitFitConfig(targets=("querry",)), r"adapter.targets: \['querry'\]"),
    ],
)
def test_bad_sites_are_clear_errors(tiny_backbone, config, message):
    with pytest.raises(ContinualError, match=message):
        AdapterBank(tiny_backbone, config)


def test_prefix_needs_bert_style_attention(tiny_model_dir):
    model = DistilBertModel(DistilBertConfig(vocab_size=120, dim=32, n_layers=2, n_heads=2, hidden_dim=64))
    backbone = Backbone(model, BertTokenizer.from_pretrained(str(tiny_model_dir)), "tiny-distilbert")
    with pytest.raises(
        ContinualError, match="adapter=prefix: backbone 'tiny-distilbert' \\(distilbert\\) has no BERT-style"
    ):
        AdapterBank(backbone, PrefixConfig())
    bank = AdapterBank(backbone, LoRAConfig(targets=("q_lin", "v_lin")))  # LoRA fits it by module names
    assert len(bank._site_modules) == 4


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: LoRAConfig(rank=0), "adapter.rank"),
        (lambda: LoRAConfig(dropout=1.0), "adapter.dropout"),
        (lambda: LoRAConfig(targets=()), "adapter.targets"),
        (lambda: PrefixConfig(length=0), "adapter.length"),
        (lambda: BitFitConfig(skip_layers=-1), "adapter.skip_layers"),
    ],
)
def test_bad_configs(make, message):
    with pytest.raises(ContinualError, match=message):
        make()


def test_removing_hooks_restores_the_backbone(tiny_backbone):
    tiny_backbone.eval()
    ids, mask = _batch(tiny_backbone, TEXTS[:2])
    plain = tiny_backbone(ids, mask)
    bank = AdapterBank(tiny_backbone, PrefixConfig(length=2))
    bank.add()
    bank.remove_hooks()
    with bank.routed([(0, 0, 2)]):
        assert torch.equal(tiny_backbone(ids, mask), plain)


@pytest.mark.parametrize("kind", ["houlsby", "lora", "prefix", "bitfit"])
def test_every_kind_learns_saves_and_reloads(tiny_backbone, kind, tmp_path):
    from continual.learners import AdapterPerTask, AdapterPerTaskConfig
    from continual.model.training import TrainerConfig
    from continual.routers import OracleRouter
    from continual.run.experiment import RunOptions, run_stream
    from continual.streams import DemoStream, Stream
    from continual.tracking import MemoryTracker

    demo = DemoStream(max_per_class=8).load()
    stream = Stream("two", demo.tasks[:2])
    cfg = TrainerConfig(epochs=2, batch_size=16, lr=1e-2)
    learner = AdapterPerTask(tiny_backbone, KINDS[kind][0], cfg, AdapterPerTaskConfig(progress=False))
    tracker = MemoryTracker()
    result = run_stream(stream, learner, OracleRouter(), tracker, RunOptions(tmp_path, progress=False))
    assert np.isfinite(result.state.R[1]).all() and result.metrics["bwt"] == 0.0
    assert tracker.metrics["trainable_params"][-1][1] == KINDS[kind][1] + 32 * 5 + 5  # adapter + head
    assert tracker.metrics["artifact_bytes"][-1][1] > 0
    learner.bank.remove_hooks()
    restored = AdapterPerTask(tiny_backbone, KINDS[kind][0], cfg, AdapterPerTaskConfig(progress=False))
    restored.load(tmp_path / "adapters", stream.tasks)
    assert restored.fingerprints() == learner.fingerprints()


def _routed_run(bank, backbone, texts, routes, monkeypatch):
    """``run(switch, grad)``: the backbone's output over ``texts`` routed by ``routes``, batched from ``switch``
    segments on (10_000: never, the loop), with or without gradients; and the number of segments."""
    from continual.adapters import bank as bank_module

    ids, mask = _batch(backbone, texts)
    order, segments = segments_for(routes)

    def run(switch: int, grad: bool = False) -> torch.Tensor:
        monkeypatch.setattr(bank_module, "BATCHED_FROM", switch)
        with torch.set_grad_enabled(grad), bank.routed(segments):
            return backbone(ids[order], mask[order])

    return run, len(segments)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "prefix"])
def test_batched_many_adapters_equal_the_segment_loop(tiny_backbone, kind, monkeypatch):
    bank = AdapterBank(tiny_backbone, KINDS[kind][0])
    for _ in range(12):
        bank.add()
    _randomise(bank)
    tiny_backbone.eval()
    routes = torch.tensor([k % 13 - 1 for k in range(len(TEXTS) * 4)])  # 12 adapters and rows routed to none
    run, segments = _routed_run(bank, tiny_backbone, TEXTS * 4, routes, monkeypatch)
    calls = []
    run_rows = type(bank.config).run_rows
    monkeypatch.setattr(type(bank.config), "run_rows", lambda *a: calls.append(1) or run_rows(*a))
    loop = run(10_000)
    assert not calls and bank.stacks is not None and set(bank.stacks._stacks) == set(bank._site_modules)
    made = {site: stack.tensors for site, stack in bank.stacks._stacks.items()}  # rows bound as adapters came
    torch.testing.assert_close(run(2), loop, rtol=1e-5, atol=1e-5)  # gathered from the stacks
    assert len(calls) == len(bank._site_modules) and segments == 13  # one batched call per site
    assert all(bank.stacks._stacks[site].tensors is tensors for site, tensors in made.items())  # not made again
    projection = torch.randn_like(loop)

    def gradients(switch: int) -> list:
        bank.zero_grad(set_to_none=True)
        (run(switch, grad=True) * projection).sum().backward()
        return [p.grad for p in bank.parameters()]

    looped, batched = gradients(10_000), gradients(2)  # training batches stack per call: gradients flow
    assert sum(g is not None for g in batched) == len(list(bank.parameters()))
    for got, expected in zip(batched, looped):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_stacked_weights_are_the_parameters_and_follow_their_changes(tiny_backbone, monkeypatch):
    bank = AdapterBank(tiny_backbone, BottleneckConfig(bottleneck_dim=4))
    for _ in range(4):
        bank.add()
    _randomise(bank)
    tiny_backbone.eval()
    routes = torch.tensor([k % 5 for k in range(12)])  # adapters 0-3, and 4 once it exists
    site = next(iter(bank._site_modules))
    down = [bank.module(k, site).down.weight for k in range(4)]
    assert len({w.untyped_storage().data_ptr() for w in down}) == 1  # one copy: the parameters are its rows
    run, _ = _routed_run(bank, tiny_backbone, TEXTS * 2, torch.where(routes == 4, 0, routes), monkeypatch)
    torch.testing.assert_close(run(2), run(10_000), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        down[1].mul_(3)  # a write lands in the stack
    torch.testing.assert_close(run(2), run(10_000), rtol=1e-5, atol=1e-5)
    bank.module(2, site).up.weight.data = torch.randn_like(bank.module(2, site).up.weight)  # new storage
    torch.testing.assert_close(run(2), run(10_000), rtol=1e-5, atol=1e-5)
    bank.add()
    _randomise(bank.adapters[4])
    run, _ = _routed_run(bank, tiny_backbone, TEXTS * 2, routes, monkeypatch)  # routed to the new one too
    torch.testing.assert_close(run(2), run(10_000), rtol=1e-5, atol=1e-5)
    assert len(bank.stacks._stacks[site].params) == 5
    bank.to(torch.float64).to(torch.float32)  # new storage for every parameter: no stale rows are kept
    assert not bank.stacks._stacks
    torch.testing.assert_close(run(2), run(10_000), rtol=1e-5, atol=1e-5)


def test_batched_heads_label_as_each_head_alone(tiny_backbone, monkeypatch):
    from continual.adapters import bank as bank_module
    from continual.learners import AdapterPerTask, AdapterPerTaskConfig
    from continual.model.training import TrainerConfig
    from continual.streams import Split, Task

    learner = AdapterPerTask(
        tiny_backbone, BottleneckConfig(bottleneck_dim=4), TrainerConfig(), AdapterPerTaskConfig(progress=False)
    )
    empty = Split((), np.zeros(0, dtype=np.int64))
    for k in range(6):  # heads of 2..7 labels: padded to 7 when stacked
        learner._allocate(Task(f"t{k}", tuple(f"l{c}" for c in range(k + 2)), empty, empty, empty))
    _randomise(learner.bank)
    _randomise(learner.heads)
    texts = TEXTS * 3
    ids, mask = _batch(tiny_backbone, texts)
    routes = torch.tensor([k % 7 - 1 for k in range(len(texts))])  # six tasks and rows routed to none
    got = {}
    for switch in (2, 10_000):
        monkeypatch.setattr(bank_module, "BATCHED_FROM", switch)
        got[switch] = learner.classify(ids, mask, routes)
    for batched, looped in zip(got[2], got[10_000]):
        torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)
    assert learner.heads._stacked is not None and (got[2].labels >= 0).sum() == (routes >= 0).sum()


def test_adapters_past_the_budget_leave_memory_and_come_back_on_demand(tiny_backbone, tmp_path):
    from continual.learners import AdapterPerTask, AdapterPerTaskConfig
    from continual.model.backbone import Backbone
    from continual.model.training import TrainerConfig
    from continual.streams import Split, Task

    empty = Split((), np.zeros(0, dtype=np.int64))
    tasks = [Task(f"t{k}", ("a", "b", "c"), empty, empty, empty) for k in range(6)]
    full = AdapterPerTask(
        tiny_backbone, BottleneckConfig(bottleneck_dim=4), TrainerConfig(), AdapterPerTaskConfig(progress=False)
    )
    for task in tasks:
        full._allocate(task)
    _randomise(full.bank)
    _randomise(full.heads)
    full.save(tmp_path)
    one = sum(p.numel() * 4 for p in full.bank.adapters[0].parameters())
    budget = 2.5 * one / 2**20  # two adapters and a half
    config = BottleneckConfig(bottleneck_dim=4)
    lazy = AdapterPerTask(
        Backbone.load(tiny_backbone.name), config, TrainerConfig(), AdapterPerTaskConfig(max_resident_mb=budget)
    )
    lazy.load(tmp_path, tasks)
    assert lazy.resident is not None and len(lazy.resident.lru) == 2 and lazy.resident.resident_bytes <= 2.5 * one
    assert lazy.fingerprints() == full.fingerprints() and lazy.trained_parameters() == full.trained_parameters()
    ids, mask = _batch(tiny_backbone, TEXTS * 2)
    routes = torch.tensor([k % 6 for k in range(12)])
    expected, got = full.classify(ids, mask, routes), lazy.classify(ids, mask, routes)
    torch.testing.assert_close(got.confidence, expected.confidence)
    assert torch.equal(got.labels, expected.labels) and lazy.resident.loads >= 4  # read back from the files
    assert lazy.resident.resident_bytes <= 2.5 * one  # the batch held all six; after it, the budget again
    dropped = next(k for k in range(6) if not lazy.resident.is_resident(k))
    path = lazy.resident.files[dropped]
    path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1]))  # one bit of a weight
    with pytest.raises(ContinualError, match=f"{path}: damaged: it changed since the adapter was loaded"):
        lazy.classify(ids, mask, torch.full((12,), dropped))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_files_hold_the_model_that_was_evaluated(tiny_backbone, dtype, tmp_path):
    from safetensors import safe_open

    from continual.learners import AdapterPerTask, AdapterPerTaskConfig
    from continual.learners.adapter_per_task import SAVE_DTYPES
    from continual.model.training import TrainerConfig
    from continual.streams import DemoStream

    task = DemoStream(max_per_class=8).load().tasks[0]
    cfg = TrainerConfig(epochs=1, batch_size=16, lr=1e-2)
    sizes = {}
    for stored in ("float32", dtype):
        learner = AdapterPerTask(
            tiny_backbone, KINDS["lora"][0], cfg, AdapterPerTaskConfig(progress=False, save_dtype=stored)
        )
        learner.learn([task])
        (path,) = learner.save(tmp_path / stored)
        sizes[stored] = _tensor_bytes(path)
        learner.bank.remove_hooks()
    weights = [*learner.bank.parameters(), *learner.heads.parameters()]
    assert all(torch.equal(p, p.to(SAVE_DTYPES[dtype]).float()) for p in weights)  # rounded once trained
    with safe_open(str(path), framework="pt") as f:
        assert {f.get_tensor(name).dtype for name in f.keys()} == {SAVE_DTYPES[dtype]}  # noqa: SIM118
    assert sizes[dtype] * 2 == sizes["float32"]
    restored = AdapterPerTask(
        tiny_backbone, KINDS["lora"][0], cfg, AdapterPerTaskConfig(progress=False)
    )  # loads into float32
    restored.load(tmp_path / dtype, [task])
    assert restored.fingerprints() == learner.fingerprints()
    restored.bank.remove_hooks()
    with pytest.raises(ContinualError, match="learner.save_dtype must be one of"):
        AdapterPerTask(tiny_backbone, KINDS["lora"][0], cfg, AdapterPerTaskConfig(save_dtype="int8"))


def _tensor_bytes(path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return sum(f.get_tensor(name).nbytes for name in f.keys())  # noqa: SIM118  # not a dict
