"""The states of a background job, as ``job.json`` records them and the front ends show them.

Standard library only: the Slicer module and the web page import it at module level, where
importing :mod:`assft.workspace` (SimpleITK, the registry) would load far more than a list of
names. The job store itself is :mod:`assft.workspace.jobs`.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FINAL_STATES", "JOB_STATES", "STARTING", "JobState"]


class JobState(StrEnum):
    """The state of a job: the one list, for the engine that writes ``job.json`` and the Slicer
    module that reads it (plain strings in the JSON)."""

    QUEUED = "queued"
    """Created, its process not started yet."""
    RUNNING = "running"
    """Its process runs (as long as that process is alive: else it reads ``killed``)."""
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    """Stopped by ``assft cancel`` (or a signal); it changed nothing."""
    KILLED = "killed"
    """A ``running`` job whose process is gone, as readers report it (it could not record it)."""
    UNKNOWN = "unknown"
    """Never written: the job store's entry for a job whose ``job.json`` is unreadable."""


JOB_STATES = (
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.DONE,
    JobState.FAILED,
    JobState.CANCELLED,
    JobState.KILLED,
)
"""The states a job can be in."""
FINAL_STATES = (JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.KILLED)
"""The states of a job that has ended."""
STARTING = "starting"
"""What the front ends show for a detached launch whose job is not recorded yet (never written
to ``job.json``)."""
