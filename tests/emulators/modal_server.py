"""A stand-in for Modal's API server, for the unmodified ``modal`` client (1.6.x).

Written from the client's own source (``modal_proto/api_grpc.py`` is the server
interface, ``modal/volume.py``, ``modal/sandbox/_impl_v1.py``, ``modal/_image.py``,
``modal/_workspace.py`` show what each call sends and expects). The client is pointed
here with ``MODAL_SERVER_URL=http://127.0.0.1:PORT`` and test ``MODAL_TOKEN_ID`` /
``MODAL_TOKEN_SECRET``; it speaks gRPC (grpclib) to this server and moves volume
blocks over plain HTTP to the small block server next to it, as it does with the real
service's presigned URLs.

What it implements (everything else answers UNIMPLEMENTED and is recorded in
``unimplemented``, so a test sees at once when the client grows a new call):
client hello, app get-or-create, image get-or-create + build stream, ephemeral
secrets, volume get-or-create / put (blocks) / get / list / remove, V1 sandbox
create / get-task-id / wait / terminate / get-from-name / list / tags-get, and the
workspace billing summary.

A sandbox runs its command as a local subprocess (the unmodified runner), with each
volume's mount point mapped onto the volume's directory here. Faults, from the real
service's documented behaviour: ``fail(method, code)`` (UNAVAILABLE, DEADLINE_EXCEEDED,
UNAUTHENTICATED, PERMISSION_DENIED answered instead of the call), ``stall(method)`` (the
call is never answered), ``build_fails`` (the image build ends with a failure), ``drop_create_answer`` (a
sandbox is created but the answer is lost), ``reject_tokens`` (a revoked token),
``billing_refused`` (a workspace whose members may not read billing),
``end_next`` = "timeout" or "preempt" (the next sandbox is killed by its timeout, or
its worker is preempted, before the runner writes a result), ``cut[suffix] = n`` (the
next n block downloads of a volume path ending so drop mid-block), ``corrupt[suffix] =
n`` (they arrive whole with a byte flipped). ``served`` counts the bytes sent per path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from google.protobuf import empty_pb2
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.server import Server
from modal_proto import api_grpc, api_pb2

BLOCK = 8 * 1024 * 1024  # modal/_utils/blob_utils.py BLOCK_SIZE
TOKEN = ("ak-test", "as-test")
_R = api_pb2.GenericResult


@dataclass
class Sandbox:
    id: str
    name: str
    app_id: str
    tags: dict[str, str]
    proc: subprocess.Popen | None = None
    result: Any = None
    created: float = field(default_factory=time.time)
    timeout: float = 300.0
    env: dict[str, str] = field(default_factory=dict)


class ModalStandIn:
    """State of the fake workspace plus the faults a test arms; start() runs it."""

    def __init__(self, root: Path):
        self.root = root
        self.ids = itertools.count(1)
        self.apps: dict[str, str] = {}            # name -> app id
        self.images: dict[str, str] = {}          # definition digest -> image id
        self.builds = 0                           # images really built (not cached)
        self.secrets: dict[str, dict[str, str]] = {}
        self.volumes: dict[str, str] = {}         # name -> volume id
        self.blocks: dict[bytes, bytes] = {}      # sha256 -> content
        self.downloads: dict[str, tuple[str, str, int, int]] = {}
        self.sandboxes: dict[str, Sandbox] = {}
        self.resources: dict[str, Any] = {}       # sandbox id -> the Resources it asked for (gpu, cpu, memory)
        self.created: list[str] = []              # sandbox names, in creation order
        self.calls: list[str] = []
        self.unimplemented: list[str] = []
        self.faults: dict[str, list[Status | str]] = {}
        self.build_fails = False
        self.end_next: str | None = None
        self.drop_create_answer = 0               # creates that land but whose answer is lost
        self.spend = 0.0                          # this cycle's metered cost, dollars
        self.reject_tokens = False                # a revoked token: every call UNAUTHENTICATED
        self.billing_refused = False              # a workspace that may not read billing
        self.cut: dict[str, int] = {}             # path suffix -> block downloads to cut mid-way
        self.corrupt: dict[str, int] = {}         # path suffix -> block downloads sent with a byte flipped
        self.served: dict[str, int] = {}          # volume path -> block bytes sent in full

    def reset(self) -> None:
        """A fresh workspace (between tests): stop every sandbox, forget every object."""
        self.stop_all()
        keep_root = self.root
        self.__init__(keep_root)  # type: ignore[misc]
        shutil.rmtree(keep_root / "volumes", ignore_errors=True)

    # ------------------------------------------------------------------ faults
    def fail(self, method: str, code: Status, times: int = 1) -> None:
        self.faults.setdefault(method, []).extend([code] * times)

    def stall(self, method: str, times: int = 1) -> None:
        self.faults.setdefault(method, []).extend(["stall"] * times)

    async def _gate(self, method: str, stream: Any) -> None:
        self.calls.append(method)
        meta = dict(stream.metadata or {})
        if self.reject_tokens or (meta.get("x-modal-token-id"), meta.get("x-modal-token-secret")) != TOKEN:
            raise GRPCError(Status.UNAUTHENTICATED, "Token ID is malformed or invalid")
        queue = self.faults.get(method)
        if queue:
            fault = queue.pop(0)
            if fault == "stall":
                await asyncio.Event().wait()  # never set: the caller's deadline must end it
            raise GRPCError(fault, f"stand-in fault on {method}")

    # ------------------------------------------------------------------ volumes
    def volume_dir(self, volume_id: str) -> Path:
        d = self.root / "volumes" / volume_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _vpath(self, volume_id: str, path: str) -> Path:
        rel = Path(path.lstrip("/"))
        if ".." in rel.parts:
            raise GRPCError(Status.INVALID_ARGUMENT, f"invalid path {path}")
        return self.volume_dir(volume_id) / rel

    # ------------------------------------------------------------------ sandboxes
    def _start(self, sb: Sandbox, definition: Any, inline_env: dict[str, str]) -> None:
        args = list(definition.entrypoint_args)
        for mount in definition.volume_mounts:
            mp = mount.mount_path.rstrip("/")
            local = str(self.volume_dir(mount.volume_id))
            args = [a.replace(mp, local) for a in args]
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        for sid in definition.secret_ids:
            env.update(self.secrets.get(sid, {}))
        env.update(inline_env)
        env["ORCH_HEARTBEAT_SECONDS"] = "1"
        if args and args[0] in ("python", "python3"):
            args[0] = sys.executable
        end, self.end_next = self.end_next, None
        sb.proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, cwd=str(self.root))
        if end is not None:
            threading.Thread(target=self._kill_later, args=(sb, end), daemon=True).start()

    def _kill_later(self, sb: Sandbox, how: str) -> None:
        time.sleep(0.5)
        self._kill(sb)
        status = _R.GENERIC_STATUS_TIMEOUT if how == "timeout" else _R.GENERIC_STATUS_TERMINATED
        text = "Sandbox timed out" if how == "timeout" else "worker preempted"
        sb.result = _R(status=status, exception=text)

    def _kill(self, sb: Sandbox) -> None:
        """End the sandbox's whole process group, as a container's end ends everything in it."""
        if sb.proc is not None:
            try:
                os.killpg(sb.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            sb.proc.wait()

    def _result(self, sb: Sandbox) -> Any:
        if sb.result is None and sb.proc is not None:
            code = sb.proc.poll()
            if code is not None:
                self._kill(sb)  # what the entrypoint left behind goes with the container
                sb.result = _R(status=_R.GENERIC_STATUS_SUCCESS if code == 0 else _R.GENERIC_STATUS_FAILURE,
                               exitcode=code)
            elif time.time() - sb.created > sb.timeout:
                self._kill(sb)
                sb.result = _R(status=_R.GENERIC_STATUS_TIMEOUT, exception="Sandbox timed out")
        return sb.result

    def running(self) -> list[Sandbox]:
        return [sb for sb in self.sandboxes.values() if self._result(sb) is None]

    def stop_all(self) -> None:
        for sb in self.sandboxes.values():
            self._kill(sb)

    # ------------------------------------------------------------------ run
    def start(self) -> "RunningStandIn":
        return RunningStandIn(self)


class _BlockServer(BaseHTTPRequestHandler):
    """PUT /block/<sha256 hex>, GET /get/<token>: the client's presigned block URLs."""

    standin: ModalStandIn

    def log_message(self, *args: Any) -> None:
        pass

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        digest = hashlib.sha256(data).digest()
        if self.path != f"/block/{digest.hex()}":
            self.send_response(400)
            self.end_headers()
            return
        self.standin.blocks[digest] = data
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def do_GET(self) -> None:
        entry = self.standin.downloads.get(self.path.rsplit("/", 1)[-1])
        if entry is None:
            self.send_response(404)
            self.end_headers()
            return
        vid, path, start, length = entry
        with open(self.standin._vpath(vid, path), "rb") as f:
            f.seek(start)
            data = f.read(length)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self._fault(self.standin.cut, path):
            # The link drops mid-block: half the bytes, then the connection closes.
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if data and self._fault(self.standin.corrupt, path):
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self.wfile.write(data)
        self.standin.served[path] = self.standin.served.get(path, 0) + len(data)

    @staticmethod
    def _fault(armed: dict[str, int], path: str) -> bool:
        for suffix, left in armed.items():
            if left > 0 and path.endswith(suffix):
                armed[suffix] = left - 1
                return True
        return False


def _handlers(s: ModalStandIn, blob_url: str) -> Any:
    """The servicer: ModalClientBase with every abstract call answered."""

    def nid(prefix: str) -> str:
        """Modal's id shape: a prefix and 22 letters or digits (sandbox/_common.py checks it)."""
        return f"{prefix}-{next(s.ids):022d}"

    async def ClientHello(stream):
        await stream.recv_message()
        await s._gate("ClientHello", stream)
        await stream.send_message(api_pb2.ClientHelloResponse())

    async def AppGetOrCreate(stream):
        req = await stream.recv_message()
        await s._gate("AppGetOrCreate", stream)
        app_id = s.apps.setdefault(req.app_name, nid("ap"))
        await stream.send_message(api_pb2.AppGetOrCreateResponse(app_id=app_id))

    async def ImageGetOrCreate(stream):
        req = await stream.recv_message()
        await s._gate("ImageGetOrCreate", stream)
        digest = hashlib.sha256(req.image.SerializeToString(deterministic=True)).hexdigest()
        if s.build_fails:
            await stream.send_message(api_pb2.ImageGetOrCreateResponse(image_id=nid("im")))
            return
        cached = digest in s.images
        image_id = s.images.setdefault(digest, nid("im"))
        if cached:
            result = _R(status=_R.GENERIC_STATUS_SUCCESS)
            await stream.send_message(api_pb2.ImageGetOrCreateResponse(image_id=image_id, result=result))
        else:
            s.builds += 1
            await stream.send_message(api_pb2.ImageGetOrCreateResponse(image_id=image_id))

    async def ImageJoinStreaming(stream):
        await stream.recv_message()
        await s._gate("ImageJoinStreaming", stream)
        if s.build_fails:
            result = _R(status=_R.GENERIC_STATUS_FAILURE, exception="Image build failed: `pip install` exited 1")
        else:
            result = _R(status=_R.GENERIC_STATUS_SUCCESS)
        await stream.send_message(api_pb2.ImageJoinStreamingResponse(result=result, eof=True))

    async def SecretGetOrCreate(stream):
        req = await stream.recv_message()
        await s._gate("SecretGetOrCreate", stream)
        sid = nid("st")
        s.secrets[sid] = dict(req.env_dict)  # memory only: never written anywhere
        await stream.send_message(api_pb2.SecretGetOrCreateResponse(secret_id=sid))

    async def VolumeGetOrCreate(stream):
        req = await stream.recv_message()
        await s._gate("VolumeGetOrCreate", stream)
        if req.deployment_name not in s.volumes:
            if req.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                raise GRPCError(Status.NOT_FOUND, f"Volume '{req.deployment_name}' not found")
            s.volumes[req.deployment_name] = nid("vo")
        meta = api_pb2.VolumeMetadata(version=api_pb2.VOLUME_FS_VERSION_V2, name=req.deployment_name)
        await stream.send_message(api_pb2.VolumeGetOrCreateResponse(volume_id=s.volumes[req.deployment_name],
                                                                    metadata=meta))

    async def VolumePutFiles2(stream):
        req = await stream.recv_message()
        await s._gate("VolumePutFiles2", stream)
        missing = []
        for fi, f in enumerate(req.files):
            for bi, b in enumerate(f.blocks):
                if b.contents_sha256 not in s.blocks:
                    missing.append(api_pb2.VolumePutFiles2Response.MissingBlock(
                        file_index=fi, block_index=bi, put_url=f"{blob_url}/block/{b.contents_sha256.hex()}"))
        if not missing:
            for f in req.files:
                target = s._vpath(req.volume_id, f.path)
                if req.disallow_overwrite_existing_files and target.exists():
                    raise GRPCError(Status.ALREADY_EXISTS, f"{f.path} already exists")
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".part")
                with open(tmp, "wb") as out:
                    for i, b in enumerate(f.blocks):
                        # the client leaves a block's trailing zero bytes out (blob_utils.py)
                        out.write(s.blocks[b.contents_sha256].ljust(min(BLOCK, f.size - i * BLOCK), b"\0"))
                os.replace(tmp, target)
        await stream.send_message(api_pb2.VolumePutFiles2Response(missing_blocks=missing))

    async def VolumeGetFile2(stream):
        req = await stream.recv_message()
        await s._gate("VolumeGetFile2", stream)
        p = s._vpath(req.volume_id, req.path)
        if not p.is_file():
            raise GRPCError(Status.NOT_FOUND, f"No such file: {req.path}")
        size = p.stat().st_size
        urls = []
        for start in range(0, max(size, 1), BLOCK):
            token = hashlib.sha256(f"{req.volume_id}{req.path}{start}{time.time()}".encode()).hexdigest()[:24]
            s.downloads[token] = (req.volume_id, req.path, start, min(BLOCK, size - start))
            urls.append(f"{blob_url}/get/{token}")
        await stream.send_message(api_pb2.VolumeGetFile2Response(get_urls=urls, size=size, start=0, len=size))

    async def VolumeListFiles2(stream):
        req = await stream.recv_message()
        await s._gate("VolumeListFiles2", stream)
        base = s._vpath(req.volume_id, req.path or "/")
        root = s.volume_dir(req.volume_id)
        entries = []
        if base.is_file():
            paths = [base]
        elif base.is_dir():
            paths = sorted(base.rglob("*") if req.recursive else base.iterdir())
        else:
            raise GRPCError(Status.NOT_FOUND, f"No such file or directory: {req.path}")
        for p in paths:
            st = p.stat()
            kind = api_pb2.FileEntry.DIRECTORY if p.is_dir() else api_pb2.FileEntry.FILE
            entries.append(api_pb2.FileEntry(path=str(p.relative_to(root)), type=kind, size=st.st_size,
                                             mtime=int(st.st_mtime)))
        await stream.send_message(api_pb2.VolumeListFiles2Response(entries=entries))

    async def VolumeRemoveFile2(stream):
        req = await stream.recv_message()
        await s._gate("VolumeRemoveFile2", stream)
        p = s._vpath(req.volume_id, req.path)
        if p.is_dir():
            if not req.recursive:
                raise GRPCError(Status.INVALID_ARGUMENT, f"{req.path} is a directory")
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            raise GRPCError(Status.NOT_FOUND, f"No such file: {req.path}")
        await stream.send_message(empty_pb2.Empty())

    def _create(req: Any, sandbox_id: str, env: dict[str, str] | None = None) -> Sandbox:
        """One sandbox from a V1 or V2 create request (names are unique among running ones)."""
        name = req.definition.name
        if name and any(sb.name == name and sb.app_id == req.app_id for sb in s.running()):
            raise GRPCError(Status.ALREADY_EXISTS, f"Sandbox with name '{name}' already exists in app")
        sb = Sandbox(id=sandbox_id, name=name, app_id=req.app_id, tags={t.tag_name: t.tag_value for t in req.tags},
                     timeout=float(req.definition.timeout_secs or 300))
        s.sandboxes[sb.id] = sb
        s.created.append(name)
        s.resources[sb.id] = req.definition.resources
        s._start(sb, req.definition, env or {})
        if s.drop_create_answer:
            s.drop_create_answer -= 1
            raise GRPCError(Status.UNAVAILABLE, "connection reset after the sandbox was created")
        return sb

    async def SandboxCreate(stream):
        req = await stream.recv_message()
        await s._gate("SandboxCreate", stream)
        sb = _create(req, nid("sb"))
        await stream.send_message(api_pb2.SandboxCreateResponse(sandbox_id=sb.id))

    async def SandboxCreateV2(stream):
        """The client's create for a sandbox without a GPU (``sandbox_v2``, on by default in
        1.6): ephemeral secrets come inline as ``secret_sources``; ids are not V1-shaped."""
        req = await stream.recv_message()
        await s._gate("SandboxCreateV2", stream)
        env: dict[str, str] = {}
        for source in req.secret_sources:
            env.update(s.secrets.get(source.secret_id, {}) if source.secret_id else dict(source.env.contents))
        sb = _create(req, f"sb-{next(s.ids):024d}", env)  # 24 digits: not V1's 22
        await stream.send_message(api_pb2.SandboxCreateV2Response(sandbox_id=sb.id, task_id=f"ta-{sb.id}V"))

    def _sandbox(sandbox_id: str) -> Sandbox:
        sb = s.sandboxes.get(sandbox_id)
        if sb is None:
            raise GRPCError(Status.NOT_FOUND, f"Sandbox {sandbox_id} not found")
        return sb

    async def SandboxGetTaskId(stream):
        req = await stream.recv_message()
        await s._gate("SandboxGetTaskId", stream)
        sb = _sandbox(req.sandbox_id)
        result = s._result(sb)
        if result is not None:
            await stream.send_message(api_pb2.SandboxGetTaskIdResponse(task_result=result))
        else:
            await stream.send_message(api_pb2.SandboxGetTaskIdResponse(task_id=f"ta-{sb.id}"))

    async def SandboxWait(stream, method: str = "SandboxWait"):
        req = await stream.recv_message()
        await s._gate(method, stream)
        sb = _sandbox(req.sandbox_id)
        deadline = time.monotonic() + float(req.timeout or 0)
        while s._result(sb) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        result = s._result(sb)
        await stream.send_message(api_pb2.SandboxWaitResponse(result=result) if result is not None
                                  else api_pb2.SandboxWaitResponse())

    async def SandboxTerminate(stream, method: str = "SandboxTerminate"):
        req = await stream.recv_message()
        await s._gate(method, stream)
        sb = _sandbox(req.sandbox_id)
        if s._result(sb) is None:
            s._kill(sb)
            sb.result = _R(status=_R.GENERIC_STATUS_TERMINATED)
        await stream.send_message(api_pb2.SandboxTerminateResponse())

    async def SandboxGetFromName(stream, method: str = "SandboxGetFromName", v2: bool = False):
        req = await stream.recv_message()
        await s._gate(method, stream)
        app_id = s.apps.get(req.app_name)
        for sb in s.running():
            if sb.app_id == app_id and sb.name == req.sandbox_name and _v2(sb.id) == v2:
                await stream.send_message(api_pb2.SandboxGetFromNameResponse(sandbox_id=sb.id))
                return
        raise GRPCError(Status.NOT_FOUND, f"Sandbox with name '{req.sandbox_name}' not found")

    async def SandboxList(stream, method: str = "SandboxList"):
        """Running sandboxes, newest first, ``before_timestamp`` paging (sandbox/_sandbox.py ``_list``)."""
        req = await stream.recv_message()
        await s._gate(method, stream)
        want = {t.tag_name: t.tag_value for t in req.tags}
        found = [sb for sb in (s.sandboxes.values() if req.include_finished else s.running())
                 if (not req.app_id or sb.app_id == req.app_id)
                 and all(sb.tags.get(k) == v for k, v in want.items())
                 and (not req.before_timestamp or sb.created < req.before_timestamp)]
        found.sort(key=lambda sb: -sb.created)
        infos = [api_pb2.SandboxInfo(id=sb.id, created_at=sb.created, app_id=sb.app_id, name=sb.name, tags=_tags(sb),
                                     task_info=api_pb2.TaskInfo(id=f"ta-{sb.id}", sandbox_id=sb.id))
                 for sb in found[:20]]
        await stream.send_message(api_pb2.SandboxListResponse(sandboxes=infos))

    async def SandboxTagsGet(stream, method: str = "SandboxTagsGet"):
        req = await stream.recv_message()
        await s._gate(method, stream)
        sb = _sandbox(req.sandbox_id)
        await stream.send_message(api_pb2.SandboxTagsGetResponse(tags=_tags(sb)))

    def v2(handler, **kw):
        """The V2 twin of a V1 call (the client's ``sandbox_v2`` path): same answer, its own name."""
        async def call(stream):
            await handler(stream, handler.__name__ + "V2", **kw)
        return call

    # SandboxListV2 lists V1 and V2 sandboxes alike; by name, each version finds its own.
    SandboxWaitV2, SandboxTerminateV2, SandboxListV2, SandboxTagsGetV2 = (
        v2(SandboxWait), v2(SandboxTerminate), v2(SandboxList), v2(SandboxTagsGet))
    SandboxGetFromNameV2 = v2(SandboxGetFromName, v2=True)

    async def AuthTokenGet(stream):
        await stream.recv_message()
        await s._gate("AuthTokenGet", stream)
        await stream.send_message(api_pb2.AuthTokenGetResponse(token=_jwt(time.time() + 3600)))

    async def EnvironmentGetOrCreate(stream):
        req = await stream.recv_message()
        await s._gate("EnvironmentGetOrCreate", stream)
        settings = api_pb2.EnvironmentSettings(image_builder_version="2025.06")
        meta = api_pb2.EnvironmentMetadata(name=req.deployment_name or "main", settings=settings)
        await stream.send_message(api_pb2.EnvironmentGetOrCreateResponse(environment_id="en-000001", metadata=meta))

    async def WorkspaceNameLookup(stream):
        await stream.recv_message()
        await s._gate("WorkspaceNameLookup", stream)
        await stream.send_message(api_pb2.WorkspaceNameLookupResponse(workspace_name="test-ws", username="tester"))

    async def WorkspaceBillingSummary(stream):
        await stream.recv_message()
        await s._gate("WorkspaceBillingSummary", stream)
        if s.billing_refused:
            raise GRPCError(Status.PERMISSION_DENIED, "Billing is only visible to workspace managers")
        await stream.send_message(api_pb2.WorkspaceBillingSummaryResponse(
            metered_cost=f"{s.spend:.6f}", billed_cost="0"))

    implemented = {k: v for k, v in locals().items() if k[:1].isupper()}

    def unimplemented(name: str):
        async def handler(stream):
            await stream.recv_message()
            s.unimplemented.append(name)
            raise GRPCError(Status.UNIMPLEMENTED, f"{name} is not in the stand-in")
        return handler

    methods = {name: implemented.get(name) or unimplemented(name)
               for name in api_grpc.ModalClientBase.__abstractmethods__}
    for name in implemented:
        assert name in methods, name
    cls = type("StandInServicer", (api_grpc.ModalClientBase,), {
        name: (lambda fn: (lambda self, stream: fn(stream)))(fn) for name, fn in methods.items()})
    return cls()


def _tags(sb: Sandbox) -> list:
    return [api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in sb.tags.items()]


def _v2(sandbox_id: str) -> bool:
    """Whether the id is one SandboxCreateV2 gave (V1 ids have 22 characters after ``sb-``)."""
    return len(sandbox_id) != len("sb-") + 22


def _jwt(exp: float) -> str:
    """An unsigned JWT the client only decodes for its ``exp`` (auth_token_manager.py)."""
    part = lambda doc: base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none'})}.{part({'exp': int(exp)})}.sig"


class RunningStandIn:
    """The stand-in serving on 127.0.0.1 (gRPC + block HTTP) from a background thread."""

    def __init__(self, standin: ModalStandIn):
        self.standin = standin
        handler = type("H", (_BlockServer,), {"standin": standin})
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.blob_url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.port = 0

        async def serve() -> None:
            self.server = Server([_handlers(standin, self.blob_url)])
            await self.server.start("127.0.0.1", 0)
            self.port = self.server._server.sockets[0].getsockname()[1]
            ready.set()

        self.thread = threading.Thread(target=self._run, args=(serve,), daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("modal stand-in did not start")
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self, serve: Any) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(serve())
        self.loop.run_forever()

    def stop(self) -> None:
        self.standin.stop_all()
        self.http.shutdown()
        self.http.server_close()

        async def close() -> None:
            self.server.close()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
