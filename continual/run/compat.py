"""Which learners, routers and streams go together: one table, checked once, before any model loads.

A learner's :class:`Head` says how it can be routed (rows of :data:`ROUTED_BY`): one module and head
per task takes any router that reads the true task, frozen features or every task's head; one head
over all labels seen so far routes itself by its own argmax (:class:`HeadRouter`), whatever router
the config names. Everything else that would only fail after training is checked here too.
"""

from __future__ import annotations

import logging

from continual.adapters import AdapterKind
from continual.errors import ContinualError
from continual.learners import AdapterPerTaskConfig, Head
from continual.routers import HeadRouter, Reads, Router
from continual.streams import Stream

log = logging.getLogger(__name__)

ROUTED_BY: dict[Head, frozenset[Reads]] = {
    Head.PER_TASK: frozenset({Reads.TASK_IDS, Reads.FEATURES, Reads.TASK_HEADS}),
    Head.ALL_SEEN: frozenset({Reads.ONE_HEAD}),
}
ROUTES_ITSELF = frozenset({Head.ALL_SEEN})  # these heads are their own router: the configured one is replaced
TAKES_TOKEN_TASKS = frozenset({Head.PER_TASK})  # one head over sentence labels has no room for taggers


def routes_itself(head: Head) -> bool:
    """A learner with this head predicts by its own argmax over every label seen (``router=head``)."""
    return head in ROUTES_ITSELF


def router_for(head: Head, router: Router) -> Router:
    """The configured router, except for a learner that routes itself: it gets :class:`HeadRouter`."""
    if not routes_itself(head) or router.reads in ROUTED_BY[head]:
        return router
    if router.reads is not Reads.TASK_IDS:
        log.info(
            "the learner has one head over all labels seen so far: it predicts by its own argmax "
            "(router=head), not with router %s",
            type(router).__name__,
        )
    return HeadRouter()


def check_adapter(learner: object, adapter: AdapterKind) -> None:
    """Learner options the adapter kind cannot serve (before the backbone loads)."""
    if isinstance(learner, AdapterPerTaskConfig) and learner.transfer == "fusion" and adapter.hook != "output":
        raise ContinualError(
            "learner.transfer=fusion mixes adapter outputs, which prefix tuning does not have: "
            "use transfer=similar or none with adapter=prefix"
        )


def check(stream: Stream, router: Router, head: Head, learner: str) -> None:
    """Every problem between stream, learner and router that would otherwise surface after training."""
    tasks = stream.tasks
    if not stream.routable and router.reads is not Reads.TASK_IDS:
        raise ContinualError(
            f"stream '{stream.name}': its tasks share their texts (the task id is the client id), so only "
            f"router=oracle can route it, not {type(router).__name__}"
        )
    if router.reads not in ROUTED_BY[head]:
        if routes_itself(head):
            raise ContinualError(
                f"{learner} has one head over all labels seen so far: it predicts without task ids by "
                f"its own argmax (router=head), not by {type(router).__name__}"
            )
        raise ContinualError(
            f"router=head reads one head over all labels, and {learner} has one head per task: use "
            "router=prototype, classifier, entropy or oracle"
        )
    tagged = [t.name for t in tasks if not t.kind.per_text]
    if head not in TAKES_TOKEN_TASKS and tagged:
        raise ContinualError(
            f"{learner} has one head over the labels of sentences; tasks {tagged[:5]} are token tasks (type: "
            "tokens), which learner=adapter_per_task tags with a head per task"
        )
    if router.reads in (Reads.FEATURES, Reads.TASK_HEADS) and len(tasks) < 2:
        raise ContinualError(
            f"router: a learned router needs a stream of at least 2 tasks (this one has "
            f"{len(tasks)}); with one task there is nothing to route, use router=oracle"
        )
    if router.accept_rate is not None:
        empty = [t.name for t in tasks if len(t.validation) == 0]
        if empty:
            raise ContinualError(
                f"router.accept_rate: calibrating rejection needs validation examples, but tasks {empty} have none"
            )
