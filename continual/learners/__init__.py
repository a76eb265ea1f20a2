"""Learners: how a model takes in one task after another (the product and, later, baselines)."""

from continual.learners.adapter_per_task import AdapterPerTask
from continual.learners.base import LearnReport, Learner

__all__ = ["AdapterPerTask", "LearnReport", "Learner"]
