"""The ``continual`` command: the Hydra door and the subcommand dispatch. The only module that imports Hydra.

``continual [overrides]`` and ``continual -m [sweeps]`` compose ``conf/`` with Hydra and hand the
resolved config, as plain values, to :func:`continual.commands.train.train`. ``continual resume DIR``
re-runs a job's own overrides into its folder; ``continual extend RUN stream=MORE`` composes only the
new stream. ``predict``, ``report``, ``registry``, ``promote`` and ``compare`` are plain subcommands.
Config and data problems surface as one ``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from continual.commands.cmdline import check_config_files, conf_dir
from continual.errors import ContinualError, Terminated, first_line, sigterm_as_interrupt
from continual.logs import quiet_libraries

log = logging.getLogger("continual")
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)  # ${pid:} in conf/config.yaml's output folders
# conf/hydra/launcher/*.yaml deliberately share their names with the plugins' schemas, which Hydra then validates
# them against, warning that this "automatic schema matching" is deprecated. Set on import: launcher processes
# (joblib workers) import this module to unpickle the job.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema", category=UserWarning)


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as plain dicts and lists, every interpolation resolved (one line if one cannot be)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ContinualError(first_line(exc)) from exc


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _planned_jobs(config: DictConfig) -> int | None:
    """How many jobs the basic sweep will launch: the product of the sweeps in ``hydra.sweeper.params`` and on
    the command line (which wins for a key in both); None when that cannot be told (e.g. a ``glob`` sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = dict(config.hydra.sweeper.get("params") or {})
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    try:
        overrides = {o.get_key_element(): o for o in OverridesParser.create().parse_overrides(arguments)}
        count = 1
        for override in overrides.values():
            if override.is_sweep_override():
                count *= len(list(override.sweep_string_iterator()))
        return count
    except Exception:  # a sweep kind that needs the config loader to expand
        return None


class _SWEEP:
    """The multirun this process launched, if any."""

    dir: Path | None = None
    launcher = "basic"


class SweepTracking(Callback):
    """Creates a multirun's parent MLflow run *before* any job starts, and closes it after the last.

    Creating it first also creates a fresh sqlite store and the experiment in this one process, so
    parallel jobs never race to build the schema. Jobs find the parent in the sweep folder and become
    its child runs; the parent ends FINISHED only if every job did.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from continual.run import assemble
        from continual.tracking.sweep import record_sweep

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
        record = record_sweep(sweep_dir, tracker, _planned_jobs(config))  # type: ignore[arg-type]
        _SWEEP.dir, _SWEEP.launcher = (
            sweep_dir,
            launcher,
        )  # an interrupt closes the parent (on_multirun_end never comes)
        log.info("sweep %s: parent MLflow run %s in %s", sweep_dir, record["run_id"], record["uri"])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from continual.tracking.sweep import close_sweep

        sweep_dir = Path(str(config.hydra.sweep.dir))
        _SWEEP.dir = None
        counts = close_sweep(sweep_dir)
        if counts is not None and counts[1] != counts[0]:
            _fail(
                f"{counts[0] - counts[1]} of {counts[0]} jobs of the sweep in {sweep_dir} failed; their folders "
                "hold the logs (parent MLflow run marked FAILED)"
            )


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _app(cfg: DictConfig) -> float:
    from continual.commands.train import Job, train

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    out_dir = Path(hc.runtime.output_dir)
    try:
        job = Job(
            out_dir,
            Path.cwd(),
            dict(hc.runtime.choices),
            index=hc.job.num if multirun else None,
            log_file=out_dir / f"{hc.job.name}.log",
        )
        result = train(plain(cfg), job)
    except ContinualError as exc:
        if multirun:  # one bad job does not stop the sweep; the sweep reports it and exits 2 at the end
            print(f"error: job {hc.job.num}: {exc}", file=sys.stderr, flush=True)
            return float("nan")
        _fail(str(exc))
    return result.metrics["avg_acc"]  # lets Hydra sweepers optimise average accuracy


def _check_overrides(argv: list[str]) -> None:
    """Each ``key=value`` argument must parse as a Hydra override; Hydra's own message runs to four lines."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in argv:
        if "=" in arg and not arg.startswith("-"):
            try:
                parser.parse_overrides([arg])
            except OverrideParseException as exc:
                raise ContinualError(
                    f"{arg}: not a valid override ({first_line(exc)}); quote lists in the shell, "
                    "e.g. 'stream.order=[0,1]'"
                ) from exc


def _check_keys(argv: list[str]) -> None:
    """Compose the config once with the overrides (a sweep's first values) as Hydra is about to, so that an
    unknown key is one line rather than Hydra's five; skipped with options that change the config's source."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if any(a.startswith(("-c", "--c", "-p", "--p")) for a in argv):  # --config-dir/-name/-path, --package, ...
        return
    overrides = []
    for override in OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("-")]):
        if override.is_sweep_override():
            try:
                first = next(iter(override.sweep_string_iterator()))
            except Exception:  # a sweep only the config loader expands (glob): Hydra checks it itself
                continue
            overrides.append(f"{override.get_key_element()}={first}")
        else:
            overrides.append(override.input_line or "")
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            compose("config", overrides=overrides, return_hydra_config=True)
    except HydraException as exc:
        detail = f" ({first_line(exc.__cause__)})" if exc.__cause__ is not None else ""
        hint = "".join(f"; {h[0].lower()}{h[1:]}" for h in str(exc).strip().splitlines()[1:2] if h)  # "To append"
        raise ContinualError(first_line(exc).rstrip(".") + detail + hint) from exc
    except Exception:  # anything else Hydra reports itself, as before this check
        return


def _interrupted(exc: KeyboardInterrupt) -> None:
    """Ctrl-C or SIGTERM: one line (the run itself was marked KILLED and stays resumable), a sweep's parent closed."""
    from continual.tracking.sweep import close_sweep

    if _SWEEP.dir is not None:  # joblib's worker processes die with this one, before they can end their runs
        close_sweep(_SWEEP.dir, killed=True, reap=_SWEEP.launcher == "joblib")
    from continual.commands.train import last_folder
    from continual.run.checkpoint import CONFIG, ORIGIN

    what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    folder = last_folder()
    if folder is not None and not ((folder / CONFIG).is_file() and (folder / ORIGIN).is_file()):
        said = f"{what} before the run in {folder} saved its config: there is nothing to resume; run the command again"
    else:
        said = f"{what}: the run was marked KILLED; continue it with `continual resume {folder or '<its folder>'}`"
    print(said, file=sys.stderr, flush=True)
    sys.exit(143 if isinstance(exc, Terminated) else 130)


def _resume(argv: list[str]) -> None:
    """``continual resume RUN_DIR [--new-run] [progress=false threads=N trainer.device=...]``: no Hydra, the saved
    config."""
    from continual.commands.train import resume

    new_run = "--new-run" in argv
    argv = [a for a in argv if a != "--new-run"]
    if not argv or argv[0].startswith("-"):
        raise ContinualError(
            "usage: continual resume RUN_DIR [--new-run] [progress=false] [threads=N] [trainer.device=cpu]"
        )
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    quiet_libraries()
    resume(Path(argv[0]), argv[1:], new_run)


EXTEND_USAGE = """usage: continual extend RUN stream=NAME [stream.key=value ...] [key=value ...] [--output DIR]
                        [--config-dir DIR] [--tracking-uri URI]

Learn the tasks of stream NAME after those of RUN (a finished run's folder, an MLflow run id, or a
registered model version models:/NAME/VERSION or models:/NAME@alias, read from --tracking-uri, else
from tracking.uri=..., else from the embedded store runs/mlflow.db), into a new folder (default
runs/<date>/<time>-<pid>; an existing one must be empty) and a new MLflow run tagged with the run it
extends. The run's adapters, heads and router state are
loaded, not retrained; its accuracy matrix continues from step T. key=value may change trainer.*,
tracking.*, seed, progress and threads; learner, adapter, backbone and router stay the run's."""


def _stream_node(overrides: list[str], config_dir: str | None) -> dict[str, Any]:
    """The composed ``stream`` node for ``stream=NAME`` and ``stream.key=value`` overrides (Hydra composes it)."""
    from hydra import compose, initialize_config_dir

    extra = [f"hydra.searchpath=[file://{Path(config_dir).absolute()}]"] if config_dir else []
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return plain(compose(config_name="config", overrides=[*overrides, *extra]).stream)


def _extend(argv: list[str]) -> None:
    """``continual extend RUN stream=MORE [overrides]``."""
    from continual.commands.cmdline import subcommand_parser
    from continual.commands.extend import check_extension_folder, extend_job
    from continual.serving.registry import fetch_bank
    from continual.tracking.store import DEFAULT_URI

    parser = subcommand_parser("extend", EXTEND_USAGE)
    parser.add_argument("run")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--config-dir")
    parser.add_argument("--tracking-uri")
    args, rest = parser.parse_known_args(argv)
    streams = [o for o in rest if o.startswith(("stream=", "stream."))]
    if not any(o.startswith("stream=") for o in streams):
        parser.error("name the stream to learn next with stream=NAME")
    check_config_files([*(["--config-dir", args.config_dir] if args.config_dir else []), *streams])
    _check_overrides(rest)
    out = args.output or Path("runs") / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}-{os.getpid()}"
    check_extension_folder(out)
    given = [o.partition("=")[2] for o in rest if o.startswith("tracking.uri=")]
    uri = args.tracking_uri or (given[-1] if given else DEFAULT_URI)
    with tempfile.TemporaryDirectory(prefix="continual-extend-") as scratch:
        source = fetch_bank(args.run, uri, Path(scratch), "continual extend")
        extend_job(
            source.absolute(),
            _stream_node(streams, args.config_dir),
            [o for o in rest if o not in streams],
            out.absolute(),
            Path.cwd(),
            args.run,
        )


# continual NAME ...: the function that runs it (module:function, imported only when used)
SUBCOMMANDS = {
    "predict": "continual.commands.predict:main",
    "report": "continual.commands.report:main",
    "registry": "continual.commands.registry:main_registry",
    "promote": "continual.commands.registry:main_promote",
    "compare": "continual.commands.compare:main",
    "serve": "continual.commands.serve:main",
    "extend": "continual.commands.cli:_extend",
}


def _subcommand(name: str, argv: list[str]) -> None:
    import importlib

    module, function = SUBCOMMANDS[name].split(":")
    getattr(importlib.import_module(module), function)(argv)


def main() -> None:
    """Console entry point: ``continual [overrides...]``, ``-m``, ``resume DIR`` and the :data:`SUBCOMMANDS`."""
    args = sys.argv[1:]
    try:
        with sigterm_as_interrupt():
            if args[:1] and args[0] in SUBCOMMANDS:
                _subcommand(args[0], args[1:])
                return
            if args[:1] == ["resume"]:
                _resume(args[1:])
                return
            check_config_files(sys.argv[1:])
            _check_overrides(sys.argv[1:])
            _check_keys(sys.argv[1:])
            _app()
    except ContinualError as exc:
        _fail(str(exc))
    except KeyboardInterrupt as exc:
        _interrupted(exc)


if __name__ == "__main__":
    main()
