"""Routers: which task's adapter handles each input."""

from continual.routers.base import Router, RoutingBatch
from continual.routers.oracle import OracleRouter

__all__ = ["OracleRouter", "Router", "RoutingBatch"]
