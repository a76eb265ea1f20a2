"""Learners: how a model takes in one task after another (the product and the baselines)."""

from continual.learners.adapter_files import saved_tasks
from continual.learners.adapter_per_task import AdapterPerTask, AdapterPerTaskConfig
from continual.learners.base import (
    Classified,
    Fingerprints,
    Head,
    Learner,
    LearnerConfig,
    LearnReport,
    Schedule,
    SingleHead,
    Step,
    steps,
)
from continual.learners.memory import EpisodicMemory, MemoryConfig
from continual.learners.ridge import RidgeConfig, RidgeLearner
from continual.learners.single_head import JointConfig, SingleHeadConfig, SingleHeadLearner
from continual.learners.techniques import DerppConfig, EWCConfig, LwfConfig

__all__ = [
    "AdapterPerTask",
    "AdapterPerTaskConfig",
    "Classified",
    "DerppConfig",
    "EWCConfig",
    "EpisodicMemory",
    "Fingerprints",
    "Head",
    "JointConfig",
    "LearnReport",
    "Learner",
    "LearnerConfig",
    "LwfConfig",
    "MemoryConfig",
    "RidgeConfig",
    "RidgeLearner",
    "Schedule",
    "SingleHead",
    "SingleHeadConfig",
    "SingleHeadLearner",
    "Step",
    "saved_tasks",
    "steps",
]
