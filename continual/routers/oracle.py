"""The oracle router: every input goes to its true task's adapter (the task-incremental upper bound)."""

from __future__ import annotations

import numpy as np

from continual.errors import ContinualError
from continual.routers.base import Reads, RouterInputs, Routing, StatelessRouter


class OracleRouter(StatelessRouter):
    """Returns the ground-truth task id; needs it, so it cannot serve task-agnostic prediction."""

    reads = Reads.TASK_IDS

    def route(self, inputs: RouterInputs) -> Routing:
        if inputs.task_ids is None:
            raise ContinualError(
                "router=oracle needs the true task of every input; it cannot route new text. "
                "Train with a learned router (router=prototype, classifier or entropy) to predict"
            )
        return Routing(np.asarray(inputs.task_ids, dtype=np.int64))
