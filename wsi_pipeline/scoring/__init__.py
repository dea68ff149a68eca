"""Scoring slides on a Dask cluster: options and events, the worker task, planning, the in-flight
scheduler."""
