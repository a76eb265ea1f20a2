"""Results tables over many runs: read finished MLflow runs, group them, aggregate over seeds and orders.

Plain functions, no Hydra; ``continual report`` (in ``cli.py``) is a thin wrapper::

    store = RunStore("sqlite:///runs/mlflow.db")
    report = build_report(store, "continual", group_by=("stream", "router"))
    print(to_markdown(report))

Every number is the *final* value of a run's metric (MLflow's latest value: the last step), then the
mean ± sample standard deviation (ddof=1) over the runs of a group; ``n`` says how many runs that is.
A group is all runs that agree on the ``group_by`` keys (run tags, or ``params.<key>`` for a config
value), so the runs it averages over differ in what is left out: by default the seed and the order.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from continual.commands.cmdline import check_output_folder, check_outside_runs, subcommand_parser
from continual.errors import ContinualError
from continual.tracking.runs import LoggedRun, RunStore
from continual.tracking.store import DEFAULT_URI

DEFAULT_GROUP_BY = ("stream", "method", "learner", "router", "adapter")
OPTIONAL_KEYS = ("method",)  # tags only some runs have (conf/method/): dropped when none of the runs does
MISSING = "—"


@dataclass(frozen=True)
class Column:
    """One aggregated metric: its MLflow key, table title, and how its values are shown."""

    metric: str
    title: str
    kind: str  # "percent" (a share, shown x100), "count", "seconds" or "megabytes" (bytes, shown /1e6)
    fallback: str | None = None  # per-step metric summed over steps when ``metric`` was not logged


COLUMNS = (
    Column("avg_acc", "ACC", "percent"),  # no task id at test (class-incremental)
    Column("bwt", "BWT", "percent"),
    Column("forgetting", "forgetting", "percent"),
    Column("oracle_avg_acc", "ACC (task id)", "percent"),  # the task given at test (task-incremental)
    Column("oracle_bwt", "BWT (task id)", "percent"),
    Column("oracle_forgetting", "forgetting (task id)", "percent"),
    Column("learning_acc", "learning acc", "percent"),  # mean of R[j, j]: compare methods' for forward transfer
    Column("router_acc", "router acc", "percent"),
    # run-level totals logged by run_stream; runs made before they existed are summed from the per-task values
    Column("total_trainable_params", "trainable params", "count", fallback="trainable_params"),
    Column("artifact_bytes", "storage (MB)", "megabytes"),  # everything a reload needs, replay memories included
    Column("total_train_seconds", "train time (s)", "seconds", fallback="train_seconds"),
)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of ``n`` runs' values (``std`` is ``nan`` for one run)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat | None:
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return cls(statistics.fmean(values), std, len(values))


@dataclass(frozen=True)
class Group:
    """The runs that share one value of every group-by key, and their aggregated metrics."""

    key: tuple[str, ...]
    run_ids: tuple[str, ...]
    stats: dict[str, Stat | None]

    @property
    def n(self) -> int:
        return len(self.run_ids)


@dataclass
class Report:
    """A results table: groups in key order, plus what was left out and why."""

    experiment: str
    group_by: tuple[str, ...]
    groups: list[Group]
    columns: tuple[Column, ...] = COLUMNS
    skipped: dict[str, int] = field(default_factory=dict)  # reason (a run status, ...) -> count of runs
    f1_tasks: tuple[str, ...] = ()  # token tasks of the runs: their entries in R (and so ACC) are entity F1

    @property
    def runs(self) -> int:
        return sum(g.n for g in self.groups)

    def note(self) -> str:
        """One line saying what the table covers: runs, groups, and the runs skipped and why."""
        text = f"{self.runs} finished runs of experiment '{self.experiment}' in {len(self.groups)} groups"
        if self.skipped:
            reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
            text += f"; skipped {sum(self.skipped.values())} runs ({reasons})"
        if self.f1_tasks:
            text += f"; token tasks scored by entity F1 in R: {', '.join(self.f1_tasks)}"
        return text


def collect_runs(
    store: RunStore, experiment: str, parent: str | None = None, filter_string: str = ""
) -> tuple[list[LoggedRun], dict[str, int]]:
    """The experiment's finished stream runs, and counts of the runs skipped, by reason.

    ``parent`` keeps only the child runs of one multirun's parent run; ``filter_string`` is an MLflow
    search filter (``params.trainer.epochs = '1'``). Runs that are not FINISHED are skipped, and so are
    finished runs without ``avg_acc`` (a multirun's parent run logs only job counts).
    """
    filters = [filter_string] if filter_string.strip() else []
    if parent is not None:
        filters.append(f"tags.mlflow.parentRunId = '{parent}'")
    runs = store.experiment_runs(experiment, filters)
    skipped: Counter[str] = Counter()
    kept = []
    for run in runs:
        if run.status != "FINISHED":
            skipped[run.status] += 1
        elif "avg_acc" not in run.metrics:
            skipped["without avg_acc (sweep parents)"] += 1
        else:
            kept.append(run)
    if not kept:
        scope = f"experiment '{experiment}'" + (f", children of run {parent}" if parent else "")
        scope += f", filter {filter_string!r}" if filter_string.strip() else ""
        detail = f" ({', '.join(f'{c} {r}' for r, c in sorted(skipped.items()))})" if skipped else ""
        raise ContinualError(f"no finished runs in {scope}: {len(runs)} runs found{detail}")
    return kept, dict(skipped)


def group_value(run: LoggedRun, key: str) -> str | None:
    """A run's value for a group-by key: ``params.<name>``, ``tags.<name>``, or a bare tag name."""
    if key.startswith("params."):
        return run.params.get(key[len("params.") :])
    return run.tags.get(key[len("tags.") :] if key.startswith("tags.") else key)


def check_group_by(runs: Sequence[LoggedRun], group_by: Sequence[str]) -> None:
    """Every key must belong to at least one run; otherwise name the tags there are."""
    for key in group_by:
        if not any(group_value(run, key) is not None for run in runs):
            tags = sorted({t for run in runs for t in run.tags if not t.startswith("mlflow.")})
            raise ContinualError(
                f"group-by key '{key}' is neither a tag nor a param of these runs; tags: "
                f"{', '.join(tags)} (config values: params.<key>, e.g. params.trainer.epochs)"
            )


def final_values(store: RunStore, run: LoggedRun, columns: Sequence[Column] = COLUMNS) -> dict[str, float]:
    """The last logged value of each column's metric; a missing total is summed from its per-step metric."""
    values: dict[str, float] = {}
    for column in columns:
        if column.metric in run.metrics:
            values[column.metric] = run.metrics[column.metric]
        elif column.fallback and column.fallback in run.metrics:
            # one value per step: a step logged twice (a resumed run's repeated step) counts once
            per_step = dict(store.history(run.run_id, column.fallback))
            values[column.metric] = float(sum(per_step.values()))
    return {k: v for k, v in values.items() if math.isfinite(v)}


FWT = Column("fwt", "FWT", "percent")
PAIRED_BY = ("stream", "seed", "order")  # a run and its FWT reference run agree on these tags


def learning_diagonal(store: RunStore, run: LoggedRun) -> dict[str, tuple[int, float]]:
    """R[j, j] per task j: the value of ``acc/<task>`` (``f1/<task>``: a token task) at the first step it was
    logged, and that step."""
    diagonal = {}
    for key in run.metrics:
        score, _, task = key.partition("/")
        if score in ("acc", "f1") and task:
            diagonal[task] = min(store.history(run.run_id, key), key=lambda logged: logged[0])
    return diagonal


def forward_transfer(store: RunStore, run: LoggedRun, reference: LoggedRun) -> float | None:
    """:func:`continual.metrics.forward_transfer` of ``run`` against ``reference``, from their ``acc/<task>`` histories.

    None for runs that did not learn task after task (a joint run logs every task at one step), or
    when the reference lacks one of the run's tasks.
    """
    from continual.metrics import forward_transfer_of_diagonals

    mine, ref = learning_diagonal(store, run), learning_diagonal(store, reference)
    order = sorted(mine, key=lambda task: mine[task][0])
    if len({mine[t][0] for t in order}) != len(order) or not set(order) <= set(ref):
        return None
    value = forward_transfer_of_diagonals(np.array([mine[t][1] for t in order]), np.array([ref[t][1] for t in order]))
    return value if math.isfinite(value) else None


def _fwt_references(runs: Sequence[LoggedRun], reference: str) -> dict[tuple[str | None, ...], LoggedRun]:
    """The reference runs (``key=value``, e.g. ``method=adapters_oracle``) by their (stream, seed, order)."""
    key, sep, value = reference.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ContinualError(f"--fwt-reference must be KEY=VALUE (e.g. method=adapters_oracle), got {reference!r}")
    found = {
        tuple(group_value(r, k) for k in PAIRED_BY): r for r in runs if group_value(r, key.strip()) == value.strip()
    }
    if not found:
        raise ContinualError(f"--fwt-reference {reference}: no finished run has {key.strip()}={value.strip()}")
    return found


def build_report(
    store: RunStore,
    experiment: str,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    parent: str | None = None,
    filter_string: str = "",
    columns: Sequence[Column] = COLUMNS,
    fwt_reference: str | None = None,
) -> Report:
    """Collect, group and aggregate the finished runs of ``experiment`` into a :class:`Report`.

    With ``fwt_reference`` (``KEY=VALUE``) an FWT column compares every run's learning accuracy per
    task with that of the reference run of the same stream, seed and order (e.g. the independently
    initialised adapters, ``method=adapters_oracle``).
    """
    group_by = tuple(k.strip() for k in group_by if k.strip())
    runs, skipped = collect_runs(store, experiment, parent, filter_string)
    group_by = tuple(k for k in group_by if k not in OPTIONAL_KEYS or any(group_value(run, k) for run in runs))
    check_group_by(runs, group_by)
    references = _fwt_references(runs, fwt_reference) if fwt_reference else None
    columns = (*columns, FWT) if references is not None else tuple(columns)
    members: dict[tuple[str, ...], list[LoggedRun]] = {}
    for run in runs:
        key = tuple(group_value(run, k) or MISSING for k in group_by)
        members.setdefault(key, []).append(run)
    groups = []
    for key in sorted(members):
        values = [final_values(store, run, columns) for run in members[key]]
        if references is not None:
            for run, row in zip(members[key], values):
                reference = references.get(tuple(group_value(run, k) for k in PAIRED_BY))
                fwt = forward_transfer(store, run, reference) if reference is not None else None
                if fwt is not None:
                    row[FWT.metric] = fwt
        stats = {c.metric: Stat.of([v[c.metric] for v in values if c.metric in v]) for c in columns}
        groups.append(Group(key, tuple(r.run_id for r in members[key]), stats))
    f1_tasks = tuple(sorted({key[len("f1/") :] for run in runs for key in run.metrics if key.startswith("f1/")}))
    return Report(experiment, group_by, groups, tuple(columns), skipped, f1_tasks)


def format_stat(stat: Stat | None, column: Column, n: int) -> str:
    """``mean ± std`` in the column's unit; ``—`` when no run logged it; ``(n=k)`` when only some did."""
    if stat is None:
        return MISSING
    scale, digits, sep = {
        "percent": (100.0, 2, ""),
        "count": (1.0, 0, ","),
        "seconds": (1.0, 1, ""),
        "megabytes": (1e-6, 1, ""),
    }[column.kind]
    text = f"{stat.mean * scale:{sep}.{digits}f}"
    if stat.n > 1:
        text += f" ± {stat.std * scale:{sep}.{digits}f}"
    if stat.n < n:
        text += f" (n={stat.n})"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(report: Report) -> str:
    """A Markdown table: one row per group; accuracies in percent, mean ± sample std over ``n`` runs."""
    header = [*report.group_by, "n", *(c.title for c in report.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in report.groups:
        cells = [*group.key, str(group.n), *(format_stat(group.stats[c.metric], c, group.n) for c in report.columns)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def to_csv(report: Report) -> str:
    """CSV with the raw logged units (shares, not percent): ``<metric>_mean``, ``_std``, ``_n`` per metric."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*report.group_by, "n", *(f"{c.metric}_{s}" for c in report.columns for s in ("mean", "std", "n"))])
    for group in report.groups:
        row: list[object] = [*(v if v != MISSING else "" for v in group.key), group.n]
        for column in report.columns:
            stat = group.stats[column.metric]
            if stat is None:
                row += ["", "", 0]
            else:
                row += [repr(stat.mean), "" if math.isnan(stat.std) else repr(stat.std), stat.n]
        writer.writerow(row)
    return buffer.getvalue()


def plot(report: Report, path: Path) -> Path:
    """Bar chart of the final average accuracy per group, with sample-std error bars."""
    from continual import plots

    labels, means, stds = [], [], []
    for group in report.groups:
        stat = group.stats.get("avg_acc")
        labels.append(" / ".join(group.key) + f" (n={group.n})")
        means.append(100 * stat.mean if stat else math.nan)
        stds.append(100 * stat.std if stat and stat.n > 1 else math.nan)  # one run: no error bar, not a zero one
    return plots.bars(
        labels,
        means,
        stds,
        path,
        xlabel="final average accuracy (%)",
        title=f"{report.experiment}: ACC, mean ± std over runs",
    )


def write_outputs(report: Report, out_dir: Path) -> list[Path]:
    """``results.md`` (table + a line on what it covers), ``results.csv`` and ``results.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "results.md"
    md.write_text(to_markdown(report) + "\n\n" + report.note() + "\n", encoding="utf-8")
    table = out_dir / "results.csv"
    table.write_text(to_csv(report), encoding="utf-8")
    return [md, table, plot(report, out_dir / "results.png")]


USAGE = """usage: continual report EXPERIMENT [--tracking-uri URI] [--parent RUN_ID] [--filter MLFLOW_FILTER]
                        [--group-by stream,method,learner,router,adapter] [--output DIR] [--format markdown|csv]
                        [--fwt-reference KEY=VALUE]

A results table over the FINISHED runs of an MLflow experiment: one row per group of runs that share
the --group-by keys (run tags, or params.<key> for config values), mean ± sample std over the rest
(seeds, orders) of the final ACC, BWT, forgetting, router accuracy, trainable params and train time.
--parent keeps only one multirun's child runs. The table goes to stdout; --output DIR also writes
results.md, results.csv and results.png there. --fwt-reference method=adapters_oracle adds forward
transfer: each run's R[j, j] minus that of the reference run with the same stream, seed and order,
averaged over the tasks after the first. Default store: sqlite:///runs/mlflow.db (launch folder)."""


def main(argv: list[str]) -> None:
    """``continual report``: a Markdown/CSV results table (and a plot) over an experiment's finished runs."""
    import sys

    parser = subcommand_parser("report", USAGE)
    parser.add_argument("experiment")
    parser.add_argument("--tracking-uri", default=DEFAULT_URI)
    parser.add_argument("--parent")
    parser.add_argument("--filter", default="")
    parser.add_argument("--group-by", default=",".join(DEFAULT_GROUP_BY))
    parser.add_argument("--output", type=Path)
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    parser.add_argument("--fwt-reference")
    args = parser.parse_args(argv)
    if args.output is not None:
        check_outside_runs(args.output, "--output")
        check_output_folder(args.output, "--output")
    result = build_report(
        RunStore(args.tracking_uri, Path.cwd()),
        args.experiment,
        args.group_by.split(","),
        args.parent,
        args.filter,
        fwt_reference=args.fwt_reference,
    )
    print(to_markdown(result) if args.format == "markdown" else to_csv(result).rstrip("\n"), flush=True)
    print(result.note(), file=sys.stderr, flush=True)
    if args.output is not None:
        for path in write_outputs(result, args.output):
            print(f"wrote {path}", file=sys.stderr, flush=True)
