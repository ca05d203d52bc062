"""Retraining and batch prediction: step functions, the DAG, its local runner, Hera definitions."""
