"""The baseline learners on the tiny random BERT and a 2-task stream: run, forget, remember, resume, refuse."""

import json

import numpy as np
import pytest
import torch

from continual import assemble
from continual.adapters import BottleneckConfig
from continual.checkpoint import RunState
from continual.errors import ContinualError
from continual.evaluation import Evaluator
from continual.experiment import run_stream
from continual.learners import JointLearner, SequentialLearner
from continual.routers import EntropyRouter, OracleRouter, PrototypeRouter
from continual.streams import DemoStream, Stream
from continual.tracking import MemoryTracker
from continual.training import TrainerConfig

from conftest import compose, run_in_process

ADAPTER = BottleneckConfig(bottleneck_dim=8)
TRAINER = TrainerConfig(epochs=2, batch_size=16, lr=2e-2, log_every=2)
# name -> (class, options): the conf/learner files, scaled down to the tiny model
LEARNERS = {
    "seq_finetune": (SequentialLearner, {"base": "finetune", "backbone_lr": 1e-3}),
    "shared_adapter": (SequentialLearner, {"base": "adapter"}),
    "replay": (
        SequentialLearner,
        {"base": "adapter", "memory": {"size": 12, "sampling": "per_class", "batch_size": 8}},
    ),
    "replay_finetune": (SequentialLearner, {"base": "finetune", "memory": {"size": 12}}),
    "ewc": (SequentialLearner, {"base": "adapter", "ewc": {"lambda": 10.0, "fisher_samples": 16}}),
    "ewc_finetune": (SequentialLearner, {"base": "finetune", "ewc": {"lambda": 10.0, "fisher_samples": 8}}),
    "joint": (JointLearner, {"base": "adapter"}),
}


def _stream() -> Stream:
    demo = DemoStream(max_per_class=10).load()
    return Stream("two", demo.tasks[:2])


def _learner(name, backbone, seed=0):
    cls, options = LEARNERS[name]
    return cls(backbone, ADAPTER, TRAINER, seed=seed, progress=False, **options)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _no_nan(text: str):
    def refuse(constant):
        raise AssertionError(f"results.json holds {constant}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_baseline_runs_through_run_stream_with_the_same_layout(name, tiny_backbone, tmp_path):
    stream = _stream()
    learner = _learner(name, tiny_backbone)
    tracker = MemoryTracker()
    result = run_stream(stream, learner, OracleRouter(), tracker, tmp_path, progress=False)
    names, head = stream.task_names, _count(torch.nn.Linear(32, 5))
    shared = _count(tiny_backbone) if LEARNERS[name][1]["base"] == "finetune" else _count(learner.bank.adapters[0])
    results = _no_nan((tmp_path / "results.json").read_text())
    assert {p.name for p, _ in tracker.artifacts} >= {
        "accuracy_matrix.csv",
        "accuracy_matrix.png",
        "adapters",
        "results.json",
        "router.safetensors",
    }
    assert sorted(p.name for p in (tmp_path / "adapters").glob("[0-9][0-9]_*.safetensors")) == [
        "00_banking.safetensors",
        "01_travel.safetensors",
    ]
    if name == "joint":  # one step: the final row only; nothing to transfer backwards
        assert np.all(np.isnan(result.state.R[0])) and np.all(np.isfinite(result.state.R[1]))
        assert tracker.metrics["avg_acc"] == [(1, pytest.approx(np.mean(result.state.R[1])))]
        assert all(tracker.metrics[f"acc/{n}"] == [(1, result.state.R[1, j])] for j, n in enumerate(names))
        assert "bwt" not in tracker.metrics and "forgetting" not in tracker.metrics
        assert results["bwt"] is None and results["avg_acc"] == pytest.approx(np.mean(result.state.R[1]))
        assert tracker.metrics["trainable_params"] == [(1, shared + 2 * head)]
        assert "val_acc/joint" in tracker.metrics and "train_loss/joint" in tracker.metrics
        assert RunState.load(tmp_path).completed == 2
        return
    assert np.all(np.isfinite(result.state.R[np.tril_indices(2)])) and np.isnan(result.state.R[0, 1])
    for j, task in enumerate(names):
        assert [s for s, _ in tracker.metrics[f"acc/{task}"]] == list(range(j, 2))
        assert f"train_loss/{task}" in tracker.metrics and f"val_acc/{task}" in tracker.metrics
    assert [s for s, _ in tracker.metrics["bwt"]] == [1] and results["bwt"] == pytest.approx(result.metrics["bwt"])
    replayed_heads = 1 if "replay" in name else 0  # task 1 replays task 0 through task 0's head
    assert [v for _, v in tracker.metrics["trainable_params"]] == [shared + head, shared + (1 + replayed_heads) * head]
    assert tracker.metrics["router_acc"][-1][1] == 1.0


def test_seq_finetune_moves_the_backbone_and_old_predictions(tiny_backbone):
    stream = _stream()
    learner = _learner("seq_finetune", tiny_backbone)
    before = {n: t.clone() for n, t in tiny_backbone.state_dict().items()}
    learner.learn([stream.tasks[0]])
    after_first = {n: t.clone() for n, t in tiny_backbone.state_dict().items()}
    assert any(not torch.equal(before[n], after_first[n]) for n in before)
    assert not any(p.requires_grad for p in tiny_backbone.parameters())  # frozen again outside training
    ids = _pad(tiny_backbone.tokenize(list(stream.tasks[0].test.texts), 32))
    task_ids = torch.zeros(ids[0].shape[0], dtype=torch.long)
    old, digest = learner.classify(*ids, task_ids).confidence, learner.fingerprints()
    learner.learn([stream.tasks[1]])
    assert any(not torch.equal(after_first[n], t) for n, t in tiny_backbone.state_dict().items())
    # task 0's head is untouched, yet its outputs moved (forgetting), and so did its fingerprint
    assert not torch.allclose(old, learner.classify(*ids, task_ids).confidence)
    assert learner.fingerprints().tasks[0] != digest.tasks[0] and learner.fingerprints().backbone != digest.backbone


def _pad(tokens):
    from continual.training import pad

    return pad(tokens, 0, torch.device("cpu"))


def test_shared_adapter_moves_only_the_shared_adapter_and_memo_stays_exact(tiny_backbone):
    stream = _stream()
    learner = _learner("replay", tiny_backbone)
    backbone = {n: t.clone() for n, t in tiny_backbone.state_dict().items()}
    router = OracleRouter()
    memo, plain = (Evaluator(learner, router, stream.tasks, memoise=m) for m in (True, False))
    states = []
    for i, task in enumerate(stream.tasks):
        learner.learn([task])
        router.add_task(i, task, None, None)
        memo.new_step()
        states.append({n: t.clone() for n, t in learner.bank.adapters[0].state_dict().items()})
        for j in range(i + 1):  # old heads and the shared adapter changed: the memo must recompute, not reuse
            assert memo.evaluate(j).accuracy == plain.evaluate(j).accuracy
    assert any(not torch.equal(states[0][n], states[1][n]) for n in states[0])
    assert all(torch.equal(backbone[n], t) for n, t in tiny_backbone.state_dict().items())
    assert len(learner.memory) == 12 and set(learner.memory.tasks.tolist()) == {0, 1}


@pytest.mark.parametrize(
    "name, router, message",
    [
        (
            "joint",
            PrototypeRouter(),
            "learner JointLearner trains all tasks at once and has no task stream to route: use router=oracle",
        ),
        (
            "seq_finetune",
            EntropyRouter(),
            "learner SequentialLearner fine-tunes the backbone, and learned routers need it frozen: use router=oracle",
        ),
        ("ewc_finetune", PrototypeRouter(), "use router=oracle"),
    ],
)
def test_bad_combinations_fail_before_training(name, router, message, tiny_backbone, tmp_path):
    learner = _learner(name, tiny_backbone)
    with pytest.raises(ContinualError, match=message):
        run_stream(_stream(), learner, router, MemoryTracker(), tmp_path, progress=False)
    assert learner.tasks == []


def test_a_learned_router_works_on_a_shared_adapter(tiny_backbone, tmp_path):
    result = run_stream(
        _stream(),
        _learner("shared_adapter", tiny_backbone),
        PrototypeRouter(),
        MemoryTracker(),
        tmp_path,
        progress=False,
    )
    assert np.isfinite(result.state.router_accuracy)


def test_bad_options_name_their_config_field(tiny_backbone):
    with pytest.raises(ContinualError, match="learner.base must be one of"):
        SequentialLearner(tiny_backbone, ADAPTER, TRAINER, base="lora")
    with pytest.raises(ContinualError, match="learner.memory.sampling"):
        SequentialLearner(tiny_backbone, ADAPTER, TRAINER, memory={"sampling": "ring"})
    with pytest.raises(ContinualError, match="learner.backbone_lr"):
        SequentialLearner(tiny_backbone, ADAPTER, TRAINER, base="finetune", backbone_lr=0)
    with pytest.raises(ContinualError, match="joint sees every task at once: it takes no memory"):
        assemble.build({"_target_": "continual.learners.JointConfig", "memory": {"size": 4}}, "learner")
    with pytest.raises(ContinualError, match=r"learner.head_dropout must be a number in \[0, 1\), got 2"):
        assemble.build({"_target_": "continual.learners.SequentialConfig", "head_dropout": 2}, "learner")


class _DiesAtStep(MemoryTracker):
    """Raises when a step's metrics are logged: after the learner saved that step, before its checkpoint."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def log_metrics(self, metrics, step):
        if step == self.step:
            raise KeyboardInterrupt("killed")
        super().log_metrics(metrics, step)


@pytest.mark.parametrize("name", ["replay", "ewc", "replay_finetune"])
def test_resume_after_a_kill_while_saving_equals_an_uninterrupted_run(name, tiny_model_dir, tmp_path):
    from continual.backbone import Backbone

    stream = _stream()
    whole = run_stream(
        stream,
        _learner(name, Backbone.load(str(tiny_model_dir)), seed=5),
        OracleRouter(),
        MemoryTracker(),
        tmp_path / "whole",
        progress=False,
    )
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_stream(
            stream,
            _learner(name, Backbone.load(str(tiny_model_dir)), seed=5),
            OracleRouter(),
            _DiesAtStep(1),
            killed,
            progress=False,
        )
    checkpoint = RunState.load(killed)
    assert checkpoint.completed == 1 and (killed / "adapters" / "state_02.safetensors").is_file()  # saved, not recorded
    learner = _learner(name, Backbone.load(str(tiny_model_dir)), seed=5)
    resumed = run_stream(stream, learner, OracleRouter(), MemoryTracker(), killed, progress=False, state=checkpoint)
    np.testing.assert_array_equal(resumed.state.R, whole.state.R)
    again = _learner(name, Backbone.load(str(tiny_model_dir)), seed=5)
    again.load(killed / "adapters", stream.tasks)
    assert learner.fingerprints() == again.fingerprints()
    if learner.memory is not None:
        assert again.memory.tokens == learner.memory.tokens and again.memory.seen == learner.memory.seen
    if learner.ewc is not None:
        assert all(torch.equal(again.ewc.fisher[n], f) for n, f in learner.ewc.fisher.items())
    assert sorted(p.name for p in (killed / "adapters").glob("state_*")) == [
        "state_01.safetensors",
        "state_02.safetensors",
    ]


def test_state_refuses_another_learner_configuration(tiny_backbone, tmp_path):
    learner = _learner("replay", tiny_backbone)
    learner.learn(_stream().tasks[:1])
    learner.save(tmp_path)
    other = SequentialLearner(tiny_backbone, ADAPTER, TRAINER, memory={"size": 99}, progress=False)
    with pytest.raises(ContinualError, match="saved for memory="):
        other.load(tmp_path, _stream().tasks[:1])


@pytest.mark.parametrize("option", ["seq_finetune", "shared_adapter", "replay", "ewc", "joint"])
def test_every_learner_config_builds_its_learner(option, tiny_backbone):
    from continual.cli import plain
    from continual.learners import Schedule

    config = assemble.build(plain(compose([f"learner={option}", "progress=false"]).learner), "learner")
    learner = config.build(tiny_backbone, ADAPTER, TRAINER, seed=0)
    assert (learner.schedule is Schedule.ALL_AT_END) == (option == "joint")
    assert learner.router_limit == config.router_limit
    assert (learner.router_limit is None) == (option in ("shared_adapter", "replay", "ewc"))
    assert (learner.memory is not None) == (option == "replay") and (learner.ewc is not None) == (option == "ewc")


def test_the_cli_refuses_a_learned_router_on_joint_before_training(tmp_path, tiny_model_dir):
    with pytest.raises(ContinualError) as caught:
        run_in_process(
            tmp_path / "run",
            [
                "learner=joint",
                "router=prototype",
                "stream.max_per_class=4",
                f"backbone.name={tiny_model_dir}",
                "progress=false",
                f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            ],
        )
    assert str(caught.value) == (
        "learner=joint trains all tasks at once and has no task stream to route: use router=oracle"
    )
    assert not (tmp_path / "run" / "adapters").exists()  # nothing was trained
