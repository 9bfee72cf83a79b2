#!/usr/bin/env python3
"""orch Colab agent: runs orch jobs that arrive in a Google Drive mailbox.

It runs inside a Colab notebook (``orch colab agent-notebook NAME`` writes one) or
anywhere else with Python >= 3.9 and google-api-python-client. It imports nothing
from ``orchestrator``: inside Colab this file and ``runner.py`` are all there is.

Mailbox layout under the orch folder (``--folder-id``), shared with the controller
(``orchestrator/platforms/colab_drive/platform.py``)::

    blobs/                       code archives, manifests, datasets, by content hash
    agents/<agent>/heartbeat.json  this agent: GPU, session start, time left, current job
    agents/<agent>/inbox/        tickets the controller assigned to this agent only
    runs/<key>/                  one attempt: status.json (made by the controller, its id
                                 in the ticket; the agent overwrites it), job.log.NNNNNN
                                 increments while it runs, then job.log, result.json,
                                 outputs.tar.gz, checkpoint.tar.gz; the folder's property
                                 orch_cancel asks the agent to stop the job

Drive has no atomic claim, so nothing is ever claimed: the controller writes each
ticket into exactly one agent's inbox, and only that agent reads it.

The loop: heartbeat; take the oldest ticket; refuse it if it no longer fits the time
left in the session; otherwise download the bundle (datasets once per session, kept
in the cache), run ``runner.py`` as a subprocess (secrets never arrive here: the
Drive platform refuses jobs that have any), keep heartbeating and uploading the log
while it runs, upload the artefacts and write ``status.json`` last. Once the session
has less than ``--min-job-seconds`` left the agent stops taking work and exits.

Under faults: one runner at a time, always (a Drive outage only delays the report; the
next ticket waits). An interrupt or SIGTERM drains the job (see :func:`main`). Drive's
listings lag, so everything shared is read by id. A restarted agent on the same VM
keeps its name (``agent.json`` in the work dir) and adopts or stops the runners it
finds there (:meth:`Agent.recover`). Without a GPU the agent does not start unless
``--cpu-ok``.

Credentials: inside Colab ``google.colab.auth``; elsewhere ``--token-file`` (an
authorized-user JSON such as the one ``orch auth drive`` saves). Tests point the agent
at a fake Drive with ``ORCH_DRIVE_ENDPOINT`` and ``ORCH_DRIVE_FAKE_TOKEN``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import google.auth.exceptions
import google_auth_httplib2
import httplib2
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import HttpRequest, MediaFileUpload, MediaInMemoryUpload, build_http

VERSION = 1
SCOPES = ["https://www.googleapis.com/auth/drive"]
FOLDER = "application/vnd.google-apps.folder"
FIELDS = "id,name,mimeType,parents,size,sha256Checksum,properties,createdTime,modifiedTime"
QUANTUM = 256 * 1024
MULTIPART_MAX = 5 * 1024 * 1024  # Drive's documented ceiling for uploadType=multipart
LOG_PART_MAX = 4 * 1024 * 1024  # one log increment file at most
ARTEFACTS = ("result.json", "job.log", "outputs.tar.gz", "checkpoint.tar.gz")
RATE_REASONS = ("userRateLimitExceeded", "rateLimitExceeded")


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), "orch-agent:", msg, flush=True)


def quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- Drive client
# The same three fixes as orchestrator/platforms/colab_drive/client.py (kept separate: this
# file must run alone in Colab): a 308-safe httplib2, upload URLs kept on an http
# endpoint's scheme, and chunk bodies read into bytes so a re-send repeats them.

class _Replayable:
    def __init__(self, http):
        self._http = http

    def request(self, uri, method="GET", body=None, headers=None, **kw):
        if body is not None and hasattr(body, "read"):
            body = body.read()
        return self._http.request(uri, method, body=body, headers=headers, **kw)

    def __getattr__(self, name):
        return getattr(self._http, name)


def build_service(credentials, endpoint=None, timeout=60.0):
    http = build_http()
    http.timeout = timeout
    builder = HttpRequest
    if endpoint and urlsplit(endpoint).scheme == "http":
        wrong, right = "https://" + urlsplit(endpoint).netloc + "/", "http://" + urlsplit(endpoint).netloc + "/"

        class PlainHttpRequest(HttpRequest):
            def __init__(self, http, postproc, uri, **kwargs):
                if uri.startswith(wrong):
                    uri = right + uri[len(wrong):]
                super().__init__(http, postproc, uri, **kwargs)

        builder = PlainHttpRequest
    return build("drive", "v3", http=_Replayable(google_auth_httplib2.AuthorizedHttp(credentials, http=http)),
                 client_options={"api_endpoint": endpoint} if endpoint else None,
                 static_discovery=True, cache_discovery=False, requestBuilder=builder)


def retryable(exc) -> bool:
    if isinstance(exc, HttpError):
        status = exc.resp.status
        if status in (408, 429) or status >= 500:
            return True
        try:
            reasons = [e.get("reason") for e in json.loads(exc.content.decode())["error"].get("errors", [])]
        except (ValueError, KeyError, AttributeError, TypeError):
            reasons = []
        return status == 403 and any(r in RATE_REASONS for r in reasons)
    if isinstance(exc, google.auth.exceptions.RefreshError):
        return bool(getattr(exc, "retryable", False))
    return isinstance(exc, (OSError, http.client.HTTPException, httplib2.HttpLib2Error,
                            google.auth.exceptions.TransportError))


class Drive:
    """Drive calls with truncated exponential backoff and full jitter (cap 32 s)."""

    def __init__(self, service, chunk_size=8 * 1024 * 1024, attempts=8, base=1.0):
        self.service, self.chunk_size, self.attempts, self.base = service, chunk_size, attempts, base

    def _backoff(self, exc, failures):
        if not retryable(exc) or failures >= self.attempts:
            raise exc
        delay = random.random() * min(32.0, self.base * 2 ** (failures - 1))
        log("Drive: %s; retrying in %.1f s" % (type(exc).__name__, delay))
        time.sleep(delay)

    def call(self, make):
        """One request, retried with backoff (see ``create`` for requests that make a file)."""
        return self.create(make)

    def list(self, q, order_by="createdTime"):
        out, token = [], None
        while True:
            page = self.call(lambda: self.service.files().list(
                q=q, spaces="drive", pageSize=1000, orderBy=order_by, pageToken=token,
                fields="nextPageToken, files(%s)" % FIELDS))
            out.extend(page.get("files", []))
            token = page.get("nextPageToken")
            if not token:
                return out

    def children(self, parent, name=None):
        q = "%s in parents and trashed = false" % quote(parent)
        if name:
            q += " and name = %s" % quote(name)
        return self.list(q)

    def folder(self, name, parent, properties=None):
        """The oldest folder ``name`` under ``parent``; created when none is listed.

        Drive's listings lag behind creates and names are not unique: the id ``create``
        returns is used as it is, and where a lagging listing let a duplicate be made,
        everybody who lists later agrees on the oldest.
        """
        q = "%s in parents and name = %s and mimeType = '%s' and trashed = false" % (quote(parent), quote(name), FOLDER)
        found = self.list(q)
        if found:
            return found[0]
        body = {"name": name, "mimeType": FOLDER, "parents": [parent], "properties": properties or {}}
        return self.create(lambda: self.service.files().create(body=body, fields=FIELDS), q)

    def create(self, make, lookup=None):
        """A create request, retried; a create can succeed and still answer 5xx, so
        before each retry ``lookup`` (a query only that file matches) is listed and a
        file it finds is taken instead of making a second one."""
        failures = 0
        while True:
            try:
                return make().execute(num_retries=0)
            except Exception as exc:  # noqa: BLE001 - _backoff re-raises what it cannot retry
                failures += 1
                self._backoff(exc, failures)
            if lookup:
                found = self.list(lookup)
                if found:
                    return found[0]

    def get(self, file_id, fields="id,trashed,properties"):
        return self.call(lambda: self.service.files().get(fileId=file_id, fields=fields))

    def delete(self, file_id):
        try:
            self.call(lambda: self.service.files().delete(fileId=file_id))
        except HttpError as exc:
            if exc.resp.status != 404:
                raise

    def read(self, file_id):
        return self.call(lambda: self.service.files().get_media(fileId=file_id))

    def write(self, data, name, parent, properties=None, file_id=None, mime="application/json", lookup=None):
        """Create, or overwrite ``file_id``, with a small document (one request)."""
        def make():
            media = MediaInMemoryUpload(data, mimetype=mime, resumable=False)
            if file_id:
                return self.service.files().update(fileId=file_id, body={"properties": properties or {}},
                                                   media_body=media, fields=FIELDS)
            return self.service.files().create(body={"name": name, "parents": [parent], "properties": properties or {}},
                                               media_body=media, fields=FIELDS)
        return self.call(make) if file_id else self.create(make, lookup)

    def upload(self, path, name, parent, properties=None, file_id=None):
        """Upload a file, resumably in chunks when it is large, with our own retries."""
        size = os.path.getsize(path)
        if size < min(self.chunk_size, MULTIPART_MAX):
            with open(path, "rb") as fh:
                return self.write(fh.read(), name, parent, properties, file_id, "application/octet-stream")
        media = MediaFileUpload(path, mimetype="application/octet-stream", chunksize=self.chunk_size, resumable=True)
        if file_id:
            req = self.service.files().update(fileId=file_id, body={"properties": properties or {}},
                                              media_body=media, fields=FIELDS)
        else:
            req = self.service.files().create(body={"name": name, "parents": [parent], "properties": properties or {}},
                                              media_body=media, fields=FIELDS)
        response, failures = None, 0
        while response is None:
            try:
                _, response = req.next_chunk(num_retries=0)  # retries re-send an empty body: ours query the offset
                failures = 0
            except Exception as exc:  # noqa: BLE001
                failures += 1
                self._backoff(exc, failures)
        return response

    def download(self, file_id, dest, size, sha256=None):
        """Range download into ``dest.part``, continuing a partial file; verified."""
        part = dest + ".part"
        req = self.service.files().get_media(fileId=file_id)
        failures = 0
        with open(part, "ab") as out:
            offset = out.tell()
            while offset < size:
                headers = dict(req.headers, range="bytes=%d-%d" % (offset, min(size, offset + self.chunk_size) - 1))
                try:
                    resp, content = req.http.request(req.uri, "GET", headers=headers)
                    if resp.status not in (200, 206) or not content:
                        raise HttpError(resp, content, uri=req.uri)
                except Exception as exc:  # noqa: BLE001
                    failures += 1
                    self._backoff(exc, failures)
                    continue
                if resp.status == 200:
                    out.truncate(0)
                    out.seek(0)
                    offset = 0
                out.write(content)
                offset += len(content)
                failures = 0
        if sha256 and sha256_file(part) != sha256:
            os.remove(part)
            raise ValueError("download of %s: sha256 mismatch" % os.path.basename(dest))
        os.replace(part, dest)
        return dest


# --------------------------------------------------------------------------- the machine

def gpu_info():
    """GPU name, memory and count from nvidia-smi; None without a GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [r.split(",") for r in out.strip().splitlines() if "," in r]
    if not rows:
        return None
    return {"name": rows[0][0].strip(), "memory_mb": int(float(rows[0][1])), "count": len(rows)}


def in_colab() -> bool:
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


def session_start() -> float:
    """When this runtime started (Colab's session clock starts with it): the start of
    PID 1, which in a container is the runtime itself, else the machine's boot."""
    try:
        with open("/proc/uptime") as fh:
            boot = time.time() - float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.time()
    try:
        with open("/proc/1/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return boot


def credentials(args):
    fake = os.environ.get("ORCH_DRIVE_FAKE_TOKEN")
    if fake:  # tests only: a bearer token the fake Drive accepts
        from google.oauth2.credentials import Credentials
        return Credentials(token=fake)
    if args.token_file:
        from google.oauth2.credentials import Credentials
        return Credentials.from_authorized_user_file(args.token_file, SCOPES)
    if in_colab():
        from google.colab import auth
        auth.authenticate_user()
        import google.auth
        creds, _ = google.auth.default(scopes=SCOPES)
        return creds
    raise SystemExit("orch-agent: no credentials: pass --token-file (outside Colab)")


class Orphan:
    """A runner that an earlier agent process on this machine started (a kernel restart
    or an OOM kill took the agent, not the VM): not our child, so watched by its pid."""

    def __init__(self, pid):
        self.pid, self.returncode = pid, None

    @classmethod
    def find(cls, run_dir):
        try:
            with open(os.path.join(run_dir, "agent-run.json")) as fh:
                pid = int(json.load(fh)["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cls(pid) if _runner_alive(pid) else None

    def poll(self):
        if self.returncode is None and not _runner_alive(self.pid):
            self.returncode = -1  # unknown: result.json has the job's exit code
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline is not None and time.time() > deadline:
                raise subprocess.TimeoutExpired("runner", timeout)
            time.sleep(0.1)
        return self.returncode


def _runner_alive(pid):
    """Whether ``pid`` is still a runner (its command line names runner.py, so a reused
    pid is not mistaken for it; a zombie has an empty command line)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return b"runner.py" in fh.read()
    except OSError:
        pass
    if os.path.isdir("/proc"):
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _kill_groups(proc, run_dir, sig):
    """Signal the runner's process group and its job's (the job has a session of its own)."""
    groups = [proc.pid]
    try:
        with open(os.path.join(run_dir, "attempt", "runner.pid.json")) as fh:
            job = json.load(fh).get("job_pgid")
        if job:
            groups.append(int(job))
    except (OSError, ValueError, TypeError):
        pass
    for pgid in groups if sig == signal.SIGKILL else groups[:1]:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class Agent:
    def __init__(self, args, make_drive):
        self.args, self.make_drive = args, make_drive
        self.drive = make_drive()
        self.work = os.path.abspath(args.work_dir)
        self.cache = os.path.join(self.work, "cache")
        os.makedirs(os.path.join(self.cache, "blobs"), exist_ok=True)
        self.saved = self._load_identity()
        self.id = args.agent_id or self.saved.get("id") or "%s-%s" % (socket.gethostname().split(".")[0][:20],
                                                                       os.urandom(3).hex())
        self.root = args.folder_id
        self.started = session_start() if (args.session_from_boot or in_colab()) else time.time()
        self.gpu = gpu_info()
        self.job = None
        self.jobs_done = 0
        self.stopping = False  # asked to stop: drain the job, take no more
        self.abandon = False  # asked twice: stop the runner at once
        self.heartbeat_id = None
        self.last_beat = 0.0
        self.beat_lock = threading.Lock()  # one heartbeat write at a time, each with the latest state
        self.quit = threading.Event()

    # ---- identity kept in the work dir: a restarted agent on the same VM is the same agent
    def _load_identity(self):
        try:
            with open(os.path.join(self.work, "agent.json")) as fh:
                doc = json.load(fh)
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_identity(self):
        write_json(os.path.join(self.work, "agent.json"),
                   {"id": self.id, "root": self.root, "heartbeat": self.heartbeat_id})

    # ---- session clock
    def time_left(self) -> float:
        return self.started + self.args.session_seconds - time.time()

    def state(self) -> str:
        if self.job:
            return "busy"  # also while draining a job on the way out
        if self.stopping:
            return "stopped"
        return "draining" if self.time_left() < self.args.min_job_seconds else "idle"

    # ---- mailbox
    def setup(self):
        agents = self.drive.folder("agents", self.root, {"orch_kind": "agents"})
        props = {"orch_kind": "agent", "orch_agent": self.id, "orch_root": self.root}
        self.folder = self.drive.folder(self.id, agents["id"], props)["id"]
        self.inbox = self.drive.folder("inbox", self.folder, dict(props, orch_kind="inbox"))["id"]
        if self.saved.get("id") == self.id and self.saved.get("root") == self.root and self.saved.get("heartbeat"):
            self.heartbeat_id = self.saved["heartbeat"]  # by id: a listing may not show it yet
        else:
            known = self.drive.children(self.folder, "heartbeat.json")
            self.heartbeat_id = known[0]["id"] if known else None
        try:
            self.beat(force=True)
        except HttpError as exc:
            if exc.resp.status != 404:
                raise
            self.heartbeat_id = None  # deleted meanwhile: write a new one
            self.beat(force=True)
        self._save_identity()
        log("agent %s ready: inbox %s, %s, %.0f s left in the session"
            % (self.id, self.inbox, (self.gpu or {}).get("name", "no GPU"), self.time_left()))

    def beat(self, force=False, drive=None):
        with self.beat_lock:
            if force or time.time() - self.last_beat >= self.args.heartbeat:
                self._write_heartbeat(drive or self.drive)

    def beat_forever(self):
        """Heartbeat thread: keeps beating while the main thread downloads, runs or uploads.

        It has its own Drive client, since an httplib2 connection is not thread-safe.
        """
        drive = self.make_drive()
        while not self.quit.wait(self.args.heartbeat / 2):
            try:
                self.beat(drive=drive)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried next time
                log("heartbeat failed (%s: %s)" % (type(exc).__name__, exc))

    def _write_heartbeat(self, drive):
        left = max(0.0, self.time_left())
        doc = {"agent": self.id, "version": VERSION, "host": socket.gethostname(), "colab": in_colab(),
               "session_start": self.started, "session_seconds": self.args.session_seconds,
               "time_left_s": left, "updated_at": time.time(), "state": self.state(), "job": self.job,
               "gpu": self.gpu, "jobs_done": self.jobs_done, "inbox": self.inbox}
        # The controller reads the properties only (one list call for all agents).
        props = {"orch_kind": "heartbeat", "orch_agent": self.id, "orch_root": self.root, "orch_inbox": self.inbox,
                 "orch_state": doc["state"], "orch_time_left": "%d" % left, "orch_job": self.job or "",
                 "orch_gpu": (self.gpu or {}).get("name", "")[:60], "orch_gpu_mb": str((self.gpu or {}).get("memory_mb", 0)),
                 "orch_gpu_count": str((self.gpu or {}).get("count", 0))}
        data = json.dumps(doc, indent=1).encode()
        if self.heartbeat_id is None:
            lookup = "%s in parents and name = 'heartbeat.json' and trashed = false" % quote(self.folder)
            self.heartbeat_id = drive.write(data, "heartbeat.json", self.folder, props, lookup=lookup)["id"]
        else:
            drive.write(data, "heartbeat.json", self.folder, props, file_id=self.heartbeat_id)
        self.last_beat = time.time()

    def tickets(self):
        return [f for f in self.drive.children(self.inbox) if f["name"].startswith("ticket-")]

    def loop(self):
        self.setup()
        beater = threading.Thread(target=self.beat_forever, name="heartbeat", daemon=True)
        beater.start()
        try:
            self.recover()
            self.work_loop()
            if self.stopping:
                self.refuse_all("the agent is stopping")
        finally:
            self.quit.set()
            beater.join(timeout=self.args.timeout)
        self.stopping = True
        self.beat(force=True)
        log("stopped after %d job(s)" % self.jobs_done)

    def work_loop(self):
        while not self.stopping:
            try:
                if not self.step():
                    break
            except google.auth.exceptions.RefreshError as exc:
                if not retryable(exc):
                    raise
                log("Google sign-in unreachable (%s); carrying on" % exc)
                time.sleep(self.args.poll)
            except Exception as exc:  # noqa: BLE001 - Drive trouble between jobs: wait and look again
                log("Drive trouble (%s: %s); carrying on" % (type(exc).__name__, exc))
                time.sleep(self.args.poll)

    def step(self) -> bool:
        """One turn of the loop; False when the agent should stop."""
        if self.state() == "draining":
            log("%.0f s left in the session: not taking more work" % self.time_left())
            self.refuse_all("the agent's session is ending")
            return False
        tickets = self.tickets()
        if not tickets:
            time.sleep(self.args.poll)
            return True
        self.take(tickets[0])
        return not (self.args.max_jobs and self.jobs_done >= self.args.max_jobs)

    def refuse_all(self, reason):
        try:
            for t in self.tickets():
                self.refuse(t, json.loads(self.drive.read(t["id"])), reason)
        except Exception as exc:  # noqa: BLE001 - the controller finds out from the heartbeat
            log("could not hand back the tickets (%s: %s)" % (type(exc).__name__, exc))

    def run_state(self, ticket):
        """"gone" (the controller deleted the run folder: it gave up on the run),
        "cancelled" (``orch cancel``) or "open"; read by id, which no listing lag hides."""
        try:
            folder = self.drive.get(ticket["run_folder"])
        except HttpError as exc:
            if exc.resp.status == 404:
                return "gone"
            raise
        if folder.get("trashed"):
            return "gone"
        return "cancelled" if (folder.get("properties") or {}).get("orch_cancel") else "open"

    def status_of(self, ticket):
        """The run's status.json as it stands (None when the controller made none)."""
        if not ticket.get("status_file"):
            return None
        try:
            doc = json.loads(self.drive.read(ticket["status_file"]))
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def write_status(self, ticket, doc):
        doc = dict(doc, key=ticket["key"], agent=self.id, updated_at=time.time())
        props = {"orch_kind": "status", "orch_key": ticket["key"], "orch_state": doc["state"],
                 "orch_exit": "" if doc.get("exit_code") is None else str(doc["exit_code"])}
        f = self.drive.write(json.dumps(doc, indent=1).encode(), "status.json", ticket["run_folder"], props,
                             file_id=ticket.get("status_file"))
        ticket["status_file"] = f["id"]
        return f["id"]

    def refuse(self, ticket_file, ticket, reason):
        log("refusing %s: %s" % (ticket.get("key"), reason))
        try:
            self.write_status(ticket, {"state": "rejected", "message": reason})
        except HttpError as exc:
            if exc.resp.status != 404:  # the run folder is gone: nothing to tell
                raise
        self.drive.delete(ticket_file["id"])

    def take(self, ticket_file):
        ticket = json.loads(self.drive.read(ticket_file["id"]))
        key = ticket["key"]
        state = self.run_state(ticket)
        status = self.status_of(ticket) or {}
        mine = status.get("agent") == self.id and not os.path.exists(os.path.join(self.work, "runs", key, "reported"))
        if state != "open" or (status.get("state", "new") != "new" and not mine):
            log("dropping ticket %s: the run was %s" % (key, "cancelled or abandoned" if state != "open" else "taken"))
            self.drive.delete(ticket_file["id"])
            return
        need = float(ticket["max_runtime_s"]) + float(ticket.get("grace_s", 0)) + self.args.margin
        if need > self.time_left():
            self.refuse(ticket_file, ticket, "needs %.0f s but the session has %.0f s left" % (need, self.time_left()))
            return
        if ticket.get("needs_gpu") and not self.gpu:
            self.refuse(ticket_file, ticket, "the job needs a GPU and this runtime has none")
            return
        # Heartbeat first, then status, then drop the ticket: the controller always sees
        # this job either in the inbox or as the agent's current job.
        self.job = key
        try:
            self.beat(force=True)
            self.write_status(ticket, {"state": "running", "started_at": time.time(), "message": "preparing"})
            self.drive.delete(ticket_file["id"])
            log("running %s (%s, attempt %s)" % (key, ticket.get("job_name"), ticket.get("attempt")))
            run_dir = os.path.join(self.work, "runs", key)
            shutil.rmtree(run_dir, ignore_errors=True)
            os.makedirs(os.path.join(run_dir, "attempt"))
            write_json(os.path.join(run_dir, "ticket.json"), ticket)
            returncode, error = None, None
            try:
                returncode = self.execute(ticket, run_dir)
            except Exception as exc:  # noqa: BLE001 - the controller must hear about any failure
                log("job %s failed in the agent: %s: %s" % (key, type(exc).__name__, exc))
                error = "agent error: %s: %s" % (type(exc).__name__, exc)
            self.report(ticket, run_dir, returncode, error)
            self.jobs_done += 1
        finally:
            self.job = None
        self.beat(force=True)

    def recover(self):
        """Finish what an earlier agent process on this VM left: a runner still going is
        adopted (watched, then reported) unless its run was given up or cancelled, then it
        is stopped; a runner that ended meanwhile has its results uploaded now."""
        runs = os.path.join(self.work, "runs")
        for key in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
            run_dir = os.path.join(runs, key)
            if os.path.exists(os.path.join(run_dir, "reported")):
                continue
            try:
                with open(os.path.join(run_dir, "ticket.json")) as fh:
                    ticket = json.load(fh)
            except (OSError, ValueError):
                continue
            proc = Orphan.find(run_dir)
            try:
                state = self.run_state(ticket)
            except Exception as exc:  # noqa: BLE001 - cannot tell: keep the job, as if open
                log("cannot read run %s (%s); adopting it" % (key, type(exc).__name__))
                state = "open"
            self.job = key
            try:
                if proc is not None and state != "open":
                    log("stopping leftover runner of %s: the run was %s" % (key, state))
                    self.stop_runner(proc, run_dir, ticket)
                elif proc is not None:
                    log("adopting the runner of %s (pid %d) left by an earlier agent" % (key, proc.pid))
                    self.supervise(ticket, proc, run_dir)
                    if proc.poll() is None:
                        self.stop_runner(proc, run_dir, ticket)
                else:
                    log("uploading the results of %s left by an earlier agent" % key)
                self.report(ticket, run_dir, proc.returncode if proc else None, None)
            finally:
                self.job = None
        self.beat(force=True)

    # ---- one job
    def fetch_inputs(self, ticket):
        bundle_dir = os.path.join(self.work, "bundles", ticket["bundle"]["digest"])
        os.makedirs(bundle_dir, exist_ok=True)
        for f in ticket["bundle"]["files"]:
            dest = os.path.join(bundle_dir, f["name"])
            if not (os.path.isfile(dest) and sha256_file(dest) == f["sha256"]):
                self.drive.download(f["id"], dest, int(f["size"]), f["sha256"])
        for ds in ticket.get("datasets", []):
            archive = os.path.join(self.cache, "blobs", "data-%s.tar" % ds["digest"])
            extracted = os.path.join(self.cache, "data", ds["digest"] + ".verified")
            if os.path.isfile(archive) or os.path.isfile(extracted):
                log("dataset %s: in the cache" % ds["digest"][:12])
                continue
            self.drive.download(ds["id"], archive, int(ds["size"]), ds["sha256"])
        checkpoint = None
        if ticket.get("checkpoint"):
            c = ticket["checkpoint"]
            checkpoint = os.path.join(self.cache, "blobs", "ckpt-%s.tar.gz" % c["sha256"])
            if not os.path.isfile(checkpoint):
                self.drive.download(c["id"], checkpoint, int(c["size"]), c["sha256"])
        return bundle_dir, checkpoint

    def runner_command(self, ticket, attempt_dir, bundle_dir, checkpoint):
        args = list(ticket["runner_args"])
        if "--session-seconds" in args:  # the agent knows its session better
            i = args.index("--session-seconds")
            del args[i:i + 2]
        args += ["--session-seconds", "%d" % max(1, self.time_left() - self.args.margin / 2)]
        cmd = [sys.executable, self.args.runner, "--attempt-dir", attempt_dir, "--bundle", bundle_dir,
               "--cache-dir", self.cache, "--env-stdin"] + args
        if checkpoint:
            cmd += ["--checkpoint", checkpoint]
        return cmd

    def execute(self, ticket, run_dir):
        """Run the job; returns the runner's exit status. The runner never outlives this
        call: whatever ends it (an error, an interrupt), a runner still going is stopped."""
        attempt_dir = os.path.join(run_dir, "attempt")
        bundle_dir, checkpoint = self.fetch_inputs(ticket)
        if self.stopping:
            raise RuntimeError("the agent was stopped before the job started")
        cmd = self.runner_command(ticket, attempt_dir, bundle_dir, checkpoint)
        with open(os.path.join(run_dir, "runner.out"), "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=run_dir)
        write_json(os.path.join(run_dir, "agent-run.json"), {"pid": proc.pid, "agent": self.id, "started": time.time()})
        try:
            proc.stdin.write(json.dumps({"env": ticket.get("env") or {}, "secrets": {}}).encode())
            proc.stdin.close()
            self.supervise(ticket, proc, run_dir)
        finally:
            if proc.poll() is None:
                self.stop_runner(proc, run_dir, ticket)
        return proc.returncode

    def stop_runner(self, proc, run_dir, ticket):
        """SIGTERM (the runner saves the checkpoint and packs what it has), then SIGKILL
        to both process groups once the grace is over."""
        _kill_groups(proc, run_dir, signal.SIGTERM)
        try:
            proc.wait(timeout=float(ticket.get("grace_s") or 30) + 30)
        except subprocess.TimeoutExpired:
            log("the runner of %s ignored SIGTERM: killing it" % ticket["key"])
            _kill_groups(proc, run_dir, signal.SIGKILL)
            proc.wait(timeout=30)

    def supervise(self, ticket, proc, run_dir):
        """Watch the runner until it exits: heartbeat-rate checks of the run folder, status
        and log increments. Design choice: no Drive failure ends this loop (an outage
        leaves the job running, and the agent keeps trying); only the runner's end does.
        The runner is stopped when the agent is asked to stop, when the controller cancels
        the run, or when the run folder is gone (404)."""
        attempt_dir = os.path.join(run_dir, "attempt")
        last_check, stopped_at, log_at = 0.0, None, (0, 0, 0.0)  # log: (offset, part, time)
        while proc.poll() is None:
            time.sleep(min(self.args.poll, self.args.heartbeat))
            if self.abandon:
                log("stopping the runner of %s at once" % ticket["key"])
                _kill_groups(proc, run_dir, signal.SIGKILL)
                proc.wait(timeout=30)
                return
            if self.stopping and stopped_at is None:
                log("agent stopping: %s gets SIGTERM, saves its checkpoint, and what it has is uploaded" % ticket["key"])
                _kill_groups(proc, run_dir, signal.SIGTERM)
                stopped_at = time.time()
            if stopped_at is not None and time.time() - stopped_at > float(ticket.get("grace_s") or 30) + 30:
                _kill_groups(proc, run_dir, signal.SIGKILL)
            if time.time() - last_check < self.args.heartbeat:
                continue
            last_check = time.time()
            try:
                state = self.run_state(ticket)
                if state != "open" and stopped_at is None:
                    log("%s was %s by the controller: stopping the runner" % (ticket["key"], state))
                    _kill_groups(proc, run_dir, signal.SIGTERM)
                    stopped_at = time.time()
                if state == "gone":
                    continue  # nobody will read the status of a deleted run
                self.write_status(ticket, {"state": "running", "message": "running",
                                           "telemetry": read_json(os.path.join(attempt_dir, "heartbeat.json"))})
                if time.time() - log_at[2] >= self.args.log_interval:
                    log_at = self.upload_log_increments(ticket, attempt_dir, log_at[0], log_at[1]) + (time.time(),)
            except Exception as exc:  # noqa: BLE001 - see the docstring
                log("Drive trouble while %s runs (%s: %s); the job goes on" % (ticket["key"], type(exc).__name__, exc))

    def upload_log_increments(self, ticket, attempt_dir, offset, part):
        """Upload what the log gained since ``offset`` as new files ``job.log.NNNNNN``
        (each at most LOG_PART_MAX bytes), so the bytes sent grow with the log, not with
        the log times the number of uploads; returns the new (offset, part)."""
        path = os.path.join(attempt_dir, "job.log")
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        if size <= offset:
            return offset, part
        with open(path, "rb") as fh:
            fh.seek(offset)
            while offset < size:
                data = fh.read(min(size - offset, LOG_PART_MAX))
                if not data:
                    break
                name = "job.log.%06d" % part
                lookup = "%s in parents and name = %s and trashed = false" % (quote(ticket["run_folder"]), quote(name))
                self.drive.write(data, name, ticket["run_folder"], {"orch_kind": "logpart", "orch_offset": str(offset)},
                                 mime="text/plain", lookup=lookup)
                offset, part = offset + len(data), part + 1
        return offset, part

    def report(self, ticket, run_dir, returncode, error):
        """Upload the artefacts and write the final status, retrying until Drive takes
        them (an outage only delays the report), the run folder is gone, or the agent is
        told to stop at once. No other job starts meanwhile."""
        failures, uploaded = 0, {}
        while True:
            try:
                if self.run_state(ticket) == "gone":
                    log("the run folder of %s is gone: not reporting" % ticket["key"])
                    break
                if error:
                    doc = {"state": "exited", "exit_code": None, "artefacts": {}, "message": error}
                else:
                    doc = self.upload_results(ticket, os.path.join(run_dir, "attempt"), returncode, uploaded)
                self.write_status(ticket, doc)
                break
            except Exception as exc:  # noqa: BLE001 - see the docstring
                if self.abandon:
                    break
                failures += 1
                delay = min(60.0, self.args.poll * 2 ** min(failures, 8))
                log("could not report %s (%s: %s); retrying in %.0f s" % (ticket["key"], type(exc).__name__, exc, delay))
                time.sleep(delay)
        write_json(os.path.join(run_dir, "reported"), {"at": time.time()})

    def upload_results(self, ticket, attempt_dir, returncode, uploaded):
        """The final status document, after uploading each artefact once (``uploaded``
        remembers them across retries of :meth:`report`)."""
        for name in ARTEFACTS:
            path = os.path.join(attempt_dir, name)
            if name in uploaded or not os.path.isfile(path):
                continue
            sha = sha256_file(path)
            props = {"orch_kind": "artefact", "orch_sha256": sha}
            f = self.drive.upload(path, name, ticket["run_folder"], props)
            uploaded[name] = {"id": f["id"], "size": os.path.getsize(path), "sha256": sha}
        result = read_json(os.path.join(attempt_dir, "result.json"))
        exit_code = result.get("exit_code", returncode)
        message = "finished" if "result.json" in uploaded else "the runner left no result.json (exit %s)" % returncode
        return {"state": "exited", "exit_code": exit_code, "runner_exit": returncode, "message": message,
                "artefacts": dict(uploaded), "finished_at": time.time()}


def read_json(path):
    """A small JSON object from a local file; {} when it is missing or half-written."""
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def write_json(path, doc):
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "w") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)


def parse_args(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description="Run orch jobs from a Google Drive mailbox.")
    p.add_argument("--folder-id", required=True, help="id of the orch folder in Drive")
    p.add_argument("--agent-id", help="name of this agent (default: host name + random suffix)")
    p.add_argument("--work-dir", default=os.environ.get("ORCH_AGENT_WORK", "/content/orch-agent"
                                                        if os.path.isdir("/content") else "orch-agent"))
    p.add_argument("--runner", default=os.path.join(here, "runner.py"), help="path of orch's runner.py")
    p.add_argument("--token-file", help="authorized-user OAuth token JSON (outside Colab)")
    p.add_argument("--endpoint", default=os.environ.get("ORCH_DRIVE_ENDPOINT"), help=argparse.SUPPRESS)
    p.add_argument("--session-seconds", type=float, default=12 * 3600, help="session length (Colab: 12-24 h)")
    p.add_argument("--session-from-boot", action="store_true", help="count the session from VM boot (Colab default)")
    p.add_argument("--min-job-seconds", type=float, default=300, help="stop taking work below this time left")
    p.add_argument("--margin", type=float, default=60, help="setup and upload time reserved per job")
    p.add_argument("--poll", type=float, default=10, help="seconds between inbox checks")
    p.add_argument("--heartbeat", type=float, default=30, help="seconds between heartbeats")
    p.add_argument("--log-interval", type=float, default=30, help="seconds between log uploads")
    p.add_argument("--chunk-mb", type=int, default=8, help="upload chunk size (multiple of 0.25)")
    p.add_argument("--max-jobs", type=int, default=0, help="exit after this many jobs (0 = no limit)")
    p.add_argument("--timeout", type=float, default=60, help="socket timeout for Drive calls")
    p.add_argument("--cpu-ok", action="store_true", help="run without a GPU (only jobs that need none are given)")
    p.add_argument("--retries", type=int, default=8, help=argparse.SUPPRESS)  # tries per Drive call
    p.add_argument("--backoff-base", type=float, default=1.0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Run the agent until its session ends or it is stopped.

    Stopping it the documented way (interrupt the cell: SIGINT; or SIGTERM) drains: the
    running job gets SIGTERM, saves its checkpoint, its results are uploaded and the
    controller retries it (only ``orch cancel`` cancels a job). A second interrupt
    stops the runner at once. Either way the runner never outlives the agent.
    """
    args = parse_args(argv)
    if gpu_info() is None and not args.cpu_ok:
        log("no GPU on this runtime: choose a GPU runtime (Runtime > Change runtime type) and run all again")
        return 3
    creds = credentials(args)
    agent = Agent(args, lambda: Drive(build_service(creds, args.endpoint, args.timeout),
                                      chunk_size=args.chunk_mb * 1024 * 1024, attempts=args.retries,
                                      base=args.backoff_base))

    def stop(signum, frame):
        if agent.stopping:
            agent.abandon = True
            log("interrupted again: stopping the runner now")
        else:
            agent.stopping = True
            log("stopping: the running job (if any) saves its checkpoint and its results are uploaded; "
                "interrupt again to stop at once")

    # In the notebook this runs in the kernel's main thread: the handler replaces the
    # kernel's KeyboardInterrupt for the agent's lifetime, so an interrupt can never land
    # inside a Drive call and leave a runner behind.
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        agent.loop()
    except google.auth.exceptions.RefreshError as exc:
        log("the Google token was refused (%s): re-run the notebook's sign-in cell" % exc)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
