"""``learner=ridge``: the closed-form baseline, a ridge classifier on random features of the frozen backbone.

No adapter and no gradient step: every task's training texts go through the frozen backbone once, and
their random features are folded into the Gram matrix and class correlations of
:class:`continual.routers.ridge.RidgeClassifier`, which is then solved for a λ chosen on the validation
texts of the tasks seen so far. After every task the classifier equals ridge regression trained jointly on
everything seen (RanPAC without its adapter, McDonnell et al., NeurIPS 2023): the baseline a reviewer asks
for first in the class-incremental protocol.

It has one head over every class seen so far: without task ids it predicts the class with the best score
(``router=head``); with the task given, the best of that task's classes. Its confidences are the softmax of
the scores over ``temperature`` (a ridge score is about 1 for the right class and near 0 for the others).
Saved state: ``state_NN.safetensors`` after NN tasks (G, C, λ, the validation memory, the classes; the
weights are solved again on load), the previous one kept until the next is written; ``NN_<task>.safetensors``
carry each task's labels.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from continual import files
from continual.adapters import AdapterKind
from continual.checks import check_int, check_number
from continual.errors import ContinualError
from continual.learners.adapter_files import task_file
from continual.learners.base import (
    Classified,
    Fingerprints,
    Head,
    LearnReport,
    LossCallback,
    Schedule,
    best_per_task,
    digest,
    oracle_score,
    padded_batches,
    tokenize,
    within_tasks,
)
from continual.model.backbone import Backbone
from continual.model.training import TrainerConfig
from continual.routers.ridge import LAMBDAS, RidgeClassifier, ValidationMemory
from continual.streams import Task

MEMO_TEXTS = 20_000  # remembered frozen features: 150 MB at MiniLM's 1,920; every test text of clinc150 fits


@dataclass(frozen=True)
class RidgeConfig:
    """Options of :class:`RidgeLearner` (``learner=ridge``).

    ``dim``: random features (the Gram matrix is dim x dim: 4,000 -> 128 MB in memory while learning, 32 MB
    saved); ``lambdas``: the candidates for λ, chosen after every task on up to ``validation_per_task``
    validation inputs per task seen; ``pooling``/``layers``: the frozen features (as the prototype router's:
    the mean over tokens of layers 2..6 on MiniLM); ``temperature``: what confidences divide scores by.
    """

    dim: int = 4000
    lambdas: Sequence[float] = LAMBDAS
    pooling: str = "mean"
    layers: tuple[int, ...] | None = None
    validation_per_task: int = 200
    validation_limit: int = 3000  # all tasks together: past it each task keeps limit // tasks (a bounded state)
    temperature: float = 0.05
    progress: bool = True

    head = Head.ALL_SEEN  # one head over all labels seen so far: it routes itself (router=head)
    schedule = Schedule.EACH_TASK

    def __post_init__(self) -> None:
        RidgeClassifier(self.dim, 0, self.lambdas, "learner")  # checks dim and lambdas
        check_int(self.validation_per_task, "learner.validation_per_task", low=0)
        check_int(self.validation_limit, "learner.validation_limit", low=0)
        check_number(self.temperature, "learner.temperature", low=0, above=True)
        if self.pooling not in ("mean", "cls"):
            raise ContinualError(f"learner.pooling must be 'mean' or 'cls', got {self.pooling!r}")
        layers = None if self.layers is None else tuple(self.layers)
        if layers is not None and (
            not layers or not all(isinstance(k, int) and not isinstance(k, bool) for k in layers)
        ):
            raise ContinualError(
                f"learner.layers must be a non-empty list of layer indices or null, got {self.layers!r}"
            )
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "lambdas", tuple(self.lambdas))

    def build(self, backbone: Backbone, adapter: AdapterKind, trainer: TrainerConfig, seed: int) -> RidgeLearner:
        return RidgeLearner(backbone, trainer, self, seed)

    def describe(self) -> str:
        """The options that decide what the saved state means (checked when it is loaded)."""
        fields = {"dim": self.dim, "pooling": self.pooling, "layers": self.layers, "lambdas": list(self.lambdas)}
        return json.dumps(fields)


class RidgeLearner:
    """A ridge classifier on random features of the frozen backbone, over every class seen so far."""

    head = Head.ALL_SEEN
    schedule = Schedule.EACH_TASK

    def __init__(self, backbone: Backbone, trainer: TrainerConfig, config: RidgeConfig | None = None, seed: int = 0):
        self.config = config = config or RidgeConfig()
        self.backbone, self.trainer, self.seed = backbone, trainer, seed
        self.device = trainer.torch_device()
        self.backbone.place(self.device, trainer.frozen_dtype(self.device))
        backbone.layer_indices(config.layers)  # an unknown layer: one line before any text is read
        self.ridge = RidgeClassifier(config.dim, seed, config.lambdas, "learner")
        self.validation = ValidationMemory(config.validation_per_task, config.validation_limit, seed, "learner")
        self.classes: list[str] = []  # every class seen so far, in column order (Task.classes keys)
        self.task_classes: list[np.ndarray] = []  # per task: the column of each of its labels
        self.tasks: list[Task] = []
        self._memo: OrderedDict[bytes, np.ndarray] = OrderedDict()  # frozen features per text (least recent first)
        self._memo_lock = threading.Lock()  # a served model answers requests from several threads

    # --- features ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pooling: str = "mean",
        layers: tuple[int, ...] | None = (-1,),
    ) -> torch.Tensor:
        with self.trainer.autocast(self.device):
            return self.backbone.encode(input_ids, attention_mask, pooling, layers).float()

    def _frozen(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, remember: bool = True) -> np.ndarray:
        """The classifier's input features of a batch. Texts scored again and again (validation and test, every
        step) are computed once and remembered by their token ids, the last ``MEMO_TEXTS`` of them; training
        texts (``remember=False``) are read once."""
        if not remember:
            return self._encode(input_ids, attention_mask)
        lengths = attention_mask.sum(1).tolist()
        keys = [input_ids[i, :n].cpu().numpy().tobytes() for i, n in enumerate(lengths)]
        with self._memo_lock:
            found = {i: self._memo[key] for i, key in enumerate(keys) if key in self._memo}
            for i in found:
                self._memo.move_to_end(keys[i])
        missing = [i for i in range(len(keys)) if i not in found]
        if missing:
            rows = torch.as_tensor(missing, device=input_ids.device)
            computed = dict(zip(missing, self._encode(input_ids[rows], attention_mask[rows])))
            with self._memo_lock:
                for i, values in computed.items():
                    self._memo[keys[i]] = values
                while len(self._memo) > MEMO_TEXTS:
                    self._memo.popitem(last=False)
            found.update(computed)
        return np.stack([found[i] for i in range(len(keys))])

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        return self.features(input_ids, attention_mask, self.config.pooling, self.config.layers).cpu().numpy()

    def _texts(self, texts: Sequence[str], remember: bool = True) -> np.ndarray:
        tokens = tokenize(self, texts)
        out = np.zeros((len(tokens), 0), np.float32)
        for idx, ids, mask in padded_batches(self, tokens):
            values = self._frozen(ids, mask, remember)
            out = out if out.shape[1] else np.zeros((len(tokens), values.shape[1]), np.float32)
            out[idx] = values
        return out

    # --- learning ---------------------------------------------------------------------------------------------
    def _add_task(self, task: Task) -> tuple[int, int]:
        """Register ``task``; its classes not seen before become new columns. (task index, new columns)"""
        new = [c for c in dict.fromkeys(task.classes) if c not in self.classes]
        self.classes += new
        self.task_classes.append(np.array([self.classes.index(c) for c in task.classes], dtype=np.int64))
        self.tasks.append(task)
        return len(self.tasks) - 1, len(new)

    def learn(self, tasks: Sequence[Task], on_loss: LossCallback | None = None) -> LearnReport:
        """Fold the step's tasks into G and C, remember some of their validation features, solve for λ."""
        start = time.perf_counter()
        examples = 0
        for task in tasks:
            k, new = self._add_task(task)
            columns = self.task_classes[k]
            self.ridge.add(self._texts(task.train.texts, remember=False), columns[task.train.labels], new)
            examples += len(task.train)
            if len(task.validation):
                self.validation.add(k, self._texts(task.validation.texts), columns[task.validation.labels])
        self.ridge.fit_and_report(self.validation, "ridge learner")
        seconds = time.perf_counter() - start
        k = len(self.tasks) - 1
        val_acc = oracle_score(self, k, tasks[-1], tasks[-1].validation)  # the last task's, as single heads report
        name = tasks[0].name if len(tasks) == 1 else "joint"
        return LearnReport(name, 0, examples, seconds, float("nan"), val_acc, self.trained_parameters())

    # --- answering --------------------------------------------------------------------------------------------
    def _scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.ridge.scores(self._frozen(input_ids, attention_mask))).to(self.device)

    @torch.no_grad()
    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor) -> Classified:
        """Task-incremental: each text's best class among its task's (negative task id: no label)."""
        logits = self._scores(input_ids, attention_mask) / self.config.temperature
        return within_tasks(logits, task_ids, self.task_classes)

    @torch.no_grad()
    def task_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per task, the best score among its classes: the argmax task owns the argmax class (class-incremental)."""
        return best_per_task(self._scores(input_ids, attention_mask), self.task_classes)

    def trained_parameters(self) -> int:
        """The solved weights (dim x classes): what the closed form fits."""
        return self.config.dim * len(self.classes)

    def fingerprints(self) -> Fingerprints:
        """One digest for every task: each is answered by the one classifier, which every task changes."""
        backbone = digest(self.backbone)
        shared = hashlib.blake2b(backbone.encode() + self.ridge.weights.tobytes(), digest_size=16).hexdigest()
        return Fingerprints(backbone, [shared] * len(self.tasks))

    # --- state on disk ----------------------------------------------------------------------------------------
    def _metadata(self, tasks: Sequence[Task]) -> dict[str, str]:
        return {
            "learner": self.config.describe(),
            "backbone": self.backbone.name,
            "seed": str(self.seed),
            "tasks": json.dumps([t.name for t in tasks]),
            "classes": json.dumps([list(t.classes) for t in tasks]),
        }

    def save(self, directory: Path) -> list[Path]:
        """Per-task label files (written once), then ``state_NN``; states older than the previous one are dropped."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = [task_file(directory, k, t.name) for k, t in enumerate(self.tasks)]
        for k, (task, path) in enumerate(zip(self.tasks, paths)):
            if not path.is_file():
                meta = {"task": task.name, "index": str(k), "labels": json.dumps(list(task.labels))}
                files.save_arrays(
                    path, {}, {**meta, "classes": json.dumps(list(task.classes)), "backbone": self.backbone.name}
                )
        n = len(self.tasks)
        state = {**self.ridge.state_dict("ridge."), **self.validation.state_dict("validation.")}
        paths.append(files.save_arrays(_state_path(directory, n), state, self._metadata(self.tasks)))
        for old in directory.glob("state_*.safetensors"):
            if old.stem[len("state_") :].isdigit() and int(old.stem[len("state_") :]) < n - 1:
                old.unlink()
        return paths

    def load(self, directory: Path, tasks: Sequence[Task]) -> None:
        """Restore the state after ``tasks`` (stream order) from :meth:`save`."""
        if not tasks:
            return
        state = files.read_checked(
            _state_path(directory, len(tasks)),
            self._metadata(tasks),
            framework="np",
            hint="a ridge learner's state only loads into the options, backbone and tasks it was saved for",
        )
        for task in tasks:
            self._add_task(task)
        self.ridge.load_state_dict(state, "ridge.")
        self.validation.load_state_dict(state, "validation.")


def _state_path(directory: Path, tasks: int) -> Path:
    return directory / f"state_{tasks:02d}.safetensors"
