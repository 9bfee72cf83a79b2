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
    runs/<key>/                  one attempt: status.json + job.log, result.json,
                                 outputs.tar.gz, checkpoint.tar.gz; cancel.json from
                                 the controller asks the agent to stop the job

Drive has no atomic claim, so nothing is ever claimed: the controller writes each
ticket into exactly one agent's inbox, and only that agent reads it.

The loop: heartbeat; take the oldest ticket; refuse it if it no longer fits the time
left in the session; otherwise download the bundle (datasets once per session, kept
in the cache), run ``runner.py`` as a subprocess (secrets never arrive here: the
Drive platform refuses jobs that have any), keep heartbeating and uploading the log
while it runs, upload the artefacts and write ``status.json`` last. Once the session
has less than ``--min-job-seconds`` left the agent stops taking work and exits.

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
        failures = 0
        while True:
            try:
                return make().execute(num_retries=0)
            except Exception as exc:  # noqa: BLE001 - _backoff re-raises what it cannot retry
                failures += 1
                self._backoff(exc, failures)

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
        """The oldest folder ``name`` under ``parent`` (created if missing)."""
        q = "%s in parents and name = %s and mimeType = '%s' and trashed = false" % (quote(parent), quote(name), FOLDER)
        found = self.list(q)
        if not found:
            body = {"name": name, "mimeType": FOLDER, "parents": [parent], "properties": properties or {}}
            self.call(lambda: self.service.files().create(body=body, fields=FIELDS))
            found = self.list(q)
        return found[0]

    def delete(self, file_id):
        try:
            self.call(lambda: self.service.files().delete(fileId=file_id))
        except HttpError as exc:
            if exc.resp.status != 404:
                raise

    def read(self, file_id):
        return self.call(lambda: self.service.files().get_media(fileId=file_id))

    def write(self, data, name, parent, properties=None, file_id=None, mime="application/json"):
        """Create, or overwrite ``file_id``, with a small document (one request)."""
        def make():
            media = MediaInMemoryUpload(data, mimetype=mime, resumable=False)
            if file_id:
                return self.service.files().update(fileId=file_id, body={"properties": properties or {}},
                                                   media_body=media, fields=FIELDS)
            return self.service.files().create(body={"name": name, "parents": [parent], "properties": properties or {}},
                                               media_body=media, fields=FIELDS)
        return self.call(make)

    def upload(self, path, name, parent, properties=None, file_id=None):
        """Upload a file, resumably in chunks when it is large, with our own retries."""
        size = os.path.getsize(path)
        if size < self.chunk_size:
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


class Agent:
    def __init__(self, args, make_drive):
        self.args, self.make_drive = args, make_drive
        self.drive = make_drive()
        self.id = args.agent_id or "%s-%s" % (socket.gethostname().split(".")[0][:20], os.urandom(3).hex())
        self.root = args.folder_id
        self.started = session_start() if (args.session_from_boot or in_colab()) else time.time()
        self.gpu = gpu_info()
        self.job = None
        self.jobs_done = 0
        self.stopping = False
        self.work = os.path.abspath(args.work_dir)
        self.cache = os.path.join(self.work, "cache")
        os.makedirs(os.path.join(self.cache, "blobs"), exist_ok=True)
        self.heartbeat_id = None
        self.last_beat = 0.0
        self.beat_lock = threading.Lock()  # one heartbeat write at a time, each with the latest state
        self.quit = threading.Event()

    # ---- session clock
    def time_left(self) -> float:
        return self.started + self.args.session_seconds - time.time()

    def state(self) -> str:
        if self.stopping:
            return "stopped"
        if self.job:
            return "busy"
        return "draining" if self.time_left() < self.args.min_job_seconds else "idle"

    # ---- mailbox
    def setup(self):
        agents = self.drive.folder("agents", self.root, {"orch_kind": "agents"})
        props = {"orch_kind": "agent", "orch_agent": self.id, "orch_root": self.root}
        self.folder = self.drive.folder(self.id, agents["id"], props)["id"]
        self.inbox = self.drive.folder("inbox", self.folder, dict(props, orch_kind="inbox"))["id"]
        self.beat(force=True)
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
            self.heartbeat_id = drive.write(data, "heartbeat.json", self.folder, props)["id"]
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
            self.work_loop()
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
            except HttpError as exc:
                if retryable(exc) or exc.resp.status == 404:
                    log("Drive trouble (%s); carrying on" % exc)
                    time.sleep(self.args.poll)
                    continue
                raise
            except (OSError, http.client.HTTPException, httplib2.HttpLib2Error,
                    google.auth.exceptions.TransportError) as exc:
                log("Drive unreachable (%s: %s); carrying on" % (type(exc).__name__, exc))
                time.sleep(self.args.poll)

    def step(self) -> bool:
        """One turn of the loop; False when the agent should stop."""
        if self.state() == "draining":
            log("%.0f s left in the session: not taking more work" % self.time_left())
            for t in self.tickets():
                self.refuse(t, json.loads(self.drive.read(t["id"])), "the agent's session is ending")
            return False
        tickets = self.tickets()
        if not tickets:
            time.sleep(self.args.poll)
            return True
        self.take(tickets[0])
        return not (self.args.max_jobs and self.jobs_done >= self.args.max_jobs)

    def run_files(self, ticket):
        """The run folder's files by name, or None when the controller deleted the folder
        (it gave up on the run): listing a deleted folder is not an error, so ask for it."""
        files = {f["name"]: f for f in self.drive.children(ticket["run_folder"])}
        if not files:
            try:
                self.drive.call(lambda: self.drive.service.files().get(fileId=ticket["run_folder"], fields="id,trashed"))
            except HttpError as exc:
                if exc.resp.status == 404:
                    return None
                raise
        return files

    def write_status(self, ticket, doc, status_id=None):
        doc = dict(doc, key=ticket["key"], agent=self.id, updated_at=time.time())
        props = {"orch_kind": "status", "orch_key": ticket["key"], "orch_state": doc["state"],
                 "orch_exit": "" if doc.get("exit_code") is None else str(doc["exit_code"])}
        f = self.drive.write(json.dumps(doc, indent=1).encode(), "status.json", ticket["run_folder"], props,
                             file_id=status_id)
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
        existing = self.run_files(ticket)
        if existing is None or "cancel.json" in existing or "status.json" in existing:
            log("dropping ticket %s: the run was cancelled or already taken" % key)
            self.drive.delete(ticket_file["id"])
            return
        need = float(ticket["max_runtime_s"]) + float(ticket.get("grace_s", 0)) + self.args.margin
        if need > self.time_left():
            self.refuse(ticket_file, ticket, "needs %.0f s but the session has %.0f s left" % (need, self.time_left()))
            return
        # Heartbeat first, then status, then drop the ticket: the controller always sees
        # this job either in the inbox or as the agent's current job.
        self.job = key
        try:
            self.beat(force=True)
            status_id = self.write_status(ticket, {"state": "running", "started_at": time.time(),
                                                   "message": "preparing"})
            self.drive.delete(ticket_file["id"])
            log("running %s (%s, attempt %s)" % (key, ticket.get("job_name"), ticket.get("attempt")))
            try:
                doc = self.execute(ticket, status_id)
            except Exception as exc:  # noqa: BLE001 - the controller must hear about any failure
                log("job %s failed in the agent: %s: %s" % (key, type(exc).__name__, exc))
                doc = {"state": "exited", "exit_code": None, "artefacts": {},
                       "message": "agent error: %s: %s" % (type(exc).__name__, exc)}
            self.write_status(ticket, doc, status_id)
            self.jobs_done += 1
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

    def execute(self, ticket, status_id):
        key = ticket["key"]
        run_dir = os.path.join(self.work, "runs", key)
        shutil.rmtree(run_dir, ignore_errors=True)
        attempt_dir = os.path.join(run_dir, "attempt")
        os.makedirs(attempt_dir)
        bundle_dir, checkpoint = self.fetch_inputs(ticket)
        cmd = self.runner_command(ticket, attempt_dir, bundle_dir, checkpoint)
        with open(os.path.join(run_dir, "runner.out"), "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=run_dir)
            proc.stdin.write(json.dumps({"env": ticket.get("env") or {}, "secrets": {}}).encode())
            proc.stdin.close()
            self.supervise(ticket, proc, attempt_dir, status_id)
        return self.upload_results(ticket, attempt_dir, proc.returncode)

    def supervise(self, ticket, proc, attempt_dir, status_id):
        log_id, log_size, last_log, last_check, stopped = None, -1, 0.0, 0.0, False
        while proc.poll() is None:
            try:
                time.sleep(min(self.args.poll, self.args.heartbeat))
            except KeyboardInterrupt:
                if self.stopping:
                    raise  # interrupted twice: abandon the job
                log("interrupted: stopping the job and uploading what it has (interrupt again to abandon it)")
                self.stopping = True
            if self.stopping and not stopped:  # SIGTERM: let the runner checkpoint and stop
                os.killpg(proc.pid, signal.SIGTERM)
                stopped = True
            if time.time() - last_check < self.args.heartbeat:
                continue
            last_check = time.time()
            try:
                files = self.run_files(ticket)
            except (HttpError, OSError, http.client.HTTPException, httplib2.HttpLib2Error) as exc:
                log("Drive unreachable while running (%s); the job goes on" % type(exc).__name__)
                continue
            if (files is None or "cancel.json" in files) and not stopped:
                log("%s was cancelled or abandoned by the controller: stopping the runner" % ticket["key"])
                os.killpg(proc.pid, signal.SIGTERM)
                stopped = True
            telemetry = {}
            try:
                with open(os.path.join(attempt_dir, "heartbeat.json")) as fh:
                    telemetry = json.load(fh)
            except (OSError, ValueError):
                pass
            if files is None:
                continue  # nobody will read the status of a deleted run
            self.write_status(ticket, {"state": "running", "message": "running", "telemetry": telemetry}, status_id)
            path = os.path.join(attempt_dir, "job.log")
            if os.path.isfile(path) and os.path.getsize(path) != log_size and time.time() - last_log >= self.args.log_interval:
                log_size, last_log = os.path.getsize(path), time.time()
                log_id = self.drive.upload(path, "job.log", ticket["run_folder"], {"orch_kind": "log"}, log_id)["id"]

    def upload_results(self, ticket, attempt_dir, returncode):
        artefacts = {}
        existing = self.run_files(ticket)
        if existing is None:
            return {"state": "exited", "exit_code": returncode, "message": "run folder deleted", "artefacts": {}}
        for name in ARTEFACTS:
            path = os.path.join(attempt_dir, name)
            if not os.path.isfile(path):
                continue
            sha = sha256_file(path)
            props = {"orch_kind": "artefact", "orch_sha256": sha}
            file_id = existing[name]["id"] if name in existing else None
            f = self.drive.upload(path, name, ticket["run_folder"], props, file_id)
            artefacts[name] = {"id": f["id"], "size": os.path.getsize(path), "sha256": sha}
        exit_code = returncode
        try:
            with open(os.path.join(attempt_dir, "result.json")) as fh:
                exit_code = json.load(fh).get("exit_code", returncode)
        except (OSError, ValueError):
            pass
        message = "finished" if "result.json" in artefacts else "the runner left no result.json (exit %s)" % returncode
        return {"state": "exited", "exit_code": exit_code, "runner_exit": returncode, "message": message,
                "artefacts": artefacts, "finished_at": time.time()}


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
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    creds = credentials(args)
    agent = Agent(args, lambda: Drive(build_service(creds, args.endpoint, args.timeout),
                                      chunk_size=args.chunk_mb * 1024 * 1024))

    def stop(signum, frame):
        agent.stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        agent.loop()
    except KeyboardInterrupt:
        agent.stopping = True
        agent.beat(force=True)
    except google.auth.exceptions.RefreshError as exc:
        log("the Google token was refused (%s): re-run the notebook's sign-in cell" % exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
