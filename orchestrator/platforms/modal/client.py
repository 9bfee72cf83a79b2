"""The edge between orch and the ``modal`` client: version check, deadlines, errors.

Every call into the client goes through :meth:`ModalAccount.call`, which gives it a
deadline (the client's own retries can wait minutes, and a server that never answers
would hold a tick for ever) and maps the client's exceptions onto orch's error tree
once, here. The client reads its own credentials (``~/.modal.toml`` or
``MODAL_TOKEN_ID``/``MODAL_TOKEN_SECRET``) and server URL (``MODAL_SERVER_URL``);
orch never reads, stores or passes them.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, TypeVar

from ...errors import CapacityError, ConfigError, LostError, PrecheckError, TransientError
from ...retry import Retry

T = TypeVar("T")

#: The client versions the tests run against (pyproject's ``modal`` extra).
TESTED = ((1, 6), (2, 0))
TOKEN_FIX = "run: modal token new (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)"
#: Modal calls: a short ladder on top of the client's own three quick retries.
CALLS = Retry(attempts=3, base=1.0, cap=8.0, jitter=0.5, budget=20.0)


class MissingError(Exception):
    """The named object (sandbox, volume file) does not exist on Modal."""


class AuthRefused(TransientError):
    """Modal rejected the token: the platform is unusable until it is replaced, which
    is never the job's outcome. A read refused so is one orch could not make (UNKNOWN);
    a submit refused so sends the job elsewhere (the platform raises CapacityError)."""


def load_modal() -> Any:
    """The ``modal`` module, refused with one line when absent or outside the tested range."""
    try:
        import modal
    except ImportError as exc:
        raise ConfigError("platform type 'modal' needs the modal client; install it with: "
                          "pip install 'orch[modal]'") from exc
    version = tuple(int(p) for p in modal.__version__.split(".")[:2] if p.isdigit())
    if not TESTED[0] <= version < TESTED[1]:
        raise ConfigError(f"modal client {modal.__version__} is outside the tested range >=1.6,<2; "
                          "install it with: pip install 'orch[modal]'")
    return modal


class ModalAccount:
    """Calls into the client with a deadline each, errors mapped onto orch's tree."""

    def __init__(self, platform: str, deadline: float = 60.0, backoff: Retry = CALLS):
        self.platform = platform
        self.deadline = deadline
        self.backoff = backoff
        self.modal = load_modal()

    def call(self, what: str, fn: Callable[[], T], deadline: float | None = None,
             retry: Retry | None = None) -> T:
        """``fn()`` under a deadline, retried by orch's policy on transient errors
        (never a refused token: asking again cannot help)."""
        policy = retry or self.backoff
        return policy.run(what, lambda: self._once(what, fn, deadline or self.deadline),
                          retry_if=lambda exc: isinstance(exc, TransientError) and not isinstance(exc, AuthRefused))

    def _once(self, what: str, fn: Callable[[], T], deadline: float) -> T:
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the caller's thread below
                box["error"] = exc

        # A daemon thread: a call the server never answers is abandoned, not joined.
        thread = threading.Thread(target=target, name=f"modal-{what}", daemon=True)
        thread.start()
        thread.join(deadline)
        if thread.is_alive():
            raise TransientError(f"Modal {what}: no answer within {deadline:g}s", self.platform)
        if "error" in box:
            raise self._map(what, box["error"]) from box["error"]
        return box["value"]

    def _map(self, what: str, exc: BaseException) -> BaseException:
        """One client exception -> the orch error that says what to do next."""
        e = self.modal.exception
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        if isinstance(exc, e.AuthError):
            return AuthRefused(f"Modal rejected the token ({text}); {TOKEN_FIX}", self.platform)
        if isinstance(exc, (e.NotFoundError, FileNotFoundError)):
            return MissingError(text)
        if isinstance(exc, e.ImageBuildError) or (isinstance(exc, e.RemoteError) and "build" in text.lower()):
            return LostError(f"Modal image build failed: {text}", self.platform)
        if isinstance(exc, e.ResourceExhaustedError):
            return CapacityError(f"Modal has no capacity now: {text}", self.platform)
        if isinstance(exc, e.PermissionDeniedError):
            return PrecheckError(f"Modal refused {what}: {text}", self.platform)
        if isinstance(exc, (e.InvalidError, e.VersionError)):
            return PrecheckError(f"Modal refused {what}: {text}", self.platform)
        if isinstance(exc, (TransientError, CapacityError, PrecheckError, LostError, MissingError)):
            return exc
        # ConnectionError, ServiceError, InternalError, DEADLINE_EXCEEDED, a dropped stream:
        # the remote could not be heard, which says nothing about the run.
        return TransientError(f"Modal {what} failed: {type(exc).__name__}: {text}", self.platform)
