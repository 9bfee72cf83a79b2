"""Google Colab runtimes allocated with the official ``colab`` CLI and driven over SSH.

Each attempt gets its own runtime, ``orch-<attempt key>``: ``colab new -s NAME --gpu
T4`` allocates it, the SSH machinery of ``ssh.py`` reaches it through ``colab ssh
--proxy-mode -s NAME`` as its ProxyCommand, and ``colab stop`` releases it when the
attempt ends. Runtimes orch created but no active attempt owns (a tick that crashed,
a cancel) are stopped by ``reconcile``. ``colab usage`` gives the compute-unit balance.

Terms: Colab's FAQ forbids SSH / remote control on free runtimes without a positive
compute-unit balance, so ``tier: free`` is refused, and a paid tier is refused while
the balance is not positive. See docs/platforms/colab.md.

Design choices:

* Every status read first lists ``colab sessions``: ``colab ssh -s NAME`` *creates*
  NAME when it is missing, so connecting to a runtime that Colab recycled would
  silently start (and bill) a new, empty one.
* The runtime's sshd key cannot be learnt in advance; it is pinned at first contact
  with a runtime this controller just created (over Google's authenticated tunnel)
  and checked on every later connection.
* The CLI may hand out other hardware than asked (an unknown ``--gpu`` becomes an
  A100); ``submit`` checks ``colab sessions`` and stops a runtime with the wrong GPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock

from ... import failpoints
from ...errors import CapacityError, LostError, PlatformError, PrecheckError, TransientError
from ...gpus import COLAB_PLAN_UNITS
from ...quota import Budget
from ...settings import PlatformSettings, PositiveDuration
from ...store import actor
from ..base import Handle, Launch, Offer, QuotaReading, RemoteState, RemoteStatus
from ..ssh import runs
from ..ssh.connection import ACCEPTED_KEY_TYPES, Endpoint, load_key, pinned_keys
from ..ssh.platform import RemoteSettings, SSHPlatform
from .cli import INSTALL_HINT, ColabCLI, ColabSession, proxy_error_class

PREFIX = "orch-"
#: How long one `colab sessions` listing is reused within a tick.
SESSIONS_TTL_S = 3.0
#: Longest runtime per tier, in hours (Colab publishes "up to"; real ones can be shorter).
SESSION_HOURS = {"free": 12.0, "pro": 24.0, "pro+": 24.0}
GPU_MEMORY_GB = {"T4": 15.0, "L4": 22.5, "A100": 40.0, "H100": 80.0}
FREE_TIER_REFUSAL = (
    "Colab's terms forbid SSH and remote control on free runtimes without a positive compute-unit "
    "balance, so orch will not drive a free runtime over SSH; with a paid plan set `tier: pro` "
    "(or `pro+`), otherwise use the `kaggle` or `colab_drive` platform"
)
KEY_NEEDED = f"set `key:` to an Ed25519 or ECDSA private key ({', '.join(ACCEPTED_KEY_TYPES[:2])})"


class ColabSettings(RemoteSettings):
    """A ``type: colab`` entry of config.yaml."""

    type: Literal["colab"] = "colab"
    gpu: Literal["T4", "L4", "A100", "H100"] = "T4"
    tier: Literal["free", "pro", "pro+"] = "free"
    #: The official CLI (`pipx install google-colab-cli`); a name on PATH or a path.
    colab_bin: str = "colab"
    #: The key `colab ssh` sends to the runtime; Colab refuses RSA.
    key: str | None = "~/.ssh/id_ed25519"
    remote_dir: str = "/content/orch"
    user: str = "root"
    cli_timeout: PositiveDuration = 120.0
    new_timeout: PositiveDuration = 600.0


def session_name(key: str) -> str:
    return PREFIX + key


class ColabPlatform(SSHPlatform):
    """One Colab runtime per attempt, reached with ``colab ssh --proxy-mode``."""

    settings_model = ColabSettings
    settings: ColabSettings
    #: The controller calls reconcile() every tick, even when no attempt used Colab.
    reconcile_every_tick = True
    #: Runtime names live in this machine's CLI session store: in team mode only the
    #: controller on the machine that created an attempt polls, fetches or stops it, and
    #: no other declares it LOST (issue: another machine lists the runtime as `[?]`).
    host_bound = True

    def __init__(self, name: str, settings: ColabSettings, home: Any):
        super().__init__(name, settings, home)
        self.cli = ColabCLI(settings.colab_bin, platform=name, store=self.state_dir / "colab-cli-sessions.json",
                            timeout_s=settings.cli_timeout, new_timeout_s=settings.new_timeout)
        #: Names in the CLI's store are local to this machine: runs are this controller's.
        self.controller = actor().split(":")[0] if "ORCH_CONTROLLER_ID" not in os.environ else actor()
        self._listed: tuple[float, list[ColabSession]] | None = None

    # ------------------------------------------------------------------ connecting
    @property
    def known_hosts(self) -> Path:
        """Pins of runtime host keys, one per session, kept by this platform."""
        return self.state_dir / "known_hosts"

    def endpoint(self, handle: Handle | None = None) -> Endpoint:
        session = handle.data["session"] if handle is not None else ""
        return self.session_endpoint(session)

    def session_endpoint(self, session: str) -> Endpoint:
        key = Path(self.settings.key).expanduser() if self.settings.key else None
        return Endpoint(
            name=self.name, host="colab-runtime", user=self.settings.user, key=key,
            known_hosts=self.known_hosts, host_key_name=f"colab-{session}",
            proxy=tuple(self.cli.proxy_argv(session, key)), timeouts=self.settings.timeouts.to_timeouts(),
            proxy_errors=proxy_error_class,
        )


    # ------------------------------------------------------------------ describe
    @classmethod
    def default_budget(cls, settings: PlatformSettings) -> Budget:
        """A paid Colab plan's compute units a month (see ``gpus.COLAB_PLAN_UNITS``)."""
        assert isinstance(settings, ColabSettings)
        return (Budget.monthly_units(COLAB_PLAN_UNITS.get(settings.tier), f"default for Colab {settings.tier.title()}")
                or super().default_budget(settings))

    def offer(self) -> Offer:
        s = self.settings
        available, reason = True, ""
        if s.tier == "free":
            available, reason = False, FREE_TIER_REFUSAL
        elif self.cli.path() is None:
            available, reason = False, f"the `colab` CLI is not installed; {INSTALL_HINT}"
        elif s.key is None:
            available, reason = False, KEY_NEEDED
        else:
            try:  # a missing or refused key is the platform's problem, never a job's outcome
                load_key(self.session_endpoint("check"))
            except PrecheckError as exc:
                available, reason = False, str(exc)
        hours = s.session_hours or SESSION_HOURS[s.tier]
        return Offer(
            platform=self.name, type="colab", gpus=(s.gpu,), gpu_memory_gb=GPU_MEMORY_GB.get(s.gpu), gpu_count=1,
            max_concurrent=s.max_concurrent, session_seconds=hours * 3600, internet=True, tier=s.tier,
            available=available, reason=reason,
        )

    def check(self) -> list[str]:
        problems = []
        if self.settings.tier == "free":
            problems.append(FREE_TIER_REFUSAL)
        if self.cli.path() is None:
            problems.append(f"the `colab` CLI was not found ({self.settings.colab_bin}); {INSTALL_HINT}, "
                            "or set `colab_bin:` to its path")
        try:
            load_key(self.session_endpoint("check"))
        except PrecheckError as exc:
            problems.append(str(exc))
        if self.settings.key is None:
            problems.append(KEY_NEEDED)
        if self.cli.path() is not None:
            try:
                self.cli.check_version()
                self.cli.usage()
            except PlatformError as exc:
                problems.append(str(exc))
        log = Path("~/.config/colab-cli/colab.log").expanduser()
        try:
            if log.stat().st_mode & 0o077:
                problems.append(
                    f"{log} is readable by other users and the colab CLI logs request headers there, bearer "
                    f"tokens included: run `chmod 600 {log}` (the CLI has no setting to stop logging)")
        except OSError:
            pass
        return problems

    def quota(self) -> QuotaReading | None:
        """The compute-unit balance as ``limit`` (what is left from now on), or None."""
        if self.cli.path() is None:
            return None
        try:
            usage = self.cli.usage()
        except PlatformError:
            return None  # an unclear read must not exclude the platform
        if usage is None:
            return None
        return QuotaReading(unit="compute_units", used=0.0, limit=usage.balance,
                            source=f"colab usage (burning {usage.rate_per_hour:g}/h)")

    # ------------------------------------------------------------------ lifecycle
    def refused_login(self) -> str | None:
        """The ``colab`` CLI said it is not logged in (or its login expired) in this command."""
        return self.cli.refused

    def _gate(self) -> None:
        """Refuse what Colab's terms forbid: SSH without a positive compute-unit balance."""
        if self.settings.tier == "free":
            raise PrecheckError(f"{self.name}: {FREE_TIER_REFUSAL}", self.name)
        if self.settings.key is None:
            raise PrecheckError(f"{self.name}: set `key:` to an Ed25519 or ECDSA private key", self.name)
        load_key(self.session_endpoint("check"))  # present and not RSA, before the CLI is asked
        self.cli.check_version()
        usage = self.cli.usage()
        if usage is not None and usage.balance <= 0:
            raise CapacityError(
                f"{self.name}: the compute-unit balance is {usage.balance:g}; Colab allows SSH only with a "
                "positive balance: buy compute units (`colab pay`) or let the job go elsewhere",
                self.name,
            )

    def _sessions(self) -> list[ColabSession]:
        """``colab sessions``, reused for a few seconds (one tick polls many attempts)."""
        now = time.monotonic()
        if self._listed is None or now - self._listed[0] > SESSIONS_TTL_S:
            self._listed = (now, self.cli.sessions())
        return self._listed[1]

    def _session(self, name: str, endpoint: str | None = None) -> ColabSession | None:
        """Our runtime in a fresh-enough listing, by name or else by its endpoint; one
        listed without a name (the CLI's store lost it) gets its name back."""
        listed = self._sessions()
        found = next((s for s in listed if s.name == name), None)
        endpoint = endpoint or self._ledger().get(name, {}).get("endpoint")
        if found is None and endpoint:
            found = next((s for s in listed if s.endpoint == endpoint), None)
            if found is not None:
                self.cli.adopt(name, endpoint)
        return found

    # The ledger: runtimes this controller created and has not seen stopped yet, with
    # their endpoints once known. Written before `colab new` (intent first), so a crash
    # or a `new` killed at its deadline leaves a trace. An entry leaves only when a
    # successful listing shows the runtime gone.
    def _ledger(self, name: str | None = None, record: dict | None = None, remove: bool = False) -> dict[str, dict]:
        path = self.state_dir / "sessions.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError):
                raw = {}
            entries = {n: {} for n in raw} if isinstance(raw, list) else dict(raw)
            if name is None:
                return entries
            if remove:
                entries.pop(name, None)
            else:
                entries[name] = {**entries.get(name, {}), **(record or {})}
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(entries, sort_keys=True))
            os.replace(tmp, path)
            return entries

    def _cut_off_runtime(self, name: str, record: dict, ours: dict[str, dict], listed: list[ColabSession]) -> str | None:
        """The endpoint of the runtime a `colab new -s NAME` that was cut off (killed at its
        deadline, or a crashed tick) made after Colab assigned it: the one nameless runtime
        that appeared during that call and is no other ledger entry's. It is recorded."""
        if "before" not in record:
            return None
        before = set(record.get("before", []))
        known = {r.get("endpoint") for r in ours.values() if r.get("endpoint")}
        new = [s for s in listed if s.name == "?" and s.endpoint not in before and s.endpoint not in known]
        if len(new) != 1:
            return None
        self._ledger(name, {"endpoint": new[0].endpoint})
        return new[0].endpoint

    def submit(self, launch: Launch) -> Handle:
        self._gate()
        name = session_name(launch.key)
        self._listed = None
        session = self._session(name)
        if session is None:
            ours = self._ledger()
            record = ours.get(name, {})
            endpoint = record.get("endpoint") or self._cut_off_runtime(name, record, ours, self._sessions())
            if endpoint and not record.get("endpoint"):  # an earlier `new` was cut off: use its runtime
                session = self._session(name, endpoint)
        if session is None:
            record = self._ledger().get(name, {})
            if "created" in record and time.time() - record["created"] < self.settings.new_timeout:
                # The last `new` for this attempt is recent: its runtime may not be listed yet.
                raise TransientError(f"{self.name}: runtime of {name} is not listed yet", self.name)
            before = [s.endpoint for s in self._sessions()]
            self._ledger(name, {"endpoint": None, "before": before, "created": time.time()})
            self._listed = None
            try:
                self.cli.new(name, self.settings.gpu)
            except (CapacityError, PrecheckError):
                self._ledger(name, remove=True)  # Colab said no: nothing was assigned
                raise
            failpoints.hit("colab_after_new")
            entry = self.cli.entry(name) or {}
            if entry.get("endpoint"):
                self._ledger(name, {"endpoint": entry["endpoint"]})
            self._listed = None
            session = self._session(name, entry.get("endpoint"))
            if session is None:
                raise TransientError(f"{self.name}: `colab new -s {name}` made a runtime Colab does not list yet",
                                     self.name)
        if session.hardware.upper() != self.settings.gpu:
            self._stop(name)
            raise CapacityError(
                f"{self.name}: asked Colab for a {self.settings.gpu} and got {session.hardware}; stopped it",
                self.name,
            )
        self._ledger(name, {"endpoint": session.endpoint})
        # First contact with a runtime we created, through Google's authenticated
        # tunnel: its sshd key is pinned now and checked on every later connection.
        endpoint = dataclasses.replace(self.session_endpoint(name), pin_first_contact=True)
        extra = {"session": name, "endpoint": session.endpoint, "controller": self.controller}
        return self._tunnel(name, lambda: self.call(None, lambda conn: self.start(conn, launch, extra),
                                                    starting=True, endpoint=endpoint))

    def _tunnel(self, name: str, fn):
        """``fn()``; when the tunnel is refused (401/404: an expired runtime-proxy token
        looks just like a gone runtime), the token is marked stale so the CLI renews it."""
        try:
            return fn()
        except TransientError as exc:
            if "HTTP 401" in str(exc) or "HTTP 404" in str(exc):
                self.cli.expire(name)
                self._listed = None
            raise

    def owns(self, handle: Handle) -> bool:
        """Only the controller that created a runtime can name it (the CLI's store is local)."""
        return handle.data.get("controller", self.controller) == self.controller

    def find(self, key: str) -> Handle | None:
        name = session_name(key)
        if self._session(name) is None:
            return None
        endpoint = self.session_endpoint(name)
        if not pinned_keys(endpoint):
            return None  # never reached: nothing can have started there

        def look(conn):
            workdir = self.attempt_dir(conn, key)
            status = runs.detached_status(conn, workdir)
            if not status.exists or status.pid is None:
                return None
            return Handle(key, {"dir": workdir, "root": self.root(conn), "pid": status.pid, "session": name})

        return self.call(None, look, endpoint=endpoint)  # looking, not starting: see SSHPlatform.call

    def poll(self, handle: Handle) -> RemoteStatus:
        if not self.owns(handle):
            return RemoteStatus(RemoteState.UNKNOWN, f"a Colab run of controller {handle.data['controller']}: "
                                "only it can reach the runtime")
        if self._session(handle.data["session"], handle.data.get("endpoint")) is None:
            return RemoteStatus(RemoteState.LOST, "the Colab runtime is gone (idle or lifetime limit, or stopped)")
        return self._tunnel(handle.data["session"], lambda: super(ColabPlatform, self).poll(handle))

    def fetch(self, handle: Handle, dest: Path) -> None:
        if self._session(handle.data["session"], handle.data.get("endpoint")) is None:
            raise LostError(f"{self.name}: the Colab runtime is gone before its results were fetched", self.name)
        self._tunnel(handle.data["session"], lambda: super(ColabPlatform, self).fetch(handle, dest))

    def cancel(self, handle: Handle) -> None:
        """Stop the runtime: that ends the run and the billing at once."""
        self._stop(handle.data["session"], handle.data.get("endpoint"))

    def release(self, handle: Handle) -> None:
        """Stop the runtime (its disk goes with it) and forget its host key."""
        self._stop(handle.data["session"], handle.data.get("endpoint"))
        shutil.rmtree(self.state_dir / "fetch" / handle.key, ignore_errors=True)

    def _stop(self, name: str, endpoint: str | None = None) -> None:
        """Stop the runtime and confirm with a listing; the ledger keeps it until then.

        Raises:
            TransientError: the listing could not be read, or still shows the runtime.
        """
        self.drop_link(self.session_endpoint(name))
        self._listed = None
        if self._session(name, endpoint) is not None:
            self.cli.stop(name)
            self._listed = None
            if self._session(name, endpoint) is not None:
                raise TransientError(f"{self.name}: runtime {name} is still listed after `colab stop`", self.name)
        self._ledger(name, remove=True)
        self._forget(name)

    def _forget(self, name: str) -> None:
        path = self.known_hosts
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines(keepends=True) if not line.startswith(f"colab-{name} ")]
        path.write_text("".join(kept))

    def reconcile(self, active_keys: set[str]) -> None:
        """Stop every runtime this controller created that no active attempt owns.

        Runs every tick (``reconcile_every_tick``) but costs nothing while the ledger is
        empty. Only runtimes in the ledger are touched: other ``orch-*`` runtimes may
        belong to another controller on the same account. A ``colab new`` that was cut
        off after Colab assigned the runtime leaves it nameless (``[?]``): the one new
        nameless runtime that appeared during that call is taken to be ours.
        """
        ours = self._ledger()
        if not ours:
            return
        active = {session_name(k) for k in active_keys}
        self._listed = None
        listed = self._sessions()  # raises rather than read "nothing" into a failed listing
        for name, record in sorted(ours.items()):
            if name in active:
                continue
            endpoint = record.get("endpoint") or self._cut_off_runtime(name, record, ours, listed)
            session = self._session(name, endpoint)
            if session is not None:
                self._stop(name, endpoint)
            elif time.time() - record.get("created", 0) > self.settings.new_timeout:
                self._ledger(name, remove=True)  # a successful listing shows it gone
                self._forget(name)
