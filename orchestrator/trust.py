"""The team-mode trust model: which secrets this controller may give a job, and whose
jobs it may run on this machine.

A controller's secrets are its user's. In a shared queue any member can submit a job
whose ``run:`` prints its secrets to its outputs, so a controller gives a job every
secret it names only when the job was submitted by the controller's own user
(:func:`orchestrator.store.user`); another member's job gets only the names this
controller's config shares (``team.share_secrets``). A ``local`` platform runs jobs as this machine's user (with
its files, ``~/.ssh`` included), so other members' jobs run there only with
``team.run_others_locally: true``.

Design choice: a job that may not have a secret here is not failed; it waits, with the
reason, for a controller that can give it (its submitter's, or one that shares the name).
"""

from __future__ import annotations

from .settings import TeamSettings
from .store import JobRow, user


def is_own(job: JobRow) -> bool:
    """True when ``job`` was submitted by this controller's user."""
    return job.submitted_by == user()


def refused_secrets(job: JobRow, names, team: TeamSettings) -> list[str]:
    """The secret ``names`` of ``job`` this controller may not give it."""
    if is_own(job):
        return []
    shared = set(team.share_secrets)
    return [n for n in names if n not in shared]


def refusal_reason(job: JobRow, refused: list[str]) -> str:
    """One sentence for ``orch plan``: why the job waits and who can run it."""
    return (f"secret {', '.join(refused)} of {job.submitted_by}'s job is not shared by this controller "
            f"(user {user()}); it waits for a controller of {job.submitted_by}, or one whose config lists "
            "the name under team.share_secrets")


def local_refusal(job: JobRow, team: TeamSettings) -> str | None:
    """Why ``job`` may not run on this machine's local platforms, or None when it may."""
    if is_own(job) or team.run_others_locally:
        return None
    return (f"{job.submitted_by}'s job would run as {user()} on this machine; set team.run_others_locally: true "
            "to allow it")
