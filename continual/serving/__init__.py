"""After a run: a saved bank answering texts (predictor), the registry door, the MLflow pyfunc model."""
