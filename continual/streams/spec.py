"""Stream files: a named, ordered list of task specs, validated field by field.

This is the format a user writes as ``my_conf/stream/NAME.yaml``::

    name: banking_split
    data_dir: data/banking77        # optional: relative task paths resolve against it
    tasks:
      - name: cards
        train: train.csv             # a file, or a split name when `dataset` (a Hub id) is set
        test: test.csv
        text_field: text
        label_field: category
        labels: [card_arrival, card_linking]   # optional subset, fixes the label order
        max_per_class: 40                     # optional cap on train examples per label
        label_space: reviews                  # optional: tasks naming the same space share their classes
      - name: alarm_slots
        type: tokens                 # token classification: a BIO tag per word, scored by entity F1
        train: alarm/train.jsonl     # jsonl/json/parquet with lists in tokens_field and tags_field,
        test: alarm/test.jsonl       # or `format: conll` (a token and its tag per line; tag_column, default -1)
        tokens_field: tokens
        tags_field: tags

Stream-level ``max_per_class`` / ``max_eval_per_class`` apply to every task that sets no cap itself.
Stream-level ``label_space: per_task`` (default: equal label names in two tasks are two classes) or
``shared`` (a label name is one class in every task: domain-incremental) applies to every task that
names no ``label_space`` of its own.

Relative paths resolve against ``data_dir`` when given, else against the launch directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continual.checks import check_int, check_number
from continual.errors import ContinualError
from continual.streams.kinds import SEQUENCE, kind_named
from continual.streams.sources import read_file, read_hub
from continual.streams.task import (
    Stream,
    Task,
    apply_order,
    check_task_name,
    check_unique_names,
    label_space_of,
)


def _check_keys(raw: Mapping[str, Any], cls: type, where: str, required: Sequence[str]) -> None:
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise ContinualError(f"{where}: unknown field '{unknown[0]}'; expected fields: {', '.join(allowed)}")
    for key in required:
        if raw.get(key) in (None, ""):
            raise ContinualError(f"{where}: missing required field '{key}'")


def _opt_int(value: Any, name: str, where: str) -> int | None:
    if value is None:
        return None
    check_int(value, f"{where}: field '{name}'", low=1)
    return value


@dataclass(frozen=True)
class TaskSpec:
    """Where one task's data comes from and how to slice it (see the module docstring)."""

    name: str
    train: str
    test: str
    validation: str | None = None
    text_field: str = "text"
    label_field: str = "label"
    labels: tuple[str, ...] | None = None
    max_per_class: int | None = None
    max_eval_per_class: int | None = None
    validation_fraction: float = 0.1
    format: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    label_space: str | None = None
    type: str = SEQUENCE.name  # the task's kind: sequence (a label per text) | tokens (a BIO tag per word)
    tokens_field: str = "tokens"
    tags_field: str | None = None
    tag_column: int = -1  # CoNLL: the column holding the tag (the token is column 0)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str) -> TaskSpec:
        if not isinstance(raw, Mapping):
            raise ContinualError(f"{where}: expected a mapping with fields name, train, test, ..., got {raw!r}")
        name = raw.get("name")
        where = f"{where} (task '{name}')" if name else where
        _check_keys(raw, cls, where, required=("name", "train", "test"))
        for key in (
            "name",
            "train",
            "test",
            "validation",
            "text_field",
            "label_field",
            "format",
            "dataset",
            "label_space",
            "type",
            "tokens_field",
            "tags_field",
        ):
            if raw.get(key) is not None and not isinstance(raw[key], str):
                raise ContinualError(f"{where}: field '{key}' must be a string, got {raw[key]!r}")
        check_task_name(raw["name"], where)
        if raw.get("text_field", "text") == raw.get("label_field", "label"):
            raise ContinualError(
                f"{where}: text_field and label_field are both '{raw.get('text_field', 'text')}'; "
                "a task would learn to read its labels"
            )
        _check_type(raw, where)
        labels = raw.get("labels")
        if labels is not None:
            if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
                raise ContinualError(f"{where}: field 'labels' must be a list of labels, got {labels!r}")
            labels = tuple(str(lab) for lab in labels)
        fraction = raw.get("validation_fraction", 0.1)
        check_number(fraction, f"{where}: field 'validation_fraction'", low=0, high=1, below=True)
        return cls(
            **{
                **dict(raw),
                "labels": labels,
                "validation_fraction": float(fraction),
                "max_per_class": _opt_int(raw.get("max_per_class"), "max_per_class", where),
                "max_eval_per_class": _opt_int(raw.get("max_eval_per_class"), "max_eval_per_class", where),
            }
        )

    def read_pairs(self, split: str, base_dir: Path, where: str) -> list[tuple[str, str]]:
        """(text, label) pairs of one split ('train', 'validation' or 'test'), from the Hub or a file."""
        ref = getattr(self, split)
        if self.dataset:
            return read_hub(self.dataset, self.dataset_config, ref, self.text_field, self.label_field, where)
        return read_file(
            self.path(split, base_dir), self.text_field, self.label_field, f"{where} field '{split}'", self.format
        )

    def source(self, split: str, base_dir: Path) -> str:
        """Where :meth:`read` takes the split from: the Hub dataset's split, or the file."""
        ref = getattr(self, split)
        if self.dataset:
            return (
                f"hf://datasets/{self.dataset}" + (f"/{self.dataset_config}" if self.dataset_config else "") + f"@{ref}"
            )
        return str(self.path(split, base_dir))

    def path(self, split: str, base_dir: Path) -> Path:
        """The file of one split; relative paths resolve against ``base_dir``."""
        path = Path(getattr(self, split)).expanduser()
        return path if path.is_absolute() else base_dir / path


def _check_type(raw: Mapping[str, Any], where: str) -> None:
    """``type`` and the fields that only one type reads, checked before any file is opened."""
    kind = kind_named(raw.get("type", SEQUENCE.name), where)
    column = raw.get("tag_column", -1)
    check_int(column, f"{where}: field 'tag_column' (a column index)")
    kind.check_spec(raw, where)


def _label_space(value: Any, specs: Sequence[TaskSpec], where: str) -> str:
    """The stream's label space, checked (with every task's own) before any data is read."""
    for spec in specs:
        label_space_of(str(value), spec.label_space, f"{where} (task '{spec.name}')")
    return str(value)


@dataclass(frozen=True)
class StreamSpec:
    """A stream file: name, tasks, and an optional order (indices, names, or a key of ``orders``)."""

    name: str
    tasks: tuple[TaskSpec, ...]
    order: tuple[int | str, ...] | str | None = None
    orders: Mapping[str, tuple[int | str, ...]] = field(default_factory=dict)
    data_dir: str | None = None
    split_seed: int = 0
    max_per_class: int | None = None  # defaults for tasks that do not set their own caps
    max_eval_per_class: int | None = None
    label_space: str = "per_task"  # per_task | shared: for tasks that name no label_space of their own

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "stream") -> StreamSpec:
        if not isinstance(raw, Mapping):
            raise ContinualError(f"{where}: expected a mapping with fields name and tasks, got {raw!r}")
        _check_keys(raw, cls, where, required=("name", "tasks"))
        tasks = raw["tasks"]
        if isinstance(tasks, (str, bytes, Mapping)) or not isinstance(tasks, Sequence) or not tasks:
            raise ContinualError(f"{where}: field 'tasks' must be a non-empty list of tasks")
        specs = tuple(TaskSpec.from_dict(t, f"{where}.tasks[{k}]") for k, t in enumerate(tasks))
        check_unique_names([s.name for s in specs], f"{where}.tasks")
        order = raw.get("order")
        if order is not None and not isinstance(order, str):
            order = tuple(order)
        orders = {str(k): tuple(v) for k, v in (raw.get("orders") or {}).items()}
        seed = raw.get("split_seed", 0)
        check_int(seed, f"{where}: field 'split_seed'")
        return cls(
            name=str(raw["name"]),
            tasks=specs,
            order=order,
            orders=orders,
            data_dir=raw.get("data_dir"),
            split_seed=seed,
            max_per_class=_opt_int(raw.get("max_per_class"), "max_per_class", where),
            max_eval_per_class=_opt_int(raw.get("max_eval_per_class"), "max_eval_per_class", where),
            label_space=_label_space(raw.get("label_space", "per_task"), specs, where),
        )

    def load(self, launch_dir: Path | None = None) -> Stream:
        """Read, filter and validate every task's data, then apply the order."""
        launch_dir = Path.cwd() if launch_dir is None else launch_dir
        base = launch_dir
        if self.data_dir:
            base = Path(self.data_dir).expanduser()
            base = base if base.is_absolute() else launch_dir / base
            if not base.is_dir():
                raise ContinualError(f"stream '{self.name}': field 'data_dir' is not a directory: {base}")
        # Validate the order before reading any data: a typo should not cost a full data load.
        order_names = [t.name for t in apply_order(self.tasks, self.order, self.orders, "stream.order")]  # type: ignore[arg-type]
        by_name = {s.name: s for s in self.tasks}
        tasks: list[Task] = []
        for name in order_names:
            spec = by_name[name]
            where = f"stream '{self.name}' task '{spec.name}'"
            tasks.append(
                kind_named(spec.type, where).load(
                    spec,
                    base,
                    where,
                    max_per_class=spec.max_per_class or self.max_per_class,
                    max_eval_per_class=spec.max_eval_per_class or self.max_eval_per_class,
                    validation_fraction=spec.validation_fraction,
                    seed=self.split_seed,
                    label_space=label_space_of(self.label_space, spec.label_space, where),
                    sources={s: spec.source(s, base) for s in ("train", "test", "validation") if getattr(spec, s)},
                )
            )
        return Stream(self.name, tuple(tasks))
