"""Our own small adapters: bottleneck modules and a per-task, per-example routable bank."""

from continual.adapters.bank import AdapterBank, segments_for
from continual.adapters.bottleneck import Bottleneck, BottleneckConfig, TaskAdapter

__all__ = ["AdapterBank", "Bottleneck", "BottleneckConfig", "TaskAdapter", "segments_for"]
