"""Shared fixtures and helpers: a tiny random BERT built here, small task files, runs in and out of process.

No downloads. Test files import nothing from each other: whatever two of them share lives here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertModel, BertTokenizer

from continual.model.backbone import Backbone
from continual.streams.demo_data import DEMO_TASKS, demo_examples

if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers share the cores: one torch thread each (and their
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses), instead of every worker using every core
    torch.set_num_threads(1)

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _vocab() -> list[str]:
    words = set()
    for task in DEMO_TASKS:
        for split in ("train", "validation", "test"):
            for text, _ in demo_examples(task, split):
                words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    return SPECIAL + sorted(words)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random BERT with a word-level vocabulary of the demo data, saved to disk."""
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = _vocab()
    tokenizer = BertTokenizer(vocab={word: k for k, word in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_backbone(tiny_model_dir) -> Backbone:
    """A fresh backbone per test: adapter banks hook into its modules, so it is never shared."""
    return Backbone.load(str(tiny_model_dir))


def batch(backbone: Backbone, texts: list[str]):
    """(input_ids, attention_mask) of ``texts``, padded, on the CPU."""
    from continual.model.training import pad

    return pad(backbone.tokenize(texts, 32), backbone.pad_id, torch.device("cpu"))


def randomise(module: torch.nn.Module) -> None:
    """Random weights (seeded), so that an adapter that starts as the identity visibly changes outputs."""
    torch.manual_seed(1)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.5)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def demo_task_files(root: Path, tasks: tuple[str, ...]) -> dict[str, dict[str, Path]]:
    """Demo tasks written as jsonl files: {task: {"train": path, "test": path}}."""
    return {
        task: {
            split: write_jsonl(
                root / "data" / task / f"{split}.jsonl",
                [{"text": t, "label": lab} for t, lab in demo_examples(task, split)],
            )
            for split in ("train", "test")
        }
        for task in tasks
    }


@pytest.fixture
def demo_files(tmp_path) -> dict[str, dict[str, Path]]:
    """Two demo tasks (banking, travel) as jsonl files."""
    return demo_task_files(tmp_path, ("banking", "travel"))


def stream_yaml(conf: Path, files: dict[str, dict[str, Path]], name: str = "two_tasks", **task_extra) -> Path:
    """A user-written stream file ``conf/stream/<name>.yaml`` over the given files; returns ``conf``."""
    (conf / "stream").mkdir(parents=True, exist_ok=True)
    tasks = [
        {"name": task, "train": str(paths["train"]), "test": str(paths["test"]), **task_extra}
        for task, paths in files.items()
    ]
    (conf / "stream" / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "tasks": tasks}))
    return conf


def tiny_overrides(tmp_path: Path, model_dir: Path, *extra: str) -> list[str]:
    """Overrides that make a run fast on the tiny model, with its store under ``tmp_path``."""
    return [
        f"backbone.name={model_dir}",
        "trainer.epochs=1",
        "trainer.precision=fp32",  # runs compared bit for bit: never bf16, even where auto would pick it
        "adapter.bottleneck_dim=4",
        "progress=false",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        *extra,
    ]


def cli(cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``continual ARGS`` in a subprocess (the real Hydra door), run from ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "continual", *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a failed command (exit status 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


# Hydra's logging set-up would add file handlers to this process that outlive the test
QUIET_HYDRA = ("hydra/job_logging=none", "hydra/hydra_logging=none")


def main_in_process(monkeypatch, capsys, *args: str) -> subprocess.CompletedProcess:
    """``continual ARGS`` through :func:`continual.commands.cli.main` in this process (Hydra door included).

    Returns what a subprocess would: exit status, stdout, stderr. Runs (not subcommands) get Hydra's
    logging set-up turned off; the run's summary still goes to stdout.
    """
    from continual.commands import cli
    from continual.commands.cli import SUBCOMMANDS

    args = tuple(map(str, args))
    if args[:1] != ("resume",) and (not args or args[0] not in SUBCOMMANDS):
        args = (*args, *QUIET_HYDRA)
    monkeypatch.setattr(sys, "argv", ["continual", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def compose(overrides: list[str], config_dir: Path | None = None):
    """The composed config (with Hydra's choices) for ``overrides``, as the command line would give it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from continual.commands.cmdline import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        extra = [f"hydra.searchpath=[file://{config_dir}]"] if config_dir else []
        return hydra_compose(config_name="config", overrides=[*overrides, *extra], return_hydra_config=True)


def run_in_process(out_dir: Path, overrides: list[str], config_dir: Path | None = None, launch_dir: Path | None = None):
    """One job through :func:`continual.commands.train.train`, exactly as the CLI runs it, without a subprocess."""
    from omegaconf import OmegaConf, open_dict

    from continual.commands.cli import plain
    from continual.commands.train import Job, train

    cfg = compose(overrides, config_dir)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.set_struct(cfg, False)
    return train(plain(cfg), Job(out_dir, launch_dir or out_dir.parent, choices))


def mlflow_runs(uri: str, experiment: str = "continual") -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def histories(uri: str, run_id: str, skip: tuple[str, ...] = ("seconds", "_per_s")) -> dict[str, list]:
    """Every metric's history ``[(step, value)]`` of a run, timings left out."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    keys = client.get_run(run_id).data.metrics
    return {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys if not k.endswith(skip)
    }


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_model_dir) -> Path:
    """One finished two-task run with a learned, rejecting router, shared by tests that only read it.

    Its folder holds everything a run leaves (adapters, router state, config, results) and its store
    is ``<folder>/../mlflow.db``. Tests that change files work on a copy (:func:`copy_run`).
    """
    root = tmp_path_factory.mktemp("finished")
    conf = stream_yaml(root / "conf", demo_task_files(root, ("banking", "travel")), max_per_class=20)
    run_in_process(
        root / "run",
        ["stream=two_tasks", *tiny_overrides(root, tiny_model_dir, "router=prototype", "router.accept_rate=0.9")],
        config_dir=conf,
        launch_dir=root,
    )
    return root / "run"


def copy_run(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest)
    return dest


# Token tasks over the tiny model's vocabulary: entity words are distinct, so a tagger can learn them.
SLOT_TEMPLATES = {
    "trip_slots": ("book a flight to {city} {date}", {"city": ["paris", "rome", "tokyo", "berlin", "lisbon"]}),
    "meal_slots": ("make {dish} for dinner {date}", {"dish": ["pancakes", "lasagna", "risotto", "curry", "stew"]}),
}
DATES = ["monday", "friday", "tomorrow", "tonight", "next month", "next friday"]


def slot_rows(task: str, n: int, seed: int) -> list[dict]:
    """``n`` tagged sentences ``{"tokens", "tags"}`` of a token task in :data:`SLOT_TEMPLATES` (seeded)."""
    import random

    template, fillers = SLOT_TEMPLATES[task]
    ((kind, values),) = fillers.items()
    rng = random.Random(f"{task}:{seed}")
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for word in template.split():
            if word.startswith("{"):
                filler = rng.choice(DATES) if word == "{date}" else rng.choice(values)
                entity = "date" if word == "{date}" else kind
                parts = filler.split()
                tokens += parts
                tags += [f"B-{entity}"] + [f"I-{entity}"] * (len(parts) - 1)
            else:
                tokens.append(word)
                tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def slot_task_files(root: Path, tasks: tuple[str, ...] = tuple(SLOT_TEMPLATES)) -> list[dict]:
    """Token tasks written as jsonl files; their stream-file task entries."""
    entries = []
    for task in tasks:
        paths = {
            split: write_jsonl(root / "data" / task / f"{split}.jsonl", slot_rows(task, n, seed))
            for split, n, seed in (("train", 120, 0), ("test", 30, 1))
        }
        entries.append(
            {
                "name": task,
                "type": "tokens",
                "train": str(paths["train"]),
                "test": str(paths["test"]),
                "tags_field": "tags",
            }
        )
    return entries
