"""Learners: how a model takes in one task after another (the product and, later, baselines)."""

from continual.learners.adapter_per_task import AdapterPerTask, saved_tasks
from continual.learners.base import Classified, Fingerprints, LearnReport, Learner

__all__ = ["AdapterPerTask", "Classified", "Fingerprints", "LearnReport", "Learner", "saved_tasks"]
