"""continual: continual-learning experiments for BERT-family encoders.

A stream of tasks is learned one task at a time: a new small adapter and head per task on a frozen
encoder, a router that picks the adapter for each input, and an accuracy matrix logged to MLflow.
The core (streams, backbone, adapters, learners, routers, metrics, tracking) is plain Python;
only :mod:`continual.commands.cli` knows about Hydra.
"""

from continual.errors import ContinualError

__all__ = ["ContinualError", "__version__"]
__version__ = "0.1.0"
