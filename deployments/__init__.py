"""Deployments of the export: `python -m deployments.serve`, or prefect.yaml for a pool."""
