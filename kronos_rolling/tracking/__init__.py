"""MLflow as the system of record: the tracking server, what a run logs, fetching adapters, the pyfunc model."""
