"""``continual report``: fake runs in a fresh sqlite MLflow store, aggregated and rendered; one real tiny run."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import sys
import time
import warnings

import pytest
from hydra.core.global_hydra import GlobalHydra
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from continual.commands import cli, report  # noqa: F401
from continual.errors import ContinualError
from continual.tracking.runs import RunStore

GROUP_TAGS = {"learner": "adapter_per_task", "adapter": "pfeiffer", "backbone": "minilm"}


def _log_run(
    client: MlflowClient,
    experiment_id: str,
    *,
    router: str,
    seed: int,
    metrics: dict[str, list[float]],
    status: str = "FINISHED",
    parent: str | None = None,
    epochs: int = 1,
    stream: str = "demo",
) -> str:
    """A fake stream run: the run tags, two params, each metric's values at steps 0, 1, ..."""
    tags = {**GROUP_TAGS, "stream": stream, "router": router, "seed": str(seed), "order": "None"}
    if parent is not None:
        tags["mlflow.parentRunId"] = parent
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    now = int(time.time() * 1000)
    # the last step is logged *first*: the report must take the last step's value, not the last one logged
    items = [
        Metric(k, v, now + len(values) - step, step)
        for k, values in metrics.items()
        for step, v in reversed(list(enumerate(values)))
    ]
    client.log_batch(
        run_id,
        metrics=items,
        params=[Param("seed", str(seed)), Param("trainer.epochs", str(epochs))],
        tags=[RunTag("kind", "fake")],
    )
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def _totals(params: float, seconds: float) -> dict[str, list[float]]:
    return {"total_trainable_params": [params], "total_train_seconds": [seconds]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store (creating its schema costs seconds) with experiment 'exp' and an empty 'other'.

    'exp': a sweep parent with three oracle children (seeds 0-2) plus a RUNNING and a FAILED one;
    outside the sweep two prototype runs of another stream, without totals and with ``router_acc`` on
    one of them only, and one oracle run with trainer.epochs=3.
    """
    path = tmp_path_factory.mktemp("report") / "mlflow.db"
    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("exp")
    client.create_experiment("other")
    parent = client.create_run(exp, tags={"sweep": "runs/multirun/x", "sweep_overrides": "seed=0,1,2"}).info.run_id
    client.log_batch(parent, metrics=[Metric("jobs", 3, 0, 0)])
    client.set_terminated(parent, "FINISHED")
    children = []
    for seed, (acc, bwt, secs) in enumerate([(0.80, -0.02, 10.0), (0.82, 0.0, 12.0), (0.87, -0.01, 14.0)]):
        children.append(
            _log_run(
                client,
                exp,
                router="oracle",
                seed=seed,
                parent=parent,
                metrics={
                    "avg_acc": [0.99, acc],
                    "bwt": [bwt],
                    "forgetting": [-bwt],
                    "router_acc": [1.0, 1.0],
                    **_totals(1000, secs),
                },
            )
        )
    _log_run(client, exp, router="oracle", seed=3, parent=parent, status="RUNNING", metrics={"avg_acc": [0.1]})
    _log_run(client, exp, router="oracle", seed=4, parent=parent, status="FAILED", metrics={"avg_acc": [0.1]})
    # no run-level totals: summed from the per-task values (step 1 logged twice, as by a resumed run)
    _log_run(
        client,
        exp,
        router="prototype",
        seed=0,
        stream="cl5",
        metrics={
            "avg_acc": [0.9, 0.70],
            "router_acc": [1.0, 0.9],
            "trainable_params": [100, 200],
            "train_seconds": [1.5, 2.5],
        },
    )
    _log_run(
        client,
        exp,
        router="prototype",
        seed=1,
        stream="cl5",
        metrics={"avg_acc": [0.9, 0.75], "trainable_params": [100, 200], "train_seconds": [1.0, 2.0]},
    )
    run_id = _log_run(client, exp, router="prototype", seed=1, stream="cl5", status="FINISHED", metrics={})
    client.log_batch(run_id, metrics=[Metric("train_seconds", 9.0, int(time.time() * 1000) + 99, 1)])
    client.delete_run(run_id)  # deleted runs are not searched at all
    _log_run(client, exp, router="oracle", seed=0, epochs=3, metrics={"avg_acc": [0.95], **_totals(1000, 30.0)})
    return {
        "uri": uri,
        "path": path,
        "client": client,
        "runs": RunStore(client),
        "parent": parent,
        "children": children,
    }


def test_groups_aggregate_final_values_with_sample_std(store):
    rep = report.build_report(store["runs"], "exp")
    assert rep.group_by == ("stream", "learner", "router", "adapter")  # no run has a method tag: that key is dropped
    assert [g.key for g in rep.groups] == [
        ("cl5", "adapter_per_task", "prototype", "pfeiffer"),
        ("demo", "adapter_per_task", "oracle", "pfeiffer"),
    ]
    proto, oracle = rep.groups
    assert oracle.n == 4 and proto.n == 2  # the epochs=3 run joins the oracle group: epochs is not a group key
    acc = oracle.stats["avg_acc"]
    assert (acc.mean, acc.std, acc.n) == (
        pytest.approx(statistics.fmean([0.80, 0.82, 0.87, 0.95])),
        pytest.approx(statistics.stdev([0.80, 0.82, 0.87, 0.95])),
        4,
    )
    assert oracle.stats["bwt"].mean == pytest.approx(-0.01) and oracle.stats["bwt"].n == 3
    assert oracle.stats["total_train_seconds"].mean == pytest.approx(16.5)  # (10 + 12 + 14 + 30) / 4
    assert oracle.stats["total_trainable_params"].std == 0.0
    assert proto.stats["avg_acc"].mean == pytest.approx(0.725)
    assert proto.stats["avg_acc"].std == pytest.approx(math.sqrt(2) * 0.025)
    assert proto.stats["router_acc"].n == 1 and math.isnan(proto.stats["router_acc"].std)
    assert proto.stats["bwt"] is None
    assert proto.stats["total_trainable_params"].mean == 300  # summed over steps 0 and 1
    assert proto.stats["total_train_seconds"].mean == pytest.approx(3.5)  # (1.5 + 2.5 + 1.0 + 2.0) / 2
    assert rep.skipped == {"FAILED": 1, "RUNNING": 1, "without avg_acc (sweep parents)": 1}
    assert rep.note() == (
        "6 finished runs of experiment 'exp' in 2 groups; skipped 3 runs "
        "(1 FAILED, 1 RUNNING, 1 without avg_acc (sweep parents))"
    )


def test_markdown_and_csv(store):
    rep = report.build_report(store["runs"], "exp")
    lines = report.to_markdown(rep).splitlines()
    assert lines[0] == (
        "| stream | learner | router | adapter | n | ACC | BWT | forgetting | ACC (task id) | BWT (task id) "
        "| forgetting (task id) | learning acc | router acc | trainable params | storage (MB) | train time (s) |"
    )
    assert lines[1] == "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    assert lines[2] == (
        "| cl5 | adapter_per_task | prototype | pfeiffer | 2 | 72.50 ± 3.54 | — | — | — | — | — | — | 90.00 (n=1) "
        "| 300 ± 0 | — | 3.5 ± 0.7 |"
    )
    assert lines[3] == (
        "| demo | adapter_per_task | oracle | pfeiffer | 4 | 86.00 ± 6.68 | -1.00 ± 1.00 (n=3) "
        "| 1.00 ± 1.00 (n=3) | — | — | — | — | 100.00 ± 0.00 (n=3) | 1,000 ± 0 | — | 16.5 ± 9.1 |"
    )
    rows = list(csv.DictReader(io.StringIO(report.to_csv(rep))))
    assert [r["router"] for r in rows] == ["prototype", "oracle"]
    assert float(rows[1]["avg_acc_mean"]) == pytest.approx(0.86) and rows[1]["n"] == "4"
    assert float(rows[1]["avg_acc_std"]) == pytest.approx(statistics.stdev([0.80, 0.82, 0.87, 0.95]))
    assert (rows[0]["bwt_mean"], rows[0]["bwt_std"], rows[0]["bwt_n"]) == ("", "", "0")
    assert (rows[0]["router_acc_std"], rows[0]["router_acc_n"]) == ("", "1")


def test_parent_filter_group_by_params_and_outputs(store, tmp_path):
    rep = report.build_report(
        store["runs"], "exp", group_by=["router", "params.trainer.epochs"], parent=store["parent"]
    )
    assert [(g.key, set(g.run_ids)) for g in rep.groups] == [(("oracle", "1"), set(store["children"]))]
    assert rep.groups[0].stats["avg_acc"].mean == pytest.approx(0.83)
    assert rep.groups[0].stats["avg_acc"].std == pytest.approx(math.sqrt(0.0013))
    assert rep.skipped == {"FAILED": 1, "RUNNING": 1}
    rep = report.build_report(store["runs"], "exp", group_by=["tags.seed"], filter_string="params.trainer.epochs = '3'")
    assert [(g.key, g.n) for g in rep.groups] == [(("0",), 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a single-run group's missing error bar must not warn
        paths = report.write_outputs(rep, tmp_path / "out")
    assert [p.name for p in paths] == ["results.md", "results.csv", "results.png"]
    assert (
        (tmp_path / "out" / "results.md").read_text().endswith("\n\n1 finished runs of experiment 'exp' in 1 groups\n")
    )
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"experiment": "nope"}, "no experiment named 'nope'; experiments: Default, exp, other"),
        ({"experiment": "other"}, "no finished runs in experiment 'other': 0 runs found"),
        (
            {"experiment": "exp", "parent": "0" * 32},
            f"no finished runs in experiment 'exp', children of run {'0' * 32}",
        ),
        ({"experiment": "exp", "group_by": ["stream", "colour"]}, "group-by key 'colour' is neither a tag nor a param"),
        ({"experiment": "exp", "filter_string": "params.x ="}, "cannot search runs of 'exp'"),
    ],
)
def test_errors_are_continual_errors(store, kwargs, message):
    with pytest.raises(ContinualError) as info:
        report.build_report(store["runs"], **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_parent_whose_children_all_failed_says_what_was_skipped(store):
    client = store["client"]
    exp = client.create_experiment("zz-failed")  # sorts last: the other tests' experiment listing stays a prefix
    parent = client.create_run(exp).info.run_id
    _log_run(client, exp, router="oracle", seed=0, parent=parent, status="FAILED", metrics={})
    with pytest.raises(ContinualError, match=r"1 runs found \(1 FAILED\)"):
        report.build_report(RunStore(client), "zz-failed", parent=parent)


def _main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["continual", "report", *map(str, args)])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code
    return code, *capsys.readouterr()


def test_cli_prints_markdown_or_csv_and_errors_are_one_line(store, monkeypatch, capsys, tmp_path):
    code, out, err = _main(monkeypatch, capsys, "exp", "--tracking-uri", store["uri"], "--group-by", "router")
    assert code == 0
    header = (
        "| router | n | ACC | BWT | forgetting | ACC (task id) | BWT (task id) | forgetting (task id) | learning acc "
        "| router acc | trainable params | storage (MB) | train time (s) |"
    )
    assert out.splitlines()[0] == header
    assert "skipped 3 runs" in err
    code, out, _ = _main(
        monkeypatch,
        capsys,
        "exp",
        "--tracking-uri",
        store["uri"],
        "--format",
        "csv",
        "--parent",
        store["parent"],
        "--output",
        tmp_path / "o",
    )
    assert code == 0 and out.startswith("stream,learner,router,adapter,n,avg_acc_mean,")
    assert out == (tmp_path / "o" / "results.csv").read_text()
    assert {p.name for p in (tmp_path / "o").iterdir()} == {"results.md", "results.csv", "results.png"}
    monkeypatch.chdir(tmp_path)  # the default store, runs/mlflow.db, resolves against the launch folder
    for args, message in [
        (["exp"], f"no MLflow store at {tmp_path / 'runs' / 'mlflow.db'}"),
        (["nope", "--tracking-uri", store["uri"]], "no experiment named 'nope'"),
        (["exp", "--tracking-uri", store["uri"], "--format", "html"], "invalid choice: 'html'"),
    ]:
        code, out, err = _main(monkeypatch, capsys, *args)
        assert code == 2 and out == "" and err.startswith("error: ") and message in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # a wrong store path is not created as a side effect


def test_report_over_a_real_tiny_run(store, tmp_path, tiny_model_dir, demo_files, monkeypatch, capsys):
    import yaml

    conf = tmp_path / "my_conf" / "stream"
    conf.mkdir(parents=True)
    tasks = [
        {"name": n, "train": str(p["train"]), "test": str(p["test"]), "max_per_class": 4, "max_eval_per_class": 4}
        for n, p in demo_files.items()
    ]
    (conf / "two.yaml").write_text(yaml.safe_dump({"name": "two", "tasks": tasks}))
    # in this process (no second start-up), into the module's store (a fresh one costs seconds to create);
    # Hydra's logging set-up is off so that no file handler outlives the test
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "continual",
            "--config-dir",
            str(tmp_path / "my_conf"),
            "stream=two",
            f"backbone.name={tiny_model_dir}",
            "trainer.epochs=1",
            "adapter.bottleneck_dim=4",
            "progress=false",
            "hydra.run.dir=run",
            f"tracking.uri={store['uri']}",
            "router=oracle",
            "tracking.experiment=tiny",
            "hydra/job_logging=none",
            "hydra/hydra_logging=none",
        ],
    )
    cli.main()
    assert "ACC (avg accuracy)" in capsys.readouterr().out  # the run's summary
    assert not GlobalHydra.instance().is_initialized()  # Hydra left nothing behind for later tests
    code, out, err = _main(monkeypatch, capsys, "tiny", "--tracking-uri", store["uri"], "--output", tmp_path / "report")
    assert code == 0, err
    row = out.splitlines()[2].split(" | ")
    assert row[:5] == ["| two", "adapter_per_task", "oracle", "pfeiffer", "1"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert row[5] == f"{100 * results['avg_acc']:.2f}" and row[8] == f"{100 * results['oracle_avg_acc']:.2f}"
    assert row[12] == "100.00"  # router acc
    client = store["client"]
    run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])[0]
    per_task = client.get_metric_history(run.info.run_id, "trainable_params")
    assert len(per_task) == 2 and run.data.metrics["total_trainable_params"] == sum(m.value for m in per_task)
    assert row[13] == f"{int(sum(m.value for m in per_task)):,}"
    assert float(row[14]) == pytest.approx(run.data.metrics["artifact_bytes"] / 1e6, abs=0.05)
    assert run.data.metrics["total_train_seconds"] == pytest.approx(results["train_seconds"])
    assert (tmp_path / "report" / "results.png").is_file()


def test_runs_of_the_methods_suite_are_grouped_by_method(store):
    client = store["client"]
    exp = client.create_experiment("methods")
    for method, acc in [("adapters_oracle", 0.9), ("adapters_similar", 0.8), ("adapters_similar", 0.7)]:
        run_id = _log_run(client, exp, router="oracle", seed=0, metrics={"avg_acc": [acc]}, status="RUNNING")
        client.set_tag(run_id, "method", method)  # same learner and router: only the method tells them apart
        client.set_terminated(run_id, "FINISHED")
    rep = report.build_report(RunStore(client), "methods")
    assert rep.group_by == report.DEFAULT_GROUP_BY
    assert [(g.key[1], g.n, round(g.stats["avg_acc"].mean, 4)) for g in rep.groups] == [
        ("adapters_oracle", 1, 0.9),
        ("adapters_similar", 2, 0.75),
    ]


def test_forward_transfer_against_the_reference_method(store):
    client = store["client"]
    exp = client.create_experiment("transfer")

    def stream_run(method: str, seed: int, diagonal: list[float], same_step: bool = False) -> None:
        run_id = client.create_run(
            exp,
            tags={
                **GROUP_TAGS,
                "stream": "s",
                "router": "oracle",
                "method": method,
                "seed": str(seed),
                "order": "None",
            },
        ).info.run_id
        now = int(time.time() * 1000)
        # R[j, j] is acc/t<j> at the step it first appears; a later step's value must not count
        metrics = [Metric(f"acc/t{j}", v, now, len(diagonal) - 1 if same_step else j) for j, v in enumerate(diagonal)]
        metrics += [Metric(f"acc/t{j}", 0.0, now, len(diagonal)) for j in range(len(diagonal))]
        client.log_batch(run_id, metrics=[*metrics, Metric("avg_acc", 0.5, now, 0)])
        client.set_terminated(run_id, "FINISHED")

    for seed in (0, 1):
        stream_run("adapters_oracle", seed, [0.8, 0.7, 0.6])
    stream_run("adapters_similar", 0, [0.9, 0.8, 0.7])  # +0.10 on tasks 1 and 2 (task 0 does not count)
    stream_run("adapters_similar", 1, [0.1, 0.7, 0.8])  # 0 and +0.20: also 0.10 (task 0 still left out)
    stream_run("joint", 0, [0.9, 0.9, 0.9], same_step=True)  # not a task-after-task run: no FWT
    rep = report.build_report(RunStore(client), "transfer", fwt_reference="method=adapters_oracle")
    fwt = {g.key[1]: g.stats["fwt"] for g in rep.groups}
    assert fwt["adapters_oracle"].mean == 0.0
    assert fwt["adapters_similar"].mean == pytest.approx(0.1) and fwt["adapters_similar"].n == 2
    assert fwt["joint"] is None and rep.columns[-1].title == "FWT"
    with pytest.raises(ContinualError, match="no finished run has method=nope"):
        report.build_report(RunStore(client), "transfer", fwt_reference="method=nope")
    with pytest.raises(ContinualError, match="must be KEY=VALUE"):
        report.build_report(RunStore(client), "transfer", fwt_reference="adapters_oracle")
