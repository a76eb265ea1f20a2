"""The ``continual`` command: the Hydra door and the subcommand dispatch. The only module that imports Hydra.

``continual [overrides]`` and ``continual -m [sweeps]`` compose ``conf/`` with Hydra and hand the
resolved config, as plain values, to :func:`continual.runner.run_job`. ``continual resume DIR``
re-runs a job's own overrides into its folder; ``predict`` and ``report`` are plain subcommands.
Config and data problems surface as one ``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from continual.checkpoint import resume_argv
from continual.cmdline import check_config_files, conf_dir
from continual.errors import ContinualError, first_line

log = logging.getLogger("continual")


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as plain dicts and lists, every interpolation resolved (one line if one cannot be)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ContinualError(first_line(exc)) from exc


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


class SweepTracking(Callback):
    """Creates a multirun's parent MLflow run *before* any job starts, and closes it after the last.

    Creating it first also creates a fresh sqlite store and the experiment in this one process, so
    parallel jobs never race to build the schema. Jobs find the parent in the sweep folder and become
    its child runs; the parent ends FINISHED only if every job did.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from continual import assemble
        from continual.runner import quiet_libraries
        from continual.tracking.mlflow import record_sweep

        sweep_dir = Path(str(config.hydra.sweep.dir))
        overrides = " ".join(config.hydra.overrides.task)[:5000]
        launcher = str(config.hydra.runtime.choices.get("hydra/launcher", "basic"))
        try:
            quiet_libraries()
            tracker = assemble.tracker(
                plain(config.tracking),
                Path.cwd(),
                f"sweep {sweep_dir.name}",
                {"sweep": str(sweep_dir), "sweep_overrides": overrides, "launcher": launcher},
            )
        except ContinualError as exc:
            _fail(str(exc))
        record = record_sweep(sweep_dir, tracker)  # type: ignore[arg-type]
        log.info("sweep %s: parent MLflow run %s in %s", sweep_dir, record["run_id"], record["uri"])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from continual.tracking.mlflow import close_sweep

        sweep_dir = Path(str(config.hydra.sweep.dir))
        counts = close_sweep(sweep_dir)
        if counts is not None and counts[1] != counts[0]:
            _fail(
                f"{counts[0] - counts[1]} of {counts[0]} jobs of the sweep in {sweep_dir} failed; their folders "
                "hold the logs (parent MLflow run marked FAILED)"
            )


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _app(cfg: DictConfig) -> float:
    from continual.runner import run_job

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    out_dir = Path(hc.runtime.output_dir)
    try:
        result = run_job(
            plain(cfg),
            out_dir,
            Path.cwd(),
            dict(hc.runtime.choices),
            job=hc.job.num if multirun else None,
            log_file=out_dir / f"{hc.job.name}.log",
        )
    except ContinualError as exc:
        if multirun:  # one bad job does not stop the sweep; the sweep reports it and exits 2 at the end
            print(f"error: job {hc.job.num}: {exc}", file=sys.stderr, flush=True)
            return float("nan")
        _fail(str(exc))
    return result.metrics["avg_acc"]  # lets Hydra sweepers optimise average accuracy


def _quiet_schema_matching() -> None:
    """conf/hydra/launcher/*.yaml deliberately share their names with the plugins' schemas, which Hydra
    then validates them against; it also warns that this "automatic schema matching" is deprecated."""
    import warnings

    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema", category=UserWarning)


def _subcommand(name: str, argv: list[str]) -> None:
    if name == "predict":
        from continual.predict import main as predict

        predict(argv)
    else:
        from continual.report import main as report

        report(argv)


def main() -> None:
    """Console entry point: ``continual [overrides...]``, ``-m``, ``resume DIR``, ``predict RUN``, ``report``."""
    args = sys.argv[1:]
    try:
        if args[:1] in (["predict"], ["report"]):
            _subcommand(args[0], args[1:])
            return
        if args == ["resume"]:
            raise ContinualError("usage: continual resume RUN_DIR [progress=false]")
        if args[:1] == ["resume"]:
            sys.argv = [sys.argv[0], *resume_argv(Path(args[1]).resolve(), args[2:])]
        check_config_files(sys.argv[1:])
    except ContinualError as exc:
        _fail(str(exc))
    _quiet_schema_matching()
    _app()


if __name__ == "__main__":
    main()
