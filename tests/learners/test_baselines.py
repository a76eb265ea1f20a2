"""The single-head baselines on the tiny random BERT: both protocols, the expanding head, each technique, resume."""

import json

import numpy as np
import pytest
import torch

from continual.adapters import BottleneckConfig
from continual.commands.cli import plain
from continual.errors import ContinualError
from continual.learners import Head, JointConfig, Schedule, SingleHeadConfig
from continual.learners.base import tokenize
from continual.learners.head_init import validated_probe
from continual.model.training import TrainerConfig
from continual.routers import HeadRouter, OracleRouter, PrototypeRouter
from continual.run import assemble
from continual.run.checkpoint import RunState
from continual.run.compat import check as check_compatible
from continual.run.evaluation import Evaluator
from continual.run.experiment import RunOptions, run_stream
from continual.streams import DemoStream, Stream, Task
from continual.tracking import MemoryTracker

from conftest import compose, run_in_process

ADAPTER = BottleneckConfig(bottleneck_dim=8)
TRAINER = TrainerConfig(epochs=2, batch_size=16, lr=2e-2, log_every=2)
# name -> config: the conf/learner files, scaled down to the tiny model
LEARNERS = {
    "seq_finetune": SingleHeadConfig(base="finetune", backbone_lr=1e-3, progress=False),
    "shared_adapter": SingleHeadConfig(base="adapter", progress=False),
    "replay": SingleHeadConfig(
        method="er", memory={"size": 12, "sampling": "per_class", "batch_size": 8}, progress=False
    ),
    "derpp": SingleHeadConfig(base="adapter", method="derpp", memory={"size": 12, "batch_size": 8}, progress=False),
    "lwf": SingleHeadConfig(base="adapter", method="lwf", progress=False),
    "ewc": SingleHeadConfig(method="ewc", ewc={"lambda": 10.0, "fisher_samples": 8}, progress=False),
    "agem": SingleHeadConfig(base="adapter", method="agem", memory={"size": 12, "batch_size": 8}, progress=False),
    "joint": JointConfig(base="adapter", progress=False),
}


def _stream(tasks: int = 2) -> Stream:
    demo = DemoStream(max_per_class=10).load()
    return Stream("two", demo.tasks[:tasks])


def _learner(name, backbone, seed=0):
    return LEARNERS[name].build(backbone, ADAPTER, TRAINER, seed)


def _no_nan(text: str):
    def refuse(constant):
        raise AssertionError(f"results.json holds {constant}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_baseline_runs_both_protocols_on_one_growing_head(name, tiny_backbone, tmp_path):
    stream = _stream()
    learner = _learner(name, tiny_backbone)
    tracker = MemoryTracker()
    result = run_stream(stream, learner, HeadRouter(), tracker, RunOptions(tmp_path, progress=False))
    R, oracle = result.state.R, result.state.oracle_R
    assert learner.classifier.out_features == 10 and len(learner.classes) == 10  # 5 + 5 labels, one head
    results = _no_nan((tmp_path / "results.json").read_text())
    assert sorted(p.name for p in (tmp_path / "adapters").glob("[0-9][0-9]_*.safetensors")) == [
        "00_banking.safetensors",
        "01_travel.safetensors",
    ]
    if name == "joint":  # one step: the final row only; nothing to transfer backwards
        assert np.all(np.isnan(R[0])) and np.all(np.isfinite(R[1])) and np.all(np.isfinite(oracle[1]))
        assert tracker.metrics["avg_acc"] == [(1, pytest.approx(np.mean(R[1])))]
        assert "bwt" not in tracker.metrics and results["bwt"] is None
        assert RunState.load(tmp_path).completed == 2
        return
    assert np.all(np.isfinite(R[np.tril_indices(2)])) and np.isnan(R[0, 1])
    for j, task in enumerate(stream.task_names):
        assert [s for s, _ in tracker.metrics[f"acc/{task}"]] == list(range(j, 2))
        assert [v for _, v in tracker.metrics[f"oracle_acc/{task}"]] == list(oracle[j:, j])
    assert [s for s, _ in tracker.metrics["oracle_bwt"]] == [1] and results["oracle_bwt"] == pytest.approx(
        oracle[1, 0] - oracle[0, 0]
    )
    assert np.all(R[np.tril_indices(2)] <= oracle[np.tril_indices(2)] + 1e-12)  # a task id can only help


def test_sequential_fine_tuning_collapses_without_task_ids_but_not_with_them(tiny_model_dir, tmp_path):
    from continual.model.backbone import Backbone

    learner = SingleHeadConfig(base="finetune", backbone_lr=1e-3, progress=False).build(
        Backbone.load(str(tiny_model_dir)), ADAPTER, TrainerConfig(epochs=8, batch_size=16, lr=2e-2), 0
    )
    result = run_stream(_stream(3), learner, HeadRouter(), MemoryTracker(), RunOptions(tmp_path, progress=False))
    state = result.state
    # the head now favours the last task's labels: the first task's inputs are sent there (class-IL) ...
    assert state.router_R[2, 0] < 0.35 and state.R[2, 0] < state.R[0, 0] - 0.2
    # ... while, told the task, the same logits still tell its labels apart much better
    assert state.oracle_R[2, 0] > state.R[2, 0] + 0.2 and result.metrics["bwt"] < result.metrics["oracle_bwt"]


def test_the_head_keeps_old_rows_when_it_grows_and_a_shared_label_space_adds_no_class(tiny_backbone):
    learner = _learner("shared_adapter", tiny_backbone)
    banking, travel = _stream().tasks
    learner.learn([banking])
    rows = learner.classifier.weight.detach().clone()
    learner._add_task(travel)
    assert torch.equal(learner.classifier.weight[:5], rows) and learner.classifier.out_features == 10
    again = Task("banking_again", banking.labels, banking.train, banking.validation, banking.test)
    shared = [Task(t.name, t.labels, t.train, t.validation, t.test, label_space="s") for t in (banking, again)]
    learner = _learner("shared_adapter", tiny_backbone)
    learner.learn(shared[:1])
    learner._add_task(shared[1])
    assert learner.classifier.out_features == 5 and list(learner.task_classes[1]) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("base", ["adapter", "finetune"])
def test_new_head_rows_start_at_the_probe_on_todays_features_and_old_rows_stay(base, tiny_backbone):
    """A learning rate too small to move anything: after each task the head is where it started. The second
    task's rows are the validated probe on its texts through the shared weights as the first task left them."""
    config = SingleHeadConfig(base=base, backbone_lr=1e-3, head_init="probe", progress=False)
    learner = config.build(tiny_backbone, ADAPTER, TrainerConfig(epochs=1, batch_size=16, lr=1e-12), 0)
    banking, travel = _stream().tasks
    learner.learn([banking])
    with torch.no_grad():  # the shared weights as a trained first task would leave them
        for p in learner.shared.parameters():
            p.add_(0.05 * torch.randn_like(p))
    first_rows = learner.classifier.weight.detach().clone()
    features = {s: learner._pooled(tokenize(learner, s.texts)) for s in (travel.train, travel.validation)}
    learner.learn([travel])
    examples = [(features[s], torch.as_tensor(s.labels)) for s in (travel.train, travel.validation)]
    weight, bias, l2 = validated_probe(*examples, 5)
    assert torch.equal(learner.classifier.weight[:5], first_rows)
    assert torch.allclose(learner.classifier.weight[5:], weight, atol=2e-3)
    assert torch.allclose(learner.classifier.bias[5:], bias, atol=2e-3)


def test_a_shared_label_space_counts_a_right_label_from_any_task(tiny_backbone):
    """Two tasks with the same labels in one space: every input routed to task 0's adapter still counts."""
    from continual.learners import AdapterPerTask, AdapterPerTaskConfig
    from continual.routers import Reads, Routing

    banking = _stream().tasks[0]
    tasks = [
        Task(name, banking.labels, banking.train, banking.validation, banking.test, label_space="s")
        for name in ("a", "b")
    ]

    class Always0:
        reads, accept_rate = Reads.FEATURES, None

        def route(self, inputs):
            return Routing(np.zeros(inputs.size, dtype=np.int64))

    learner = AdapterPerTask(tiny_backbone, ADAPTER, TRAINER, AdapterPerTaskConfig(progress=False))
    for task in tasks:
        learner.learn([task])
    evaluation = Evaluator(learner, Always0(), tasks).evaluate(1)
    assert evaluation.router_accuracy == 0.0  # all went to the other task ...
    per_task = Evaluator(learner, Always0(), [Task(t.name, t.labels, t.train, t.validation, t.test) for t in tasks])
    assert per_task.evaluate(1).accuracy == 0.0  # ... which is always wrong with a label space per task,
    assert evaluation.accuracy == Evaluator(learner, OracleRouter(), tasks).evaluate(0).oracle_accuracy  # not here


def test_memories_are_bounded_saved_and_counted_in_the_stored_bytes(tiny_backbone, tmp_path):
    tracker = MemoryTracker()
    learner = _learner("derpp", tiny_backbone)
    run_stream(_stream(), learner, HeadRouter(), tracker, RunOptions(tmp_path, progress=False))
    assert len(learner.technique.tokens) == 12 and all(len(z) <= 10 for z in learner.technique.logits)
    assert {len(z) for z in learner.technique.logits} == {5, 10}  # logits as stored: before and after travel came
    state = next((tmp_path / "adapters").glob("state_02.safetensors"))
    assert tracker.metrics["artifact_bytes"][-1][1] >= state.stat().st_size > 0


class _DiesAtStep(MemoryTracker):
    """Raises when a step's metrics are logged: after the learner saved that step, before its checkpoint."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def log_history(self, rows):
        if any(step == self.step and "avg_acc" in metrics for metrics, step in rows):
            raise KeyboardInterrupt("killed")
        super().log_history(rows)


@pytest.mark.parametrize("name", ["replay", "derpp", "lwf", "ewc"])
def test_resume_after_a_kill_while_saving_equals_an_uninterrupted_run(name, tiny_model_dir, tmp_path):
    from continual.model.backbone import Backbone

    stream = _stream()
    whole = run_stream(
        stream,
        _learner(name, Backbone.load(str(tiny_model_dir)), seed=5),
        HeadRouter(),
        MemoryTracker(),
        RunOptions(tmp_path / "whole", progress=False),
    )
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_stream(
            stream,
            _learner(name, Backbone.load(str(tiny_model_dir)), seed=5),
            HeadRouter(),
            _DiesAtStep(1),
            RunOptions(killed, progress=False),
        )
    state = RunState.load(killed)
    assert state.completed == 1 and (killed / "adapters" / "state_02.safetensors").is_file()  # saved, not recorded
    learner = _learner(name, Backbone.load(str(tiny_model_dir)), seed=5)
    resumed = run_stream(
        stream, learner, HeadRouter(), MemoryTracker(), RunOptions(killed, progress=False), state=state
    )
    np.testing.assert_array_equal(resumed.state.R, whole.state.R)
    np.testing.assert_array_equal(resumed.state.oracle_R, whole.state.oracle_R)
    again = _learner(name, Backbone.load(str(tiny_model_dir)), seed=5)
    again.load(killed / "adapters", stream.tasks)
    assert learner.fingerprints() == again.fingerprints()
    assert {k: v.tolist() for k, v in again.technique.state_dict().items()} == {
        k: v.tolist() for k, v in learner.technique.state_dict().items()
    }
    assert sorted(p.name for p in (killed / "adapters").glob("state_*")) == [
        "state_01.safetensors",
        "state_02.safetensors",
    ]


def test_state_refuses_another_learner_configuration(tiny_backbone, tmp_path):
    learner = _learner("replay", tiny_backbone)
    learner.learn(_stream().tasks[:1])
    learner.save(tmp_path)
    other = SingleHeadConfig(method="er", memory={"size": 99}).build(tiny_backbone, ADAPTER, TRAINER, 0)
    with pytest.raises(ContinualError, match="saved for learner="):
        other.load(tmp_path, _stream().tasks[:1])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"base": "lora"}, "learner.base must be one of"),
        ({"method": "icarl"}, "learner.method must be one of"),
        ({"method": "er", "memory": {"sampling": "ring"}}, "learner.memory.sampling"),
        ({"backbone_lr": 0}, "learner.backbone_lr"),
        ({"head_dropout": 2}, r"learner.head_dropout must be a number in \[0, 1\), got 2"),
        ({"head_init": "zero"}, r"learner.head_init must be one of \['random', 'lda', 'probe'\], got 'zero'"),
        ({"derpp": {"gamma": 1}}, "learner.derpp: unknown keys"),
        ({"lwf": {"temperature": 0}}, "learner.lwf.temperature must be a positive number, got 0"),
    ],
)
def test_bad_options_name_their_config_field(values, message):
    with pytest.raises(ContinualError, match=message):
        assemble.build({"_target_": "continual.learners.SingleHeadConfig", **values}, "learner")
    with pytest.raises(ContinualError, match="joint sees every task at once"):
        assemble.build({"_target_": "continual.learners.JointConfig", "method": "er"}, "learner")


@pytest.mark.parametrize("option", ["seq_finetune", "shared_adapter", "replay", "derpp", "lwf", "ewc", "agem", "joint"])
def test_every_learner_config_builds_its_learner(option, tiny_backbone):
    config = assemble.build(plain(compose([f"learner={option}", "progress=false"]).learner), "learner")
    learner = config.build(tiny_backbone, ADAPTER, TRAINER, seed=0)
    assert (learner.schedule is Schedule.ALL_AT_END) == (option == "joint") and learner.head is Head.ALL_SEEN
    assert learner.config.method == {"replay": "er"}.get(
        option, option if option in ("derpp", "lwf", "ewc", "agem") else "none"
    )


def test_routers_and_learners_that_do_not_fit_are_one_line():
    stream = _stream()
    with pytest.raises(ContinualError, match="has one head over all labels seen so far"):
        check_compatible(stream, PrototypeRouter(), Head.ALL_SEEN, "learner=seq_finetune")
    with pytest.raises(ContinualError, match="router=head reads one head over all labels"):
        check_compatible(stream, HeadRouter(), Head.PER_TASK, "learner=adapter_per_task")
    one = Stream(stream.name, stream.tasks[:1])
    check_compatible(one, HeadRouter(), Head.ALL_SEEN, "learner=seq_finetune")  # one task is fine


def test_a_single_head_learner_routes_itself_whatever_router_is_configured(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    result = run_in_process(
        run,
        [
            "learner=shared_adapter",
            "router=prototype",
            "stream.max_per_class=4",
            f"backbone.name={tiny_model_dir}",
            "progress=false",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        ],
    )
    from conftest import mlflow_runs

    (logged,) = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert logged.data.tags["router"] == "head" and np.isfinite(result.state.router_accuracy)
