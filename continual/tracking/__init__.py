"""Trackers: MLflow for real runs, in-memory for tests."""

from continual.tracking.base import Tracker, flatten, metric_key
from continual.tracking.memory import MemoryTracker
from continual.tracking.mlflow import MLflowTracker

__all__ = ["MLflowTracker", "MemoryTracker", "Tracker", "flatten", "metric_key"]
