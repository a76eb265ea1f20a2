"""How in-scope the learned tasks' inputs look to a run's final router: what makes a bank abstain on far-off text.

At the end of every run (and in every registered version) ``calibration.safetensors`` holds the
router's support (:meth:`continual.routers.Routing.in_scope`) of every task's validation inputs. A bank
answering new text (``continual predict``, a served version) rejects a routed text that looks less
in-scope than ``accept_rate`` of them: by default the router's own ``accept_rate``, else 0.99.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from continual import files
from continual.checks import check_number
from continual.learners.base import Learner
from continual.routers.base import Reads, Router, rejection_threshold
from continual.run.checkpoint import RunState
from continual.run.evaluation import encode_texts
from continual.streams import Task

if TYPE_CHECKING:
    from continual.run.experiment import RunResult, StepRecord

CALIBRATION = "calibration.safetensors"
# a bank accepts what looks at least as in-scope as 99% of its tasks' validation inputs: far-off text is
# rejected while 1 in 100 in-scope texts pays for it (a request's accept_rate changes that)
DEFAULT_ACCEPT_RATE = 0.99


@dataclass(frozen=True)
class Calibration:
    """How in-scope the learned tasks' validation inputs look to the final router, and the share to accept."""

    support: np.ndarray  # Routing.in_scope() of every validation input, after the last task
    accept_rate: float

    def threshold(self, accept_rate: float | None = None) -> float:
        """The support below which a routed text is rejected, for ``accept_rate`` (default: the bank's)."""
        rate = self.accept_rate if accept_rate is None else accept_rate
        share = check_number(rate, "accept_rate (the share of in-scope validation texts to accept)", 0, 1, above=True)
        return rejection_threshold(self.support, share)

    def save(self, folder: Path) -> Path:
        return files.save_arrays(
            folder / CALIBRATION, {"support": self.support.astype(np.float32)}, {"accept_rate": str(self.accept_rate)}
        )

    @classmethod
    def load(cls, folder: Path) -> Calibration | None:
        if not (folder / CALIBRATION).is_file():
            return None
        accept_rate = float(files.read_metadata(folder / CALIBRATION).get("accept_rate", DEFAULT_ACCEPT_RATE))
        return cls(files.read_checked(folder / CALIBRATION, {}, framework="np")["support"], accept_rate)


def calibrate(learner: Learner, router: Router, tasks: Sequence[Task], accept_rate: float) -> Calibration | None:
    """The router's support of every task's validation inputs (None for a router that cannot route: the oracle)."""
    if router.reads is Reads.TASK_IDS:
        return None
    texts = [text for task in tasks for text in task.validation.texts]
    support = router.route(encode_texts(learner, texts)).in_scope() if texts else None
    return None if support is None else Calibration(np.asarray(support, dtype=np.float32), accept_rate)


class CalibrationSink:
    """At the end of a run: ``calibration.safetensors`` in its folder, recorded with the run's other files."""

    def __init__(self, out_dir: Path, learner: Learner, router: Router, tasks: Sequence[Task]) -> None:
        self.out_dir, self.learner, self.router, self.tasks = out_dir, learner, router, tasks

    def on_step(self, record: StepRecord, state: RunState) -> None:
        pass

    def on_end(self, result: RunResult, totals: dict[str, float]) -> None:
        calibration = calibrate(self.learner, self.router, self.tasks, self.router.accept_rate or DEFAULT_ACCEPT_RATE)
        if calibration is not None:
            result.state.files[CALIBRATION] = files.sha256(calibration.save(self.out_dir))
            result.state.save(self.out_dir)
