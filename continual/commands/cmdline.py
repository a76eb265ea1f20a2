"""The command line outside Hydra: checks before Hydra sees it, and the subcommands' parsers.

Hydra answers a YAML syntax error with a long traceback, an unknown option with a multi-line
listing and a missing launcher plugin with an import error; these become one ``error:`` line each,
and so do the subcommands' argument errors.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import NoReturn

import yaml

from continual.errors import ContinualError

LAUNCHER_PLUGINS = {  # hydra/launcher option -> (plugin module, pip extra of continual)
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
}


def conf_dir() -> Path:
    """conf/ beside the package in a source checkout, else the copy shipped as ``continual/conf``."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"continual: config folder not found next to {package}")


def config_dirs(argv: list[str]) -> list[Path]:
    """The packaged config folder and any ``--config-dir`` given on the command line."""
    dirs = [conf_dir()]
    for k, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and k + 1 < len(argv):
            dirs.append(Path(argv[k + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
    return [d for d in dirs if d.is_dir()]


def check_launcher(choice: str) -> None:
    """A launcher whose Hydra plugin is not installed: name the extra to install, not a Hydra traceback."""
    if choice in LAUNCHER_PLUGINS:
        module, extra = LAUNCHER_PLUGINS[choice]
        if importlib.util.find_spec(module) is None:
            raise ContinualError(
                f"hydra/launcher={choice} needs its Hydra plugin, which is not installed: "
                f"pip install 'continual[{extra}]'"
            )


def _check_yaml(path: Path) -> None:
    try:
        yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ContinualError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from exc


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


RUN_MARKER = "checkpoint.json"  # what every run folder holds from its first task on


def run_folder_around(path: Path) -> Path | None:
    """The run folder that ``path`` is, or lies in (None: it is in no run's folder)."""
    for folder in (path.absolute(), *path.absolute().parents):
        if (folder / RUN_MARKER).is_file():
            return folder
    return None


def check_outside_runs(path: Path, flag: str) -> None:
    """A command writes inside no run's folder: only the run itself writes there (its checkpoint, adapters, ...)."""
    run = run_folder_around(path)
    if run is not None:
        raise ContinualError(
            f"{flag} {path} lies in the run folder {run}, which only its run writes; choose another path"
        )


def check_output_folder(path: Path, flag: str) -> None:
    """``path`` is, or can be made, a folder this process may write (checked before any work is done)."""
    found = _existing_ancestor(path.absolute())
    if not found.is_dir():
        what = "is a file" if found == path.absolute() else f"lies under {found}, which is a file"
        raise ContinualError(f"{flag}={path}: {what}; give a folder")
    if not os.access(found, os.W_OK | os.X_OK):
        raise ContinualError(f"{flag}={path}: {found} is not writable")
    missing = [p for p in (path.absolute(), *path.absolute().parents) if not p.exists()]
    try:  # some folders look writable and are not (/proc, a read-only mount): make them, then leave no trace
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ContinualError(f"{flag}={path}: cannot create this folder ({exc.strerror or exc})") from exc
    for made in missing:  # innermost first
        made.rmdir()


def check_output_file(path: Path, flag: str) -> None:
    """``path`` is, or can be made, a file this process may write: not a folder, its folder creatable, in no run."""
    if path.is_dir():
        raise ContinualError(f"{flag} {path} is a folder; give a file path")
    check_outside_runs(path, flag)
    check_output_folder(path.parent, flag)


def _check_unused(folder: Path, flag: str, resuming: bool) -> None:
    """Hydra writes its files into the output folder before a job starts: refuse a folder holding a run first."""
    if flag == "hydra.run.dir" and not resuming and (folder / "checkpoint.json").is_file():
        raise ContinualError(
            f"{folder} already holds a run; continue it with `continual resume {folder}` "
            "or choose another hydra.run.dir"
        )
    if flag == "hydra.sweep.dir" and (folder / "sweep_run.json").is_file():
        raise ContinualError(f"{folder} already holds a sweep; choose another hydra.sweep.dir")


def check_config_files(argv: list[str]) -> None:
    """Parse every config file and check ``group=option`` overrides (and launchers) before Hydra does."""
    dirs = config_dirs(argv)
    for path in (p for d in dirs for p in sorted(d.rglob("*.yaml"))):
        _check_yaml(path)
    for arg in argv:
        group, sep, value = arg.partition("=")
        if group in ("hydra.run.dir", "hydra.sweep.dir"):
            check_outside_runs(Path(value).parent, group)  # a run's own folder is checked below (resume=true)
            check_output_folder(Path(value), group)
            _check_unused(Path(value), group, resuming="resume=true" in argv)
            continue
        if group == "hydra/launcher":
            for choice in value.split(","):
                check_launcher(choice)
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


def subcommand_parser(name: str, usage: str) -> argparse.ArgumentParser:
    """An argparse parser for ``continual NAME`` whose errors are one ``error:`` line and whose help is ``usage``."""

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise ContinualError(f"continual {name}: {message} (see continual {name} --help)")

        def print_help(self, file=None) -> None:
            print(usage, file=file)

    return Parser(prog=f"continual {name}", add_help=True)
