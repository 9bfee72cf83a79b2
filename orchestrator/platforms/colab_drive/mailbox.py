"""The controller's side of the Drive mailbox that ``kernels/colab_agent.py`` reads.

Layout under the configured folder in My Drive (the agent's docstring has the same
map)::

    <folder>/                      orch_kind=root
      blobs/                       bundle files, datasets, checkpoints; tagged by content hash
      agents/<agent>/heartbeat.json  orch_kind=heartbeat; its properties carry the state
      agents/<agent>/inbox/        ticket-<key>.json, written here and nowhere else
      runs/<key>/                  orch_kind=run; status.json (made by the controller, written
                                   by the agent), artefacts; property orch_cancel asks the
                                   agent to stop

Design choice: Drive has no compare-and-swap and allows duplicate names, so no agent
ever claims a shared job. The controller picks one agent (fresh heartbeat, idle, enough
time left) and writes the ticket into that agent's inbox; only that agent reads it.
Every tag is a ``properties`` entry, not ``appProperties``: the agent writes through
Colab's OAuth client, and ``appProperties`` are private to the client that set them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from ...errors import LostError
from ...gpus import reported_type
from ..base import Handle, Launch
from .transfer import FILE_FIELDS, FOLDER_MIME, Transfers, quote, sha256_file

def _needs_gpu(launch: Launch) -> bool:
    res = getattr(getattr(launch, "spec", None), "resources", None)
    return bool(res is not None and res.wants_gpu and not res.cpu_fallback)


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def drive_time(text: str | None) -> float:
    """Epoch seconds of an RFC 3339 time as Drive prints it (0 when absent)."""
    if not text:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class AgentInfo:
    """One agent as its heartbeat file describes it.

    ``modified`` is Drive's own clock (the file's ``modifiedTime``), so an agent with a
    wrong clock cannot look fresh; ``time_left_s`` was true at that moment.
    """

    id: str
    heartbeat_id: str
    inbox: str
    state: str
    job: str
    time_left_s: float
    modified: float
    gpu: str
    gpu_memory_gb: float | None
    gpu_count: int
    folder: str = ""  # the agent's own folder (the heartbeat's parent)

    @classmethod
    def from_file(cls, f: Mapping[str, Any]) -> "AgentInfo":
        p = f.get("properties") or {}
        gpu_name = p.get("orch_gpu", "")
        mb = float(p.get("orch_gpu_mb") or 0)
        return cls(
            id=p.get("orch_agent", "?"), heartbeat_id=f["id"], inbox=p.get("orch_inbox", ""),
            state=p.get("orch_state", "unknown"), job=p.get("orch_job", ""),
            time_left_s=float(p.get("orch_time_left") or 0), modified=drive_time(f.get("modifiedTime")),
            gpu=reported_type(gpu_name) if gpu_name else "", gpu_memory_gb=round(mb / 1024, 1) if mb else None,
            gpu_count=int(p.get("orch_gpu_count") or 0), folder=(f.get("parents") or [""])[0],
        )

    def age(self, now: float) -> float:
        return max(0.0, now - self.modified)

    def time_left(self, now: float) -> float:
        return self.time_left_s - self.age(now)

    def fresh(self, now: float, stale_after: float) -> bool:
        return self.age(now) <= stale_after and self.state != "stopped"


class Mailbox:
    """Folders, heartbeats, tickets and run folders of one orch folder in Drive.

    Args:
        transfers: the retrying Drive wrapper.
        folder: the folder's name in My Drive (created on first use).
        controller: this controller's identity (one per orch home). Every ticket and run
            folder carries it, and only its own are ever cleaned up, so two controllers on
            one Google account never delete each other's runs.
    """

    def __init__(self, transfers: Transfers, folder: str, controller: str = "", root_file: Path | None = None):
        self.t = transfers
        self.folder_name = folder
        self.controller = controller
        self.root_file = root_file
        self._ids: dict[str, str] = {}

    # ---- folders (ids cached for the life of this object: one tick)
    @property
    def root(self) -> str:
        """The mailbox folder's id, kept in ``root_file`` once known.

        Design choice: where a create answered 500 and a lagging listing hid the folder
        it made, there are two; the one this controller uses (and prints into the agent
        notebook) must then stay the same across ticks, whatever a later listing shows.
        """
        if "root" not in self._ids:
            self._ids["root"] = self._known_root() or self._find_root()
        return self._ids["root"]

    def _known_root(self) -> str | None:
        try:
            doc = json.loads(self.root_file.read_text()) if self.root_file else {}
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("folder") != self.folder_name or not doc.get("id"):
            return None
        try:
            found = self.t.get(str(doc["id"]), "id,trashed")
        except LostError:
            return None  # deleted in Drive: find or make it again
        return None if found.get("trashed") else found["id"]

    def _find_root(self) -> str:
        found = self.t.folder(self.folder_name, "root", {"orch_kind": "root"})["id"]
        if self.root_file:
            self.root_file.parent.mkdir(parents=True, exist_ok=True)
            self.root_file.write_text(json.dumps({"folder": self.folder_name, "id": found}))
        return found

    def sub(self, name: str) -> str:
        if name not in self._ids:
            self._ids[name] = self.t.folder(name, self.root, {"orch_kind": name})["id"]
        return self._ids[name]

    def _tagged(self, kind: str, **props: str) -> str:
        terms = [f"properties has {{ key='orch_kind' and value={quote(kind)} }}",
                 f"properties has {{ key='orch_root' and value={quote(self.root)} }}"]
        terms += [f"properties has {{ key={quote(k)} and value={quote(v)} }}" for k, v in props.items()]
        return " and ".join(terms) + " and trashed = false"

    # ---- agents
    def agents(self) -> list[AgentInfo]:
        """Every agent that ever wrote a heartbeat here (one list call). An agent whose
        heartbeat create answered an error may have two: the one it still writes wins."""
        newest: dict[str, AgentInfo] = {}
        for info in (AgentInfo.from_file(f) for f in self.t.list(self._tagged("heartbeat"))):
            if info.id not in newest or info.modified > newest[info.id].modified:
                newest[info.id] = info
        return list(newest.values())

    def agent(self, heartbeat_id: str, stale_after: float | None = None) -> AgentInfo:
        """One agent's current heartbeat; LostError when its heartbeat file is gone.

        With ``stale_after``, a stale heartbeat is checked against the agent's others (a
        duplicate made by a create that answered an error): the freshest one counts.
        """
        info = AgentInfo.from_file(self.t.get(heartbeat_id))
        if stale_after is None or info.fresh(time.time(), stale_after) or info.state == "stopped":
            return info
        return next((a for a in self.agents() if a.id == info.id and a.modified > info.modified), info)

    def tickets(self, **props: str) -> list[dict[str, Any]]:
        """This controller's tickets (with ``props`` narrowing them)."""
        return self.t.list(self._tagged("ticket", orch_controller=self.controller, **props))

    def all_tickets(self) -> list[dict[str, Any]]:
        """Every controller's tickets: an agent with any ticket waiting is not idle."""
        return self.t.list(self._tagged("ticket"))

    # ---- runs
    def runs(self, everyone: bool = False) -> list[dict[str, Any]]:
        """This controller's run folders (every controller's with ``everyone``)."""
        mine = {} if everyone else {"orch_controller": self.controller}
        return self.t.list(self._tagged("run", **mine), fields="id,name,properties,createdTime")

    def other_controllers(self) -> set[str]:
        """Identities of other controllers with tickets or runs in this folder now."""
        found = {(f.get("properties") or {}).get("orch_controller", "") for f in self.runs(everyone=True)}
        found |= {(f.get("properties") or {}).get("orch_controller", "") for f in self.all_tickets()}
        return {c for c in found if c and c != self.controller}

    def run_folder(self, key: str) -> dict[str, Any] | None:
        found = self.t.list(self._tagged("run", orch_controller=self.controller, orch_key=key))
        return found[0] if found else None

    def run_files(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The files of a run folder by name (the newest wins if a name repeats)."""
        files = self.t.list(f"{quote(run_id)} in parents and trashed = false")
        return {f["name"]: f for f in files}

    def log_parts(self, run_id: str) -> list[tuple[int, dict[str, Any]]]:
        """The log increments of a running job as (offset, file), in order."""
        q = f"{quote(run_id)} in parents and properties has {{ key='orch_kind' and value='logpart' }} and trashed = false"
        parts = []
        for f in self.t.list(q):
            try:
                parts.append((int((f.get("properties") or {}).get("orch_offset", "")), f))
            except ValueError:
                continue  # not written by an agent
        return sorted(parts, key=lambda p: p[0])

    def status(self, files: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
        """The agent's ``status.json`` for a run, or None before the agent took it."""
        f = files.get("status.json")
        if f is None:
            return None
        try:
            return json.loads(self.t.read_bytes(f["id"]))
        except ValueError:
            return None  # caught mid-write by a non-atomic writer: read it next time

    def handle(self, folder: Mapping[str, Any]) -> Handle:
        p = folder.get("properties") or {}
        return Handle(p["orch_key"], {"run": folder["id"], "agent": p.get("orch_agent", ""),
                                      "heartbeat": p.get("orch_heartbeat", ""), "inbox": p.get("orch_inbox", ""),
                                      "status": p.get("orch_status", ""), "ticket": p.get("orch_ticket", "")})

    # ---- clean-up (orch gc)
    def garbage(self, before: float) -> list[tuple[str, dict[str, Any]]]:
        """(kind, file) for what orch made here and nobody touched since ``before``:
        blobs (code, datasets, checkpoints; touched whenever a job reuses them) and the
        folders of agents whose last heartbeat is older. Nothing else is ever listed."""
        out: list[tuple[str, dict[str, Any]]] = []
        blobs = self.sub("blobs")
        for f in self.t.list(f"{quote(blobs)} in parents and trashed = false"):
            p = f.get("properties") or {}
            if not (p.get("orch_sha256") or p.get("orch_digest")) or drive_time(f.get("modifiedTime")) >= before:
                continue
            kind = "dataset" if p.get("orch_digest") else "checkpoint" if f["name"].startswith("checkpoint-") else "code"
            out.append((kind, f))
        for agent in self.agents():
            if agent.modified < before:
                out.append(("agent", {"id": agent.folder, "name": f"agents/{agent.id}",
                                      "modifiedTime": _rfc3339(agent.modified)}))
        return out

    def owned(self, file_id: str) -> bool:
        """Whether ``file_id`` is a blob or an agent folder of this mailbox (gc deletes nothing else)."""
        f = self.t.get(file_id)
        p = f.get("properties") or {}
        if self.sub("blobs") in (f.get("parents") or []):
            return bool(p.get("orch_sha256") or p.get("orch_digest"))
        return p.get("orch_kind") == "agent" and p.get("orch_root") == self.root

    # ---- posting work
    def upload_inputs(self, launch: Launch) -> dict[str, Any]:
        """Put the bundle, datasets and checkpoint in ``blobs/`` (each once, by content)."""
        blobs = self.sub("blobs")
        bundle = launch.bundle
        files = []
        for path, sha in ((bundle.manifest_path, None), (bundle.code_archive, bundle.code_sha256)):
            sha = sha or sha256_file(path)
            f, _ = self.t.ensure_blob(path, parent=blobs, name=f"{sha[:16]}-{path.name}",
                                      identity=("orch_sha256", sha), sha256=sha)
            files.append({"name": path.name, "id": f["id"], "sha256": sha, "size": path.stat().st_size})
        datasets = []
        for ds in bundle.datasets:
            f, _ = self.t.ensure_blob(ds.archive, parent=blobs, name=ds.filename, identity=("orch_digest", ds.digest),
                                      properties={"orch_sha256": ds.sha256}, sha256=ds.sha256)
            datasets.append({"digest": ds.digest, "id": f["id"], "sha256": ds.sha256, "size": ds.size})
        checkpoint = None
        if launch.checkpoint is not None:
            sha = sha256_file(launch.checkpoint)
            f, _ = self.t.ensure_blob(launch.checkpoint, parent=blobs, name=f"checkpoint-{sha[:16]}.tar.gz",
                                      identity=("orch_sha256", sha), sha256=sha)
            checkpoint = {"id": f["id"], "sha256": sha, "size": launch.checkpoint.stat().st_size}
        return {"bundle": {"digest": bundle.digest, "files": files}, "datasets": datasets, "checkpoint": checkpoint}

    def open_run(self, launch: Launch, agent: AgentInfo) -> dict[str, Any]:
        """The run folder for ``launch.key`` (found again after a crash, else created),
        with an empty ``status.json`` the agent will overwrite by id.

        Design choice: the controller creates every file both sides read by id (the run
        folder, ``status.json``) and records their ids, because Drive's listings lag
        behind creates; a read by id is always current.
        """
        existing = self.run_folder(launch.key)
        if existing is not None:
            return existing
        props = {"orch_kind": "run", "orch_root": self.root, "orch_controller": self.controller,
                 "orch_key": launch.key, "orch_agent": agent.id,
                 "orch_heartbeat": agent.heartbeat_id, "orch_inbox": agent.inbox, "orch_job": launch.job_id}
        body = {"name": launch.key, "mimeType": FOLDER_MIME, "parents": [self.sub("runs")], "properties": props}
        return self.t.create(f"create run folder {launch.key}",
                             lambda: self.t.service.files().create(body=body, fields=FILE_FIELDS),
                             lookup=self._tagged("run", orch_controller=self.controller, orch_key=launch.key))

    def post_ticket(self, launch: Launch, agent: AgentInfo, run: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``status.json`` (state ``new``) and the ticket into ``agent``'s inbox, then
        mark the run folder as posted; returns the run folder as it now is.

        The mark is written last: a run folder without it is what a crash mid-way leaves,
        and ``submit`` then starts over (an agent drops a ticket whose run folder is gone).
        """
        props = run.get("properties") or {}
        if props.get("orch_ticket"):
            return dict(run)
        key = launch.key
        status = self.t.put_bytes(json.dumps({"state": "new", "key": key}).encode(), name="status.json",
                                  parent=run["id"], properties={"orch_kind": "status", "orch_key": key},
                                  lookup=f"{quote(run['id'])} in parents and name = 'status.json' and trashed = false")
        ticket = {
            "key": key, "job_id": launch.job_id, "job_name": launch.job_name, "attempt": launch.attempt,
            "runner_args": launch.runner_args(), "max_runtime_s": launch.max_runtime_s, "grace_s": launch.grace_s,
            "session_seconds": launch.session_seconds, "env": dict(launch.env), "run_folder": run["id"],
            "status_file": status["id"], "needs_gpu": _needs_gpu(launch), "created_at": time.time(), **inputs,
        }
        tprops = {"orch_kind": "ticket", "orch_root": self.root, "orch_controller": self.controller, "orch_key": key,
                  "orch_agent": agent.id}
        posted = self.t.put_bytes(json.dumps(ticket, indent=1).encode(), name=f"ticket-{key}.json",
                                  parent=agent.inbox, properties=tprops,
                                  lookup=self._tagged("ticket", orch_controller=self.controller, orch_key=key))
        return self.t.update(run["id"], {"properties": {"orch_status": status["id"], "orch_ticket": posted["id"]}})

    def read_status(self, handle: Handle) -> dict[str, Any] | None:
        """The run's ``status.json``, read by id (None while it is caught mid-write).

        Raises:
            LostError: the file (and so the run folder) is gone.
        """
        status_id = handle.data.get("status")
        if not status_id:  # a run posted before status.json was made by the controller
            return self.status(self.run_files(handle.data["run"]))
        try:
            doc = json.loads(self.t.read_bytes(status_id))
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def ticket_waiting(self, handle: Handle) -> bool:
        """Whether the run's ticket is still in its inbox (read by id when known)."""
        ticket_id = handle.data.get("ticket")
        if not ticket_id:
            return bool(self.tickets(orch_key=handle.key))
        try:
            self.t.get(ticket_id, "id")
        except LostError:
            return False
        return True

    def cancel(self, handle: Handle) -> None:
        """Ask the agent to stop: drop an untaken ticket, flag the run folder (the agent
        reads the folder by id at every heartbeat, so a lagging listing cannot hide it)."""
        self._drop_tickets(handle)
        run = handle.data.get("run")
        if run:
            try:
                self.t.update(run, {"properties": {"orch_cancel": "1"}})
            except LostError:
                pass  # the run folder is gone already

    def release(self, handle: Handle) -> None:
        """Delete the run folder and any ticket left for it; blobs stay for later jobs."""
        self._drop_tickets(handle)
        run = handle.data.get("run")
        if run:
            self.t.delete(run)

    def _drop_tickets(self, handle: Handle) -> None:
        known = handle.data.get("ticket")
        if known:
            self.t.delete(known)
        for ticket in self.tickets(orch_key=handle.key):
            if ticket["id"] != known:
                self.t.delete(ticket["id"])
