"""Routers: which task's adapter handles each input (or none: abstain)."""

from continual.routers.base import ABSTAIN, Reads, Router, RouterInputs, Routing
from continual.routers.classifier import ClassifierRouter
from continual.routers.entropy import EntropyRouter
from continual.routers.head import HeadRouter
from continual.routers.oracle import OracleRouter
from continual.routers.prototype import PrototypeRouter
from continual.routers.ridge import RidgeRouter

__all__ = [
    "ABSTAIN",
    "ClassifierRouter",
    "EntropyRouter",
    "HeadRouter",
    "OracleRouter",
    "PrototypeRouter",
    "Reads",
    "RidgeRouter",
    "Router",
    "RouterInputs",
    "Routing",
]
