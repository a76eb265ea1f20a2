"""Class-incremental prediction with one head over all labels seen so far: the label that scores highest wins.

Learners with one expanding head (the shared-weight baselines) do not need a router: their head
scores every label seen so far, and the argmax over all of them is the class-incremental protocol of
the literature. This router makes that prediction a routing decision like any other: it picks, per
input, the task owning the best label (for labels shared by several tasks, the first of them), and
the learner then labels the input within that task, which gives back the same best label. It keeps
no state of its own.
"""

from __future__ import annotations

import numpy as np

from continual.routers.base import Reads, RouterInputs, Routing, StatelessRouter, decide


class HeadRouter(StatelessRouter):
    """Routes to the task whose label the learner's one head scores highest (never abstains)."""

    reads = Reads.ONE_HEAD

    def route(self, inputs: RouterInputs) -> Routing:
        return decide(inputs.head_scores(), -np.inf)
