"""Learners: how a model takes in one task after another (the product and the baselines)."""

from continual.learners.adapter_per_task import AdapterPerTask, saved_tasks
from continual.learners.base import Classified, Fingerprints, LearnReport, Learner, check_router
from continual.learners.ewc import EWCConfig
from continual.learners.joint import JointLearner
from continual.learners.memory import EpisodicMemory, MemoryConfig
from continual.learners.sequential import SequentialLearner

__all__ = ["AdapterPerTask", "Classified", "EWCConfig", "EpisodicMemory", "Fingerprints", "JointLearner",
           "LearnReport", "Learner", "MemoryConfig", "SequentialLearner", "check_router", "saved_tasks"]
