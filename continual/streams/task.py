"""Tasks and streams as plain data, and the steps every stream source shares.

A :class:`Task` is one classification problem with its own label set; a :class:`Stream` is an
ordered tuple of tasks. Sources (local files, the Hub, CLINC150, the generated demo) only produce
``(text, label)`` pairs; :func:`build_task` applies the label subset, the per-class caps and the
validation carve-out identically for all of them, so every source validates the same way.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from continual.errors import ContinualError
from continual.streams.kinds import SEQUENCE, TaskKind

log = logging.getLogger(__name__)

Pairs = list[tuple[str, str]]
X = TypeVar("X")  # what a (example, label) pair holds: a text, or a token task's sentence


@dataclass(frozen=True, eq=False)
class Split:
    """Labelled texts; ``labels[k]`` indexes the owning task's ``labels`` tuple; ``source`` says where they
    came from (a file, a Hub dataset split), for the run's data lineage.

    In a token task (``kind`` :data:`continual.streams.kinds.TOKENS`) a text is its words joined by single
    spaces, ``tags[k]`` holds one tag id per word (``O``, then ``B-``/``I-`` of each entity type), and
    ``labels`` is 0 for every text (one routing class per token task: a router sends a whole sentence to it).
    """

    texts: tuple[str, ...]
    labels: np.ndarray
    source: str = ""
    tags: tuple[np.ndarray, ...] = ()

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True, eq=False)
class Task:
    """One task of a stream: a name, its label names, and train/validation/test splits.

    ``label_space`` names the namespace its labels live in: tasks that share one share their classes
    (a label name is the same class in each: Yelp and Amazon stars), while by default ("") every task
    has its own, so equal names in two tasks are two classes.

    ``kind`` is what type of task it is (:mod:`continual.streams.kinds`): a label per text (the default), a
    BIO tag per word (``labels`` are then the entity types, scored by entity-level F1), ...
    """

    name: str
    labels: tuple[str, ...]
    train: Split
    validation: Split
    test: Split
    label_space: str = ""
    kind: TaskKind = SEQUENCE

    @property
    def classes(self) -> tuple[str, ...]:
        """The identity of each label across the stream: equal strings are the same class."""
        space = self.label_space or self.name
        return tuple(f"{space}/{label}" for label in self.labels)

    @property
    def routing_classes(self) -> int:
        """How many classes a router keeps statistics of: one per label, one per token task (its sentences)."""
        return self.kind.routing_classes(self.labels)

    @property
    def outputs(self) -> int:
        """Width of the task's head: one logit per label, or per BIO tag."""
        return self.kind.outputs(self.labels)


@dataclass(frozen=True, eq=False)
class Stream:
    """A named, ordered sequence of tasks; task ``i`` is learned at step ``i``.

    ``out_of_scope`` holds test texts that belong to no task (e.g. CLINC150's ``oos_test``): a router
    that can reject inputs is scored on how many of them it rejects. ``routable`` is False when the
    tasks cannot be told apart from their texts (clients relabeling the same texts): only the oracle.
    """

    name: str
    tasks: tuple[Task, ...]
    out_of_scope: tuple[str, ...] = ()
    routable: bool = True

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


class StreamSource(Protocol):
    """Anything that can produce a validated :class:`Stream`: ``load`` reads and checks all of its data, so
    bad input fails before a model is loaded; relative paths resolve against ``launch_dir``."""

    @property
    def name(self) -> str: ...

    def load(self, launch_dir: Path | None = None) -> Stream: ...


def cap_per_class(pairs: list[tuple[X, str]], cap: int | None, rng: random.Random) -> list[tuple[X, str]]:
    """Keep at most ``cap`` examples of each label, chosen at random but reproducibly."""
    if cap is None:
        return pairs
    by_label: dict[str, list[tuple[X, str]]] = defaultdict(list)
    for pair in pairs:
        by_label[pair[1]].append(pair)
    kept: list[tuple[X, str]] = []
    for label in sorted(by_label):
        group = by_label[label]
        kept.extend(group if len(group) <= cap else rng.sample(group, cap))
    return kept


def carve_validation(
    pairs: list[tuple[X, str]], fraction: float, rng: random.Random
) -> tuple[list[tuple[X, str]], list[tuple[X, str]]]:
    """Stratified, seeded split of train into (train, validation); every label keeps >= 1 train example."""
    by_label: dict[str, list[tuple[X, str]]] = defaultdict(list)
    for pair in pairs:
        by_label[pair[1]].append(pair)
    train: list[tuple[X, str]] = []
    val: list[tuple[X, str]] = []
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        n_val = min(int(round(len(group) * fraction)), len(group) - 1)
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    return train, val


def _to_split(pairs: Pairs, index: dict[str, int], rng: random.Random, source: str) -> Split:
    pairs = list(pairs)
    rng.shuffle(pairs)  # sources are often sorted by label; a shuffled split makes batches mixed
    return Split(
        texts=tuple(t for t, _ in pairs),
        labels=np.fromiter((index[lab] for _, lab in pairs), dtype=np.int64, count=len(pairs)),
        source=source,
    )


def build_task(
    name: str,
    train: Pairs,
    test: Pairs,
    validation: Pairs | None = None,
    *,
    labels: Sequence[str] | None = None,
    max_per_class: int | None = None,
    max_eval_per_class: int | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    where: str = "",
    label_space: str = "",
    sources: Mapping[str, str] | None = None,
) -> Task:
    """Turn raw ``(text, label)`` pairs into a validated :class:`Task`.

    ``labels`` keeps only those labels (a class-incremental slice of a dataset) and fixes their order;
    without it the task's labels are the sorted labels of its train split. ``max_per_class`` caps the
    train split, ``max_eval_per_class`` the validation and test splits. Without ``validation`` a
    stratified ``validation_fraction`` of train is carved out with ``seed``. ``where`` names the
    config entry in error messages; ``label_space`` the namespace its labels share (see :class:`Task`);
    ``sources`` where each split's pairs came from (``train``, ``test``, optional ``validation``).
    """
    where = where or f"task '{name}'"
    check_task_name(name, where)
    rng = random.Random(f"{seed}:{name}")  # string seeds are stable across processes (unlike hash())
    label_names = _chosen_labels(train, labels, where)
    keep = set(label_names)
    train, test = [p for p in train if p[1] in keep], [p for p in test if p[1] in keep or labels is None]
    _check_labels(train, test, label_names, where)
    train = cap_per_class(train, max_per_class, rng)
    if validation is None:
        if not 0.0 <= validation_fraction < 1.0:
            raise ContinualError(f"{where}: validation_fraction must be in [0, 1), got {validation_fraction}")
        train, validation = carve_validation(train, validation_fraction, rng)
    else:
        validation = _given_validation(validation, keep, labels is None, where)
    test = cap_per_class(test, max_eval_per_class, rng)
    validation = cap_per_class(validation, max_eval_per_class, rng)
    _check_tested(test, label_names, where)
    index = {lab: k for k, lab in enumerate(label_names)}
    sources = dict(sources or {})
    sources.setdefault("validation", f"{sources.get('train', '')} (validation carved out)".lstrip())
    train_split, validation_split, test_split = (
        _to_split(pairs, index, rng, sources.get(split, ""))
        for split, pairs in (("train", train), ("validation", validation), ("test", test))
    )
    return Task(name, label_names, train_split, validation_split, test_split, label_space)


def _given_validation(validation: Pairs, keep: set[str], all_labels: bool, where: str) -> Pairs:
    """A validation file's pairs for the task's labels; as for test, a label train lacks is an error, and a
    validation split left empty is one too (a silent empty split would switch off early checks)."""
    unknown = sorted({lab for _, lab in validation} - keep)
    if unknown and all_labels:
        raise ContinualError(
            f"{where}: the validation split has labels that never occur in train: {unknown[:10]}; "
            "list the labels to keep with field 'labels'"
        )
    kept = [p for p in validation if p[1] in keep]
    if not kept:
        raise ContinualError(f"{where}: the validation split has no examples of the task's labels {sorted(keep)[:10]}")
    return kept


def _chosen_labels(train: Pairs, labels: Sequence[str] | None, where: str) -> tuple[str, ...]:
    """The field ``labels`` (checked against the train data), or else the sorted labels of the train split."""
    present = Counter(lab for _, lab in train)
    if labels is None:
        return tuple(sorted(present))
    wanted = [str(lab) for lab in labels]
    if not wanted:
        raise ContinualError(f"{where}: field 'labels' is empty; list the labels to keep or omit the field")
    dupes = [lab for lab, n in Counter(wanted).items() if n > 1]
    if dupes:
        raise ContinualError(f"{where}: field 'labels' repeats {dupes}")
    missing = [lab for lab in wanted if lab not in present]
    if missing:
        known = ", ".join(sorted(present)[:20]) + (" ..." if len(present) > 20 else "")
        raise ContinualError(
            f"{where}: field 'labels' names {missing} which do not occur in the train data; "
            f"labels present: {known or '(none)'}"
        )
    return tuple(wanted)


def _check_labels(train: Pairs, test: Pairs, label_names: tuple[str, ...], where: str) -> None:
    """A task has train examples, two labels or more, and no test label that train lacks."""
    if not train:
        raise ContinualError(f"{where}: the train split has no examples (after filtering)")
    if len(label_names) < 2:
        raise ContinualError(f"{where}: a task needs at least 2 labels, found {list(label_names)}")
    unknown_test = sorted({lab for _, lab in test} - set(label_names))
    if unknown_test:
        raise ContinualError(
            f"{where}: the test split has labels that never occur in train: {unknown_test[:10]}; "
            "list the labels to keep with field 'labels'"
        )


def _check_tested(test: Pairs, label_names: tuple[str, ...], where: str) -> None:
    """Every label has test examples, so that every accuracy can be measured."""
    if not test:
        raise ContinualError(f"{where}: the test split has no examples (after filtering)")
    tested = {label for _, label in test}
    untested = [lab for lab in label_names if lab not in tested]
    if untested:
        raise ContinualError(
            f"{where}: the test split has no examples of labels {untested[:10]}; their accuracy could not be "
            "measured (drop them with field 'labels' or fix the test file)"
        )


def apply_order(
    tasks: Sequence[Task],
    order: Sequence[int | str] | str | None,
    orders: dict[str, Sequence[int | str]] | None = None,
    where: str = "stream.order",
) -> tuple[Task, ...]:
    """Reorder (or select) tasks by position or name; a string picks a named order from ``orders``."""
    if order is None:
        return tuple(tasks)
    if isinstance(order, str):
        if not orders or order not in orders:
            raise ContinualError(
                f"{where}: unknown named order '{order}'; named orders: {sorted(orders or {}) or '(none)'}"
            )
        order = orders[order]
    names = [t.name for t in tasks]
    picked: list[Task] = []
    for key in order:
        if isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < len(tasks):
                raise ContinualError(f"{where}: index {key} is out of range for {len(tasks)} tasks")
            picked.append(tasks[key])
        elif isinstance(key, str) and key in names:
            picked.append(tasks[names.index(key)])
        else:
            raise ContinualError(f"{where}: {key!r} is neither a task index nor a task name; tasks: {names}")
    seen = [t.name for t in picked]
    if len(set(seen)) != len(seen):
        raise ContinualError(f"{where}: a task appears twice in {list(order)}")
    if not picked:
        raise ContinualError(f"{where}: the order selects no task")
    return tuple(picked)


TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")


def check_task_name(name: object, where: str, what: str = "task name") -> None:
    """A task name becomes part of metric keys (``acc/<task>``) and file names: a safe charset, checked early."""
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise ContinualError(
            f"{where}: {what} {name!r} may use only letters, digits, '_', '-' and '.', starting with a letter or "
            "digit, at most 100 characters (it names metric keys and files)"
        )


LABEL_SPACES = ("per_task", "shared")


def label_space_of(stream_space: str, task_space: str | None, where: str) -> str:
    """A task's label namespace: its own field, else the stream's choice (``shared``: one for every task)."""
    if stream_space not in LABEL_SPACES:
        raise ContinualError(f"{where}: label_space must be one of {list(LABEL_SPACES)}, got {stream_space!r}")
    if task_space:
        check_task_name(task_space, where, "label_space")
        return task_space
    return "shared" if stream_space == "shared" else ""


def class_index(tasks: Sequence[Task]) -> list[np.ndarray]:
    """Per task, the stream-wide class id of each of its labels (ids in order of first appearance)."""
    ids: dict[str, int] = {}
    return [np.array([ids.setdefault(c, len(ids)) for c in task.classes], dtype=np.int64) for task in tasks]


def check_unique_names(names: Sequence[str], where: str) -> None:
    """Task names key metrics and adapters, so two tasks may not share one."""
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if dupes:
        raise ContinualError(f"{where}: task names must be unique; repeated: {dupes}")
