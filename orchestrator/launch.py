"""Building a :class:`~orchestrator.platforms.base.Launch`: everything ``submit`` needs.

For one attempt the controller has written to the store (``SUBMITTING``), this gathers
the job's bundle (fetched from the team's shared store when another machine submitted
it), the secrets from this controller's environment, the deadline and segment that
placement decided, the grace, and the checkpoint a chain's next segment starts from.
Reads only; the store is never changed here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from . import bundle as bundle_mod
from . import spec as spec_mod
from . import trust
from .app import App
from .blobstore import BlobStore, materialize_bundle
from .errors import NotFoundError, PrecheckError
from .platforms.base import Handle, Launch, Offer
from .states import AttemptState
from .store import AttemptRow, JobRow, Store, attempt_key

A = AttemptState


def job_spec(job: JobRow) -> spec_mod.JobSpec:
    """The validated spec stored with ``job``."""
    return spec_mod.from_public_dict(job.spec)


def remaining(store: Store, job: JobRow, spec: spec_mod.JobSpec) -> float:
    """What is left of ``max_runtime`` for a chain's next segment (at least a minute)."""
    if not job.checkpoint:
        return spec.resources.max_runtime
    used = sum(a.runtime_s or 0 for a in store.attempts_of(job.id) if a.state == A.CHECKPOINTED)
    return max(spec.resources.max_runtime - used, 60.0) if used else spec.resources.max_runtime


def grace(app: App, spec: spec_mod.JobSpec, platform_name: str) -> float:
    """The job's ``grace:``, else the platform's, else ``controller.grace``."""
    if spec.grace is not None:
        return spec.grace
    settings = app.config.platforms.get(platform_name)
    if settings is not None and settings.grace is not None:
        return settings.grace
    return app.config.controller.grace


def build(app: App, job: JobRow, att: AttemptRow, offer: Offer | None,
          guard: Callable[[], None] | None = None) -> Launch:
    """The Launch of attempt ``att`` of ``job`` (``offer``: its platform's, for attempts
    written before placement recorded the deadline; ``guard``: see ``Launch.guard``).

    Raises:
        PrecheckError: the job's bundle is missing here and in the shared store.
    """
    spec = job_spec(job)
    bundle = _bundle(app, job)
    max_runtime, session = _deadline(app.store, job, att, spec, offer)
    checkpoint = _checkpoint(app, job)
    previous = [a for a in app.store.attempts_of(job.id) if a.state == A.CHECKPOINTED]
    return Launch(
        key=attempt_key(job.id, att.number), job_id=job.id, job_name=job.name, attempt=att.number, spec=spec,
        bundle=bundle, max_runtime_s=max_runtime, session_seconds=session,
        grace_s=grace(app, spec, att.platform), env=job.extra.get("env", {}), secrets=_secrets(app, job, spec),
        checkpoint=checkpoint,
        previous=Handle.from_json(previous[-1].handle) if previous and previous[-1].handle else None,
        **({"guard": guard} if guard is not None else {}),
    )


def _bundle(app: App, job: JobRow) -> bundle_mod.Bundle:
    directory = app.home.bundles / job.bundle
    if not (directory / "manifest.json").is_file() and app.store.shared:
        try:  # submitted on another machine of the team
            materialize_bundle(BlobStore(app.store), job.bundle, app.home.bundles, app.home.blobs)
        except NotFoundError as exc:
            raise PrecheckError(f"the bundle of job {job.short_id} is not in the shared store ({exc}); "
                                "resubmit the job") from exc
    if not (directory / "manifest.json").is_file():
        raise PrecheckError(f"the bundle of job {job.short_id} is missing from {directory}; resubmit the job")
    return bundle_mod.load_bundle(directory, app.home.blobs)


def _secrets(app: App, job: JobRow, spec: spec_mod.JobSpec) -> dict[str, str]:
    """The job's secrets from this controller's environment (held in memory only), only
    those this controller may give the job's submitter (see trust.py)."""
    refused = set(trust.refused_secrets(job, spec.secrets, app.config.team))
    return {name: os.environ[name] for name in spec.secrets if name in os.environ and name not in refused}


def _deadline(store: Store, job: JobRow, att: AttemptRow, spec: spec_mod.JobSpec,
              offer: Offer | None) -> tuple[float, float | None]:
    """(max runtime, session) of the attempt: what placement decided at dispatch."""
    if store.reservations([att.id]):
        return att.max_runtime_s or remaining(store, job, spec), att.session_s
    # An attempt written before schema v2: decide as placement did then.
    left = remaining(store, job, spec)
    session = offer.session_seconds if offer else None
    if not (spec.checkpoint is not None and session is not None and left > session):
        session = None
    return left, session


def _checkpoint(app: App, job: JobRow) -> Path | None:
    """The checkpoint archive the job continues from, if it has one here."""
    if not job.checkpoint:
        return None
    path = app.home.blobs / f"checkpoint-{job.checkpoint}.tar.gz"
    if not path.is_file() and app.store.shared:
        try:  # the previous segment was fetched by another controller
            BlobStore(app.store).get(job.checkpoint, path)
        except NotFoundError:
            pass
    return path if path.is_file() else None
