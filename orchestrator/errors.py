"""The one exception tree of orch.

Each class stands for one thing the caller does next, so callers catch the level
they can act on and never match on message strings::

    OrchError                      shown once by the CLI as "Error: <message>"
    ├── SpecError                  job.yaml is wrong: fix the file (exit 2)
    ├── ConfigError                config.yaml / environment is wrong: fix it (exit 2)
    ├── BundleError                code or data cannot be packaged (credential file, missing path)
    ├── NotFoundError              no job / platform matches what the user typed
    ├── StateError                 a transition the state table forbids (a bug or a race lost)
    ├── LeaseLost                  this controller no longer holds the job: stop, touch nothing
    └── PlatformError              a remote platform said no
        ├── TransientError         back off and try the same call again later
        │   └── CredentialsError     our token is refused: wait for the user to sign in again
        ├── CapacityError          no room now (quota, concurrency): wait or go elsewhere
        ├── PrecheckError          bad credentials / spec for this platform: fail fast, never retry
        └── LostError              the remote run is gone: retry the job elsewhere

Design choice: the class decides failover (like SkyPilot's ``no_failover``), so a
platform module maps its client library's exceptions onto this tree once, at its
edge, with ``raise ... from exc``.
"""

from __future__ import annotations


class OrchError(Exception):
    """Base of every error orch shows to a user; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class SpecError(OrchError):
    """A job.yaml is malformed; the message names ``file:line``, the field and the fix."""

    exit_code = 2


class ConfigError(OrchError):
    """The user config (or an environment variable it refers to) is wrong or missing."""

    exit_code = 2


class BundleError(OrchError):
    """Code or datasets cannot be packaged (credential-looking file, unreadable path)."""

    exit_code = 2


class NotFoundError(OrchError):
    """No job, attempt or platform matches the name or id prefix given."""


class UsageError(OrchError):
    """A command-line option that can never work (``--platform nosuch``); nothing was done."""

    exit_code = 2


class StateError(OrchError):
    """A state change the transition table does not allow."""


class LeaseLost(OrchError):
    """This controller's lease on a job ran out mid-work: another may hold it now.

    Raised by ``leases.Keeper.check`` (and so by ``Launch.guard``) right before a side
    effect; platforms must let it pass (it is no PlatformError), and the controller
    stops working on that job without recording anything.
    """


class PlatformError(OrchError):
    """A remote platform refused or failed an operation.

    Attributes:
        platform: the configured platform name, when known.
    """

    def __init__(self, message: str, platform: str | None = None):
        super().__init__(message)
        self.platform = platform


class TransientError(PlatformError):
    """Temporary trouble (429, 5xx, timeout, dropped tunnel): retry the same call later."""


class CredentialsError(TransientError):
    """The platform refused orch's own credentials (a rotated or revoked key, an expired
    token): the platform is unavailable until the user fixes them, and no run on it is
    judged meanwhile — the remote runs go on regardless, so a status read failing this
    way never counts toward LOST."""


class CapacityError(PlatformError):
    """No capacity or quota right now: keep the job queued or place it elsewhere."""


class PrecheckError(PlatformError):
    """The platform rejects this job or these credentials: fail fast, never retry."""


class LostError(PlatformError):
    """The remote run is gone (session killed, host rebooted): retry the job elsewhere."""
