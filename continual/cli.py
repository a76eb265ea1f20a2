"""The ``continual`` command: a Hydra app over ``conf/``. The only module that imports Hydra.

``run`` turns the composed config into plain objects (stream source, backbone, learner, router,
tracker) with ``_target_`` + ``instantiate``; everything below it is ordinary Python. ``main`` adds
``continual resume DIR`` and checks config files before Hydra sees them. Config and data problems
surface as one ``error: ...`` line and exit status 2, before any model is loaded, and a tracking
run that was already created is marked FAILED.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from continual.checkpoint import Checkpoint
from continual.errors import ContinualError
from continual.experiment import RunResult, format_matrix, run_stream
from continual.learners import check_router
from continual.routers import check_stream
from continual.streams import StreamSource, StreamSpec
from continual.tracking import flatten

log = logging.getLogger("continual")


def _conf_dir() -> str:
    """conf/ beside the package in a source checkout, else the copy shipped as ``continual/conf``."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"continual: config folder not found next to {here}")


def _make(node: DictConfig, group: str, **objects: Any) -> Any:
    """``instantiate`` a config node, passing live ``objects`` as extra arguments; errors become one line.

    Objects go through a partial rather than ``instantiate(**kwargs)``, which would turn them into configs.
    """
    try:
        factory = instantiate(node, _partial_=True)
        return factory(**objects)
    except ContinualError:
        raise
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, ContinualError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ContinualError):
            raise cause from None
        raise ContinualError(f"{group}: {str(cause or exc).strip().splitlines()[0]}") from exc
    except TypeError as exc:
        if "argument" not in str(exc):  # only unknown/missing fields are config errors; keep real bugs loud
            raise
        raise ContinualError(f"{group}: {exc}") from exc


def stream_source(node: DictConfig) -> StreamSource:
    """A stream config with ``_target_`` names its source class; one without is a plain stream file."""
    if "_target_" in node:
        return _make(node, "stream")
    return StreamSpec.from_dict(OmegaConf.to_container(node, resolve=True), "stream")  # type: ignore[arg-type]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _quiet_libraries() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def summary_text(result: RunResult, tracking_uri: str, run_id: str, out_dir: Path) -> str:
    """The closing summary: the matrix, the metrics, where things are and how to look at them."""
    m = {**result.final_metrics, **result.metrics}

    def pct(value: float) -> str:
        return f"{100 * value:.2f}" if np.isfinite(value) else "n/a (one row of R)"

    lines = [
        "",
        "accuracy matrix R[i, j] (%): row = after training task i, column = task j",
        format_matrix(result.R, result.task_names),
        "",
        f"ACC (avg accuracy)  {pct(m['avg_acc'])}",
        f"BWT                 {pct(m['bwt'])}",
        f"forgetting          {pct(m['forgetting'])}",
        f"learning accuracy   {pct(m['learning_acc'])}",
        f"router accuracy     {pct(result.router_accuracy)}",
        f"oracle-routed ACC   {pct(result.oracle_average)} (same adapters, true task given)",
        *([f"OOS recall          {pct(m['oos_recall'])} (out-of-scope inputs rejected)"]
          if "oos_recall" in m else []),
        f"train time          {result.train_seconds:.1f} s ({result.train_samples_per_second:.0f} samples/s); "
        f"total {result.seconds:.1f} s",
        f"outputs             {out_dir}",
        f"MLflow run          {run_id} in {tracking_uri}",
    ]
    if tracking_uri.startswith("sqlite:"):
        lines.append(f"open the UI with    mlflow ui --backend-store-uri {tracking_uri}")
    return "\n".join(lines)


def _attach_log(tracker: Any, log_file: Path | None) -> None:
    if log_file is not None and log_file.is_file():
        for handler in logging.getLogger().handlers:
            handler.flush()
        tracker.log_artifact(log_file)


IGNORED_ON_RESUME = ("resume", "progress", "threads")  # keys that may differ between a run and its resumption


def _check_resumable(cfg_plain: dict, out_dir: Path) -> Checkpoint | None:
    """With ``resume=true``: the folder's checkpoint, after checking the config is the one it was made with.

    Without it: refuse to write a new run over a folder that already holds one.
    """
    checkpoint = Checkpoint.load(out_dir)
    if not cfg_plain.get("resume"):
        if checkpoint is not None:
            raise ContinualError(f"{out_dir} already holds a run; continue it with `continual resume {out_dir}` "
                                 "(or resume=true) or choose another hydra.run.dir")
        return None
    saved_path = out_dir / "config.yaml"
    if checkpoint is None or not saved_path.is_file():
        return None  # killed before the first checkpoint: nothing to continue, start afresh here
    saved = flatten({k: v for k, v in OmegaConf.to_container(OmegaConf.load(saved_path)).items()  # type: ignore[union-attr]
                     if k not in IGNORED_ON_RESUME})
    now = flatten({k: v for k, v in cfg_plain.items() if k not in IGNORED_ON_RESUME})
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            raise ContinualError(f"resume: config differs from the run in {out_dir} at '{key}': "
                                 f"saved {saved.get(key)!r}, now {now.get(key)!r}")
    return checkpoint


def run(cfg: DictConfig, launch_dir: Path, out_dir: Path, choices: dict[str, str], job: int | None = None,
        log_file: Path | None = None) -> RunResult:
    """Validate config, open the tracker, load data, then train; any failure marks the run FAILED.

    ``job`` is the index of this run in a multirun (its child run then joins the sweep's parent run);
    ``log_file``, if it exists at the end, is attached to the MLflow run.
    """
    _quiet_libraries()
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise ContinualError(str(exc).strip().splitlines()[0]) from exc
    trainer = _make(cfg.trainer, "trainer")
    adapter = _make(cfg.adapter, "adapter")
    router = _make(cfg.router, "router")
    source = stream_source(cfg.stream)
    checkpoint = _check_resumable(plain, out_dir)  # type: ignore[arg-type]
    tags = {k: str(choices.get(k, "")) for k in ("stream", "learner", "router", "adapter", "backbone", "method")}
    tags.update(seed=str(cfg.seed), order=str(plain["stream"].get("order")))  # type: ignore[index,union-attr]
    parent = _sweep_parent(out_dir) if job is not None else None
    if parent is not None:
        tags.update({"mlflow.parentRunId": parent["run_id"], "sweep": str(out_dir.parent), "job": str(job)})
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    run_name = cfg.run_name or f"{source.name}-{tags['learner']}-{tags['router']}-seed{cfg.seed}"
    tracker = _make(cfg.tracking, "tracking", run_name=run_name, tags=tags, launch_dir=launch_dir,
                    run_id=checkpoint.run_id if checkpoint else None)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint is None:
            tracker.log_params(plain)  # type: ignore[arg-type]
            OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
            tracker.log_artifact(out_dir / "config.yaml")
        stream = source.load(launch_dir)
        log.info("stream %s: %s", stream.name, ", ".join(
            f"{t.name} ({len(t.labels)} labels, {len(t.train)}/{len(t.validation)}/{len(t.test)})" for t in stream.tasks))
        check_stream(router, stream.tasks)
        if checkpoint is None:  # written before any training so that even task 0 can be resumed into this run
            checkpoint = Checkpoint(task_names=stream.task_names, run_id=tracker.run_id)
            checkpoint.save(out_dir)
        seed_everything(cfg.seed)
        backbone = _make(cfg.backbone, "backbone")
        learner = _make(cfg.learner, "learner", backbone=backbone, adapter=adapter, trainer=trainer, seed=cfg.seed)
        check_router(learner, router, f"learner={tags['learner']}")  # e.g. a learned router on joint: before training
        result = run_stream(stream, learner, router, tracker, out_dir, progress=cfg.progress, checkpoint=checkpoint,
                            label="" if job is None else f"job {job} ")
        text = summary_text(result, tracker.uri, tracker.run_id, out_dir)
        (out_dir / "summary.txt").write_text(text + "\n")
        tracker.log_artifact(out_dir / "summary.txt")
        _attach_log(tracker, log_file)
        tracker.finish("FINISHED")
    except BaseException as exc:
        partial = out_dir / "accuracy_matrix.csv"
        if partial.is_file():  # the rows finished so far stay visible next to the failed run
            tracker.log_artifact(partial)
        if isinstance(exc, ContinualError):
            log.error("%s", exc)  # into the job's log file, which is attached next
        _attach_log(tracker, log_file)
        tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    print(text, flush=True)
    return result


SWEEP_FILE = "sweep_run.json"  # in a multirun's sweep folder: the parent MLflow run of its jobs


def _sweep_parent(output_dir: Path) -> dict | None:
    """The parent run record of the multirun that ``output_dir`` (a job's folder) belongs to, if any."""
    import json

    path = output_dir.parent / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class SweepTracking(Callback):
    """Creates a multirun's parent MLflow run *before* any job starts, and closes it after the last.

    Creating it first also creates a fresh sqlite store and the experiment in this one process, so
    parallel jobs never race to build the schema. Jobs find the parent in ``sweep_run.json`` in the
    sweep folder and become its child runs; the parent ends FINISHED only if every job did.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import json

        sweep_dir = Path(str(config.hydra.sweep.dir))
        overrides = list(config.hydra.overrides.task)
        try:
            _quiet_libraries()
            tracker = _make(config.tracking, "tracking", run_name=f"sweep {sweep_dir.name}",
                            tags={"sweep": str(sweep_dir), "sweep_overrides": " ".join(overrides)[:5000],
                                  "launcher": str(config.hydra.runtime.choices.get("hydra/launcher", "basic"))},
                            launch_dir=Path.cwd())
        except ContinualError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        record = {"run_id": tracker.run_id, "uri": tracker.uri, "started": time.time()}
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(record))
        log.info("sweep %s: parent MLflow run %s in %s", sweep_dir, tracker.run_id, tracker.uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        sweep_dir = Path(str(config.hydra.sweep.dir))
        record = _sweep_parent(sweep_dir / "_")
        if record is None:
            return
        # this sweep's job folders (a reused sweep folder may also hold an earlier sweep's jobs)
        jobs = sum(1 for d in sweep_dir.iterdir()
                   if (d / ".hydra").is_dir() and (d / ".hydra").stat().st_mtime >= record["started"] - 1)
        client = MlflowClient(tracking_uri=record["uri"])
        parent = client.get_run(record["run_id"])
        children = client.search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{record['run_id']}'")
        finished = sum(c.info.status == "FINISHED" for c in children)
        now = int(time.time() * 1000)
        client.log_batch(record["run_id"], metrics=[Metric("jobs", jobs, now, 0), Metric("jobs_finished", finished, now, 0)])
        ok = jobs > 0 and finished == jobs
        client.set_terminated(record["run_id"], "FINISHED" if ok else "FAILED")
        if not ok:
            print(f"error: {jobs - finished} of {jobs} jobs of the sweep in {sweep_dir} failed; their folders hold "
                  "the logs (parent MLflow run marked FAILED)", file=sys.stderr, flush=True)
            sys.exit(2)


@hydra.main(version_base="1.3", config_path=_conf_dir(), config_name="config")
def _app(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        result = run(cfg, Path.cwd(), Path(hc.runtime.output_dir), dict(hc.runtime.choices),
                     job=hc.job.num if multirun else None, log_file=Path(hc.runtime.output_dir) / f"{hc.job.name}.log")
    except ContinualError as exc:
        if multirun:  # one bad job does not stop the sweep; the sweep reports it and exits 2 at the end
            print(f"error: job {hc.job.num}: {exc}", file=sys.stderr, flush=True)
            return float("nan")
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    return result.metrics["avg_acc"]  # lets Hydra sweepers optimise average accuracy


def resume_argv(run_dir: Path, extra: list[str]) -> list[str]:
    """Hydra arguments that re-run the job stored in ``run_dir`` into that same folder with resume on."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise ContinualError(f"continual resume: {run_dir} is not a run folder (no .hydra/overrides.yaml)")
    overrides = [o for o in OmegaConf.load(overrides_file)  # type: ignore[union-attr]
                 if not str(o).startswith(("hydra.run.dir=", "resume=", "hydra.sweep."))]
    argv = [str(o) for o in overrides] + [f"hydra.run.dir={run_dir}", "resume=true", *extra]
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():  # a --config-dir of the original command is not among the overrides
        sources = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.config_sources") or []
        for source in sources:
            if source.get("provider") == "command-line" and source.get("schema") == "file":
                argv = ["--config-dir", str(source["path"]), *argv]
    return argv


def _config_dirs(argv: list[str]) -> list[Path]:
    dirs = [Path(_conf_dir())]
    for k, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and k + 1 < len(argv):
            dirs.append(Path(argv[k + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
    return [d for d in dirs if d.is_dir()]


LAUNCHER_PLUGINS = {  # hydra/launcher option -> (plugin module, pip extra of continual)
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
}


def _check_launcher(choice: str) -> None:
    """A launcher whose Hydra plugin is not installed: name the extra to install, not a Hydra traceback."""
    import importlib.util

    if choice in LAUNCHER_PLUGINS:
        module, extra = LAUNCHER_PLUGINS[choice]
        if importlib.util.find_spec(module) is None:
            raise ContinualError(f"hydra/launcher={choice} needs its Hydra plugin, which is not installed: "
                                 f"pip install 'continual[{extra}]'")


def check_config_files(argv: list[str]) -> None:
    """Parse every config file and check ``group=option`` overrides before Hydra does.

    Hydra answers a YAML syntax error with a long traceback and an unknown option with a
    multi-line listing; these become one ``error:`` line each.
    """
    import yaml

    dirs = _config_dirs(argv)
    for path in (p for d in dirs for p in sorted(d.rglob("*.yaml"))):
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ContinualError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    for arg in argv:
        group, sep, value = arg.partition("=")
        if group == "hydra/launcher":
            for choice in value.split(","):
                _check_launcher(choice)
            continue
        if not sep or group.startswith(("-", "+", "~")) or "." in group or "/" in group:
            continue
        folders = [d / group for d in dirs if (d / group).is_dir()]
        if not folders:
            continue  # a plain key such as seed=1
        options = sorted({p.stem for f in folders for p in f.glob("*.yaml")})
        for choice in value.split(","):  # a multirun sweeps comma-separated options
            if choice and choice not in options and not choice.startswith(("choice(", "glob(")):
                raise ContinualError(f"{group}={choice}: no such option; {group} options: {', '.join(options)}")


PREDICT_USAGE = """usage: continual predict RUN [--text TEXT ...] [--input FILE] [--output FILE] [--task NAME]
                         [--text-field text] [--tracking-uri URI] [--no-progress] [key=value ...]

RUN is a finished run's output folder, or an MLflow run id / runs:/<id> whose artifacts are read
from --tracking-uri (default: the embedded store runs/mlflow.db). Texts come from --text (repeatable)
or --input (.jsonl with a 'text' field and optional 'task', .csv/.tsv with a text column, .txt one per
line). One JSON line per text goes to --output (default stdout): text, task (null = rejected), label,
confidence, router scores per task, abstained. key=value overrides the saved config, e.g.
trainer.device=cuda trainer.eval_batch_size=256."""


def _predict_args(argv: list[str]):
    parser = _subcommand_parser("predict", PREDICT_USAGE)
    parser.add_argument("run")
    parser.add_argument("--text", action="append", default=[])
    parser.add_argument("--input", type=Path)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--task")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--no-progress", action="store_true")
    args, rest = parser.parse_known_args(argv)  # key=value overrides may sit anywhere
    bad = [o for o in rest if "=" not in o or o.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments {bad}; config overrides look like key=value")
    args.overrides = rest
    if not args.text and args.input is None:
        parser.error("give texts with --text or --input")
    return args


def _run_folder(run: str, tracking_uri: str, scratch: Path) -> Path:
    """A local folder holding the run's config.yaml, adapters/ and router.safetensors."""
    folder = Path(run)
    if folder.is_dir():
        if not (folder / "config.yaml").is_file():
            raise ContinualError(f"{folder}: not a run output folder (no config.yaml)")
        return folder
    run_id = run[len("runs:/"):].strip("/") if run.startswith("runs:/") else run
    if not (len(run_id) == 32 and all(c in "0123456789abcdef" for c in run_id)):
        raise ContinualError(f"continual predict: {run} is neither a run folder nor an MLflow run id")
    from mlflow.artifacts import download_artifacts

    from continual.tracking.mlflow import normalise_uri

    uri = normalise_uri(tracking_uri, Path.cwd())
    try:
        for name in ("config.yaml", "adapters", "router.safetensors"):
            download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(scratch), tracking_uri=uri)
    except Exception as exc:  # MlflowException / OSError: missing run, artifact or store
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ContinualError(f"continual predict: cannot fetch artifacts of run {run_id} from {uri}: {first}") from exc
    return scratch


def _subcommand_parser(name: str, usage: str):
    """An argparse parser whose errors are one ``error:`` line (exit 2) and whose help is ``usage``."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):
            raise ContinualError(f"continual {name}: {message} (see continual {name} --help)")

        def print_help(self, file=None):
            print(usage, file=file)

    return Parser(prog=f"continual {name}", add_help=True)


def predict_main(argv: list[str]) -> None:
    """``continual predict``: everything is checked (inputs, run folder, router state) before the model loads."""
    import json
    import tempfile

    from continual.learners import saved_tasks
    from continual.predict import Predictor, Query, read_queries
    from continual.routers.state import FILENAME as ROUTER_FILE, load_router

    args = _predict_args(argv)
    queries = [Query(t, args.task) for t in args.text]
    if args.input is not None:
        queries += [q if q.task or not args.task else Query(q.text, args.task)
                    for q in read_queries(args.input, args.text_field)]
    with tempfile.TemporaryDirectory(prefix="continual-predict-") as scratch:
        folder = _run_folder(args.run, args.tracking_uri, Path(scratch))
        cfg = OmegaConf.merge(OmegaConf.load(folder / "config.yaml"), OmegaConf.from_dotlist(args.overrides))
        if not (folder / ROUTER_FILE).is_file():
            raise ContinualError(f"{folder}: no router state ({ROUTER_FILE}); the run has not finished a task, or it "
                                 "was made before routers were saved")
        tasks = saved_tasks(folder / "adapters")
        names = [t.name for t in tasks]
        unknown = sorted({q.task for q in queries if q.task and q.task not in names})
        if unknown:
            raise ContinualError(f"continual predict: tasks {unknown} are not tasks of this run; tasks: {names}")
        _quiet_libraries()
        router = _make(cfg.router, "router")
        if not getattr(router, "learned", False) and any(q.task is None for q in queries):
            raise ContinualError("continual predict: this run used router=oracle, which cannot route new text; give "
                                 "each text its task (--task NAME or a 'task' field) or train with a learned router")
        trainer = _make(cfg.trainer, "trainer")
        backbone = _make(cfg.backbone, "backbone")
        learner = _make(cfg.learner, "learner", backbone=backbone, adapter=_make(cfg.adapter, "adapter"),
                        trainer=trainer, seed=cfg.seed)
        learner.load(folder / "adapters", tasks)
        load_router(router, folder, names, backbone.name)
        predictor = Predictor(learner, router, names, [t.labels for t in tasks], progress=not args.no_progress)
        out = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
        try:
            for record in predictor.predict(queries):
                out.write(json.dumps(record) + "\n")
        finally:
            if args.output:
                out.close()


REPORT_USAGE = """usage: continual report EXPERIMENT [--tracking-uri URI] [--parent RUN_ID] [--filter MLFLOW_FILTER]
                        [--group-by stream,method,learner,router,adapter] [--output DIR] [--format markdown|csv]
                        [--fwt-reference KEY=VALUE]

A results table over the FINISHED runs of an MLflow experiment: one row per group of runs that share
the --group-by keys (run tags, or params.<key> for config values), mean ± sample std over the rest
(seeds, orders) of the final ACC, BWT, forgetting, router accuracy, trainable params and train time.
--parent keeps only one multirun's child runs. The table goes to stdout; --output DIR also writes
results.md, results.csv and results.png there. --fwt-reference method=adapters_oracle adds forward
transfer: each run's R[j, j] minus that of the reference run with the same stream, seed and order,
averaged over the tasks after the first. Default store: sqlite:///runs/mlflow.db (launch folder)."""


def report_main(argv: list[str]) -> None:
    """``continual report``: a Markdown/CSV results table (and a plot) over an experiment's finished runs."""
    from continual import report

    parser = _subcommand_parser("report", REPORT_USAGE)
    parser.add_argument("experiment")
    parser.add_argument("--tracking-uri", default=report.DEFAULT_URI)
    parser.add_argument("--parent")
    parser.add_argument("--filter", default="")
    parser.add_argument("--group-by", default=",".join(report.DEFAULT_GROUP_BY))
    parser.add_argument("--output", type=Path)
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    parser.add_argument("--fwt-reference")
    args = parser.parse_args(argv)
    client = report.open_store(args.tracking_uri, Path.cwd())
    result = report.build_report(client, args.experiment, args.group_by.split(","), args.parent, args.filter,
                                 fwt_reference=args.fwt_reference)
    print(report.to_markdown(result) if args.format == "markdown" else report.to_csv(result).rstrip("\n"), flush=True)
    print(result.note(), file=sys.stderr, flush=True)
    if args.output is not None:
        for path in report.write_outputs(result, args.output):
            print(f"wrote {path}", file=sys.stderr, flush=True)


def _quiet_schema_matching() -> None:
    """conf/hydra/launcher/*.yaml deliberately share their names with the plugins' schemas, which Hydra
    then validates them against; it also warns that this "automatic schema matching" is deprecated."""
    import warnings

    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema", category=UserWarning)


def main() -> None:
    """Console entry point: ``continual [overrides...]``, ``-m``, ``resume DIR``, ``predict RUN``, ``report``."""
    if sys.argv[1:2] in (["predict"], ["report"]):
        try:
            (predict_main if sys.argv[1] == "predict" else report_main)(sys.argv[2:])
        except ContinualError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
        return
    if sys.argv[1:] == ["resume"]:
        print("usage: continual resume RUN_DIR [progress=false]", file=sys.stderr)
        sys.exit(2)
    try:
        if len(sys.argv) > 2 and sys.argv[1] == "resume":
            sys.argv = [sys.argv[0], *resume_argv(Path(sys.argv[2]).resolve(), sys.argv[3:])]
        check_config_files(sys.argv[1:])
        _quiet_schema_matching()
    except ContinualError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    _app()


if __name__ == "__main__":
    main()
