"""Learners: how a model takes in one task after another (the product and the baselines)."""

from continual.learners.adapter_per_task import AdapterPerTask, AdapterPerTaskConfig, saved_tasks
from continual.learners.base import Classified, Fingerprints, Learner, LearnerConfig, LearnReport, Schedule, Step, steps
from continual.learners.ewc import EWCConfig
from continual.learners.joint import JointConfig, JointLearner
from continual.learners.memory import EpisodicMemory, MemoryConfig
from continual.learners.sequential import SequentialConfig, SequentialLearner

__all__ = [
    "AdapterPerTask",
    "AdapterPerTaskConfig",
    "Classified",
    "EWCConfig",
    "EpisodicMemory",
    "Fingerprints",
    "JointConfig",
    "JointLearner",
    "LearnReport",
    "Learner",
    "LearnerConfig",
    "MemoryConfig",
    "Schedule",
    "SequentialConfig",
    "SequentialLearner",
    "Step",
    "saved_tasks",
    "steps",
]
