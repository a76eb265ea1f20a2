"""CLINC150 as streams: by domain (10 tasks of 15 intents) or by a seeded shuffle of its intents.

With ``data_dir`` the stream reads ``data_full.json`` (``{"train": [[text, intent], ...], "val": ...,
"test": ..., "oos_test": ...}``) and ``domains.json`` (``{domain: [intent, ...]}``) as published in clinc/oos-eval.
Without it, texts come from the Hub dataset ``clinc_oos`` (config ``plus``) and the domain map from
``domains_file`` (the same ``domains.json``), since the Hub copy does not carry domains.
With ``out_of_scope`` (default) the out-of-scope test queries (``oos_test``; intent ``oos`` on the
Hub) come along as the stream's ``out_of_scope`` texts, for evaluating routers that can reject.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from continual.checks import check_int
from continual.errors import ContinualError
from continual.streams.sources import read_hub
from continual.streams.task import Pairs, Stream, apply_order, build_task, label_space_of

HUB_ID, HUB_CONFIG = "clinc_oos", "plus"
SPLITS = {"train": "train", "validation": "val", "test": "test"}  # our name -> data_full.json key
OOS = "oos"  # the out-of-scope intent


def _read_json(path: Path, where: str):
    if not path.is_file():
        raise ContinualError(f"{where}: file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ContinualError(f"{where}: {path} is not valid JSON: {exc}") from exc


@dataclass(frozen=True)
class _Clinc150:
    """What both CLINC150 streams share: where the data is, caps, order, out-of-scope texts, label space."""

    name: str = "clinc150"
    data_dir: str | None = None
    domains_file: str | None = None
    order: Sequence[int | str] | str | None = None
    orders: Mapping[str, Sequence[int | str]] = field(default_factory=dict)
    max_per_class: int | None = None
    max_eval_per_class: int | None = None
    split_seed: int = 0
    out_of_scope: bool = True
    label_space: str = "per_task"

    def _resolve(self, value: str, launch_dir: Path) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else launch_dir / path

    def _splits(self, launch_dir: Path) -> dict[str, Pairs]:
        where = f"stream '{self.name}'"
        if self.data_dir:
            data = _read_json(self._resolve(self.data_dir, launch_dir) / "data_full.json", f"{where} field 'data_dir'")
            try:
                splits = {ours: [(str(t), str(lab)) for t, lab in data[key]] for ours, key in SPLITS.items()}
                splits[OOS] = [(str(t), OOS) for t, _ in data.get("oos_test", [])]
                return splits
            except (KeyError, TypeError, ValueError) as exc:
                raise ContinualError(
                    f"{where}: data_full.json must map train/val/test to [text, intent] pairs ({exc!r})"
                ) from exc
        splits = {ours: read_hub(HUB_ID, HUB_CONFIG, ours, "text", "intent", where) for ours in SPLITS}
        splits[OOS] = [p for p in splits["test"] if p[1] == OOS]
        return splits

    def _source(self, split: str, launch_dir: Path) -> str:
        """Where a split comes from: its key in data_full.json, or the Hub dataset's split."""
        if self.data_dir:
            return f"{self._resolve(self.data_dir, launch_dir) / 'data_full.json'}#{SPLITS[split]}"
        return f"hf://datasets/{HUB_ID}/{HUB_CONFIG}@{split}"

    def _domain_map(self, launch_dir: Path) -> dict[str, list[str]]:
        where = f"stream '{self.name}'"
        if self.domains_file:
            path = self._resolve(self.domains_file, launch_dir)
        elif self.data_dir:
            path = self._resolve(self.data_dir, launch_dir) / "domains.json"
        else:
            raise ContinualError(
                f"{where}: set field 'data_dir' (a folder with data_full.json and domains.json) or, to read the "
                "texts from the Hub, field 'domains_file' (domains.json of clinc/oos-eval)"
            )
        mapping = _read_json(path, f"{where} domains")
        if not isinstance(mapping, dict) or not all(isinstance(v, list) for v in mapping.values()):
            raise ContinualError(f"{where}: {path} must map each domain to a list of intents")
        return mapping

    def _groups(self, launch_dir: Path) -> dict[str, list[str]]:
        """Task name -> its intents, in the stream's default order."""
        raise NotImplementedError

    def load(self, launch_dir: Path | None = None) -> Stream:
        launch_dir = Path.cwd() if launch_dir is None else launch_dir
        groups = self._groups(launch_dir)
        # Validate the order on names alone, before the (large) data file is read.
        names = [t.name for t in apply_order([_Named(n) for n in groups], self.order, dict(self.orders))]  # type: ignore[misc]
        splits = self._splits(launch_dir)
        tasks = []
        for name in names:
            intents = set(groups[name])
            part = {k: [p for p in pairs if p[1] in intents] for k, pairs in splits.items() if k != OOS}
            where = f"stream '{self.name}' task '{name}'"
            tasks.append(
                build_task(
                    name,
                    part["train"],
                    part["test"],
                    part["validation"],
                    labels=sorted(intents),
                    max_per_class=self.max_per_class,
                    max_eval_per_class=self.max_eval_per_class,
                    seed=self.split_seed,
                    where=where,
                    label_space=label_space_of(self.label_space, None, where),
                    sources={split: self._source(split, launch_dir) for split in SPLITS},
                )
            )
        out_of_scope = tuple(t for t, _ in splits[OOS]) if self.out_of_scope else ()
        return Stream(self.name, tuple(tasks), out_of_scope)


@dataclass(frozen=True)
class Clinc150Domains(_Clinc150):
    """CLINC150 by domain: 10 tasks of 15 intents (``domains`` selects and orders domains before ``order``)."""

    name: str = "clinc150_domains"
    domains: Sequence[str] | None = None

    def _groups(self, launch_dir: Path) -> dict[str, list[str]]:
        domain_map = self._domain_map(launch_dir)
        names = list(self.domains) if self.domains is not None else list(domain_map)
        unknown = [d for d in names if d not in domain_map]
        if unknown:
            raise ContinualError(f"stream '{self.name}' field 'domains': unknown {unknown}; known: {list(domain_map)}")
        return {name: domain_map[name] for name in names}


@dataclass(frozen=True)
class Clinc150Intents(_Clinc150):
    """CLINC150's 150 intents shuffled with ``assignment_seed`` and cut into ``tasks`` tasks of equal size.

    Tasks cross domains, so the stream is class-incremental with no domain shift to route by: the
    setting of "Learn or Recall?" (ACL 2024; 15 tasks of 10 intents). Tasks are named
    ``intents_01``, ``intents_02``, ...; the same seed always gives the same assignment.
    """

    name: str = "clinc150_intents"
    tasks: int = 15
    assignment_seed: int = 0

    def _groups(self, launch_dir: Path) -> dict[str, list[str]]:
        intents = sorted(i for group in self._domain_map(launch_dir).values() for i in group)
        check_int(
            self.tasks, f"stream '{self.name}' field 'tasks' (at least two intents per task)", 2, len(intents) // 2
        )
        random.Random(f"clinc150_intents/{self.assignment_seed}").shuffle(intents)
        width = len(str(self.tasks))
        return {f"intents_{k + 1:0{width}d}": sorted(intents[k :: self.tasks]) for k in range(self.tasks)}


@dataclass(frozen=True)
class _Named:
    """Lets :func:`apply_order` work on bare names before any data is loaded."""

    name: str
