"""The durable job runner: background work as rows that survive a restart (see runner.py)."""
from llmp.jobs.runner import Handler, JobContext, JobRunner

__all__ = ["Handler", "JobContext", "JobRunner"]
