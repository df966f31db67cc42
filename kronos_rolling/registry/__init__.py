"""MLflow Model Registry lifecycle: register, guard, promote, alert, roll back, retain, cadence."""
