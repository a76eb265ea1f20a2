"""The file a registered bank's model is loaded from (MLflow's models from code: no pickled object).

MLflow copies this file into the model folder and runs it on load; the class lives in
:mod:`continual.serving.pyfunc`, so the installed package's code is what serves.
"""

import mlflow.models

from continual.serving.pyfunc import BankModel

mlflow.models.set_model(BankModel())
