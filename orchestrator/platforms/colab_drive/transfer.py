"""Moving bytes to and from Drive: orch's own retry loop, resumable uploads, Range downloads.

Design choice: the library's built-in retries are not used for media
(``next_chunk(num_retries=0)``). Its chunk retry re-sends an exhausted stream, and its
backoff (at most 2-8 s) is too short for Drive's per-minute quotas. Instead every call
goes through :meth:`Transfers.call`, which retries what :func:`is_retryable` allows with
truncated exponential backoff and full jitter (:data:`DRIVE_CALLS`, an
:class:`orchestrator.retry.Retry`; ``sleep`` is injectable for tests).

Uploads are resumable and chunked; the session URI is journalled under the orch home
the moment Drive hands it out, so an upload cut short by a crash or a controller
restart continues from the server's offset (a ``bytes */N`` query) instead of from
zero. Downloads go to ``<dest>.part`` with ``Range`` requests, continue from the size
already on disk, and are renamed into place only after their sha256 matched.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from googleapiclient.errors import HttpError
from googleapiclient.http import MediaFileUpload, MediaInMemoryUpload

from ...bundle import sha256_file
from ...errors import PlatformError, TransientError
from ...partfile import PartFile
from ...progress import transfer
from ...retry import Retry, Tries
from .client import classify, is_retryable

T = TypeVar("T")

FOLDER_MIME = "application/vnd.google-apps.folder"
#: Fields orch reads back for every file.
FILE_FIELDS = "id,name,mimeType,parents,size,sha256Checksum,properties,createdTime,modifiedTime"
#: Drive wants non-final chunks in multiples of this.
CHUNK_QUANTUM = 256 * 1024
DEFAULT_CHUNK = 8 * 1024 * 1024
#: Drive's documented ceiling for ``uploadType=multipart``; anything larger goes resumable.
MULTIPART_MAX = 5 * 1024 * 1024


def quote(value: str) -> str:
    """A string literal for Drive's ``q`` syntax."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


#: Drive calls: truncated exponential backoff with full jitter, as Google's Drive docs
#: advise: the n-th wait is ``rand() * min(32 s, 1 s * 2**(n-1))``; 8 tries.
DRIVE_CALLS = Retry(attempts=8, base=1.0, factor=2.0, cap=32.0, jitter=1.0)


class UploadJournal:
    """Session URIs of unfinished uploads, one small 0600 JSON file per upload key.

    A session URI lets anyone holding it append to that upload, so it stays out of the
    state DB and logs, like a credential.
    """

    def __init__(self, directory: Path):
        self.directory = directory

    def _path(self, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        return self.directory / f"{safe}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, doc: Mapping[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".upload-")
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(dict(doc), fh)
        os.replace(tmp, self._path(key))

    def drop(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self) -> Iterator[str]:
        return (p.stem for p in self.directory.glob("*.json"))


class Transfers:
    """Files, folders and bytes on Drive through one ``Resource``, with retries.

    Args:
        service: the Drive v3 resource from :func:`client.build_drive`.
        journal: where unfinished upload sessions are remembered.
        platform: the platform name, for error messages.
        backoff: retry policy (inject ``sleep`` in tests).
        chunk_size: resumable chunk size, a multiple of 256 KiB.
    """

    def __init__(self, service: Any, journal: UploadJournal, platform: str | None = None,
                 backoff: Retry | None = None, chunk_size: int = DEFAULT_CHUNK):
        if chunk_size <= 0 or chunk_size % CHUNK_QUANTUM:
            raise ValueError("chunk_size must be a positive multiple of 256 KiB")
        self.service = service
        self.journal = journal
        self.platform = platform
        self.backoff = backoff or DRIVE_CALLS
        self.chunk_size = chunk_size

    # ---- generic calls
    def call(self, what: str, make: Callable[[], Any]) -> Any:
        """Execute the request ``make()`` builds, retrying transient failures.

        Raises:
            PlatformError: the mapped error once retries are spent, or at once when the
                error is not retryable (401, 403 permission, 404, 400).
        """
        return self.retrying(what, lambda: make().execute(num_retries=0))

    def retrying(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, retried on what :func:`is_retryable` allows, errors mapped once."""
        tries = self.backoff.begin()
        while True:
            try:
                return fn()
            except PlatformError as exc:
                if not isinstance(exc, TransientError):
                    raise
                self._absorb(exc, what, tries)
            except Exception as exc:  # noqa: BLE001 - classified right here
                self._absorb(exc, what, tries)

    def _absorb(self, exc: BaseException, what: str, tries: Tries) -> None:
        """Back off after a retryable failure or raise the mapped error."""
        if not is_retryable(exc):
            raise classify(exc, what, self.platform) from exc
        if not tries.wait(exc):
            raise classify(exc, f"{what} (gave up after {tries.failures} tries)", self.platform) from exc

    def list(self, q: str, fields: str = FILE_FIELDS, order_by: str = "createdTime") -> list[dict[str, Any]]:
        """Every file matching ``q`` (all pages), oldest first by default."""
        files: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self.call(f"list files ({q})", lambda: self.service.files().list(
                q=q, spaces="drive", pageSize=1000, orderBy=order_by, pageToken=token,
                fields=f"nextPageToken, files({fields})"))
            files.extend(page.get("files", []))
            token = page.get("nextPageToken")
            if not token:
                return files

    def get(self, file_id: str, fields: str = FILE_FIELDS) -> dict[str, Any]:
        return self.call(f"read file {file_id}", lambda: self.service.files().get(fileId=file_id, fields=fields))

    def delete(self, file_id: str) -> None:
        """Delete a file or folder (with its contents); a missing one is not an error."""
        try:
            self.call(f"delete {file_id}", lambda: self.service.files().delete(fileId=file_id))
        except PlatformError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, HttpError) and cause.resp.status == 404):
                raise

    def update(self, file_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.call(f"update {file_id}", lambda: self.service.files().update(
            fileId=file_id, body=dict(body), fields=FILE_FIELDS))

    def folder(self, name: str, parent: str, properties: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The oldest folder ``name`` under ``parent``, created when none is listed.

        Design choice: Drive's listings are not read-after-write consistent and names are
        not unique. So the id ``create`` returns is used as it is (never looked up again
        by name), and where two creators raced, or a listing lagged, everybody who later
        lists agrees on the oldest.
        """
        q = f"{quote(parent)} in parents and name = {quote(name)} and mimeType = '{FOLDER_MIME}' and trashed = false"
        found = self.list(q)
        if found:
            return found[0]
        body = {"name": name, "mimeType": FOLDER_MIME, "parents": [parent], "properties": dict(properties or {})}
        return self.create(f"create folder {name}", lambda: self.service.files().create(body=body, fields=FILE_FIELDS),
                           lookup=q)

    def create(self, what: str, make: Callable[[], Any], lookup: str | None = None) -> dict[str, Any]:
        """Execute a create request, retrying without making a second file where it can tell.

        A create can succeed and still answer 5xx or time out. Before each retry the
        ``lookup`` query (one that matches only the file being made) is listed once more
        and the oldest match is taken. A listing that lags may still miss it; then a
        duplicate is made, which the oldest-wins rule of every lookup tolerates.
        """
        tries = self.backoff.begin()
        while True:
            try:
                return make().execute(num_retries=0)
            except Exception as exc:  # noqa: BLE001 - classified in _absorb
                self._absorb(exc, what, tries)
            if lookup:
                found = self.list(lookup)
                if found:
                    return found[0]

    # ---- small documents
    def put_bytes(self, data: bytes, *, name: str, parent: str, properties: Mapping[str, str] | None = None,
                  file_id: str | None = None, mime: str = "application/json",
                  lookup: str | None = None) -> dict[str, Any]:
        """Create (or, with ``file_id``, overwrite) a small file in one multipart request;
        ``lookup`` finds it again if a create's answer was lost (see :meth:`create`)."""
        def make() -> Any:
            media = MediaInMemoryUpload(data, mimetype=mime, resumable=False)
            if file_id:
                return self.service.files().update(fileId=file_id, body={"properties": dict(properties or {})},
                                                   media_body=media, fields=FILE_FIELDS)
            body = {"name": name, "parents": [parent], "properties": dict(properties or {})}
            return self.service.files().create(body=body, media_body=media, fields=FILE_FIELDS)
        if file_id:
            return self.call(f"write {name}", make)
        return self.create(f"write {name}", make, lookup=lookup)

    def read_bytes(self, file_id: str) -> bytes:
        return self.call(f"read {file_id}", lambda: self.service.files().get_media(fileId=file_id))

    # ---- resumable uploads
    def upload(self, path: Path, *, name: str, parent: str, key: str,
               properties: Mapping[str, str] | None = None, sha256: str | None = None,
               mime: str = "application/octet-stream", lookup: str | None = None) -> dict[str, Any]:
        """Upload ``path`` as a new file, resumably, and check what Drive stored.

        ``key`` names the upload in the journal: calling again with the same key after a
        crash continues the journalled session when the file is unchanged.

        Raises:
            TransientError: retries spent, or Drive's size/sha256 differ from the file's.
        """
        size = path.stat().st_size
        sha256 = sha256 or sha256_file(path)
        body = {"name": name, "parents": [parent], "properties": dict(properties or {})}
        if size < min(self.chunk_size, MULTIPART_MAX):
            result = self.put_bytes(path.read_bytes(), name=name, parent=parent, properties=properties, mime=mime,
                                    lookup=lookup)
        else:
            result = self._resumable(path, body, key, size, sha256, mime)
        self._verify(result, size, sha256, name)
        return result

    def _resumable(self, path: Path, body: dict[str, Any], key: str, size: int, sha256: str,
                   mime: str) -> dict[str, Any]:
        what = f"upload {path.name}"

        def fresh() -> Any:
            media = MediaFileUpload(str(path), mimetype=mime, chunksize=self.chunk_size, resumable=True)
            return self.service.files().create(body=body, media_body=media, fields=FILE_FIELDS)

        req = fresh()
        saved = self.journal.get(key)
        resumed = bool(saved and saved.get("sha256") == sha256 and saved.get("size") == size)
        if resumed:
            req.resumable_uri = saved["uri"]
            # Private flag: makes the next call ask the server for its offset first
            # (``bytes */N``); the documented way to continue a session (notes §5.2.4).
            req._in_error_state = True
        tries = self.backoff.begin()
        response = None
        with transfer(f"{self.platform}: upload {path.name}", size) as advance:
            sent = 0
            while response is None:
                try:
                    status, response = req.next_chunk(num_retries=0)
                    tries.reset()
                    now = size if response is not None else (status.resumable_progress if status else sent)
                    advance(max(0, now - sent))
                    sent = max(sent, now)
                except Exception as exc:  # noqa: BLE001 - classified in _absorb
                    if resumed and isinstance(exc, HttpError) and exc.resp.status in (404, 410):
                        # The session expired (about a week): start a new one.
                        self.journal.drop(key)
                        req, resumed = fresh(), False
                        continue
                    self._absorb(exc, what, tries)
                finally:
                    if req.resumable_uri and not resumed:
                        self.journal.put(key, {"uri": req.resumable_uri, "sha256": sha256, "size": size,
                                               "path": str(path), "started": time.time()})
                        resumed = True
        self.journal.drop(key)
        return response

    def _verify(self, result: Mapping[str, Any], size: int, sha256: str, name: str) -> None:
        got_size = int(result.get("size", -1))
        got_sha = result.get("sha256Checksum")
        if got_size != size or (got_sha and got_sha != sha256):
            raise TransientError(
                f"upload {name}: Drive stored {got_size} bytes (sha256 {got_sha}), expected {size} ({sha256})",
                self.platform)

    def ensure_blob(self, path: Path, *, parent: str, name: str, identity: tuple[str, str],
                    properties: Mapping[str, str] | None = None, sha256: str | None = None) -> tuple[dict[str, Any], bool]:
        """Upload ``path`` unless a file tagged ``identity`` (a property) already exists.

        Returns:
            (file, uploaded): the oldest matching file, and whether bytes were sent now.
        """
        prop, value = identity
        size = path.stat().st_size
        q = (f"{quote(parent)} in parents and properties has {{ key={quote(prop)} and value={quote(value)} }}"
             f" and trashed = false")
        for existing in self.list(q):
            if int(existing.get("size", -1)) == size:
                # Touched on reuse: its modifiedTime is when a job last needed it (orch gc).
                return self.update(existing["id"], {"properties": {"orch_used": str(int(time.time()))}}), False
        props = {prop: value, **dict(properties or {})}
        return self.upload(path, name=name, parent=parent, key=f"blob-{value}", properties=props,
                           sha256=sha256, lookup=q), True

    # ---- downloads
    def _get_range(self, req: Any, start: int, end: int) -> tuple[int, bytes]:
        """One ``GET alt=media`` for bytes ``[start, end)``: (HTTP status, body)."""
        headers = {**req.headers, "range": f"bytes={start}-{end - 1}"}
        resp, content = req.http.request(req.uri, "GET", headers=headers)
        if resp.status not in (200, 206):
            raise HttpError(resp, content, uri=req.uri)
        if not content and end > start:
            raise TransientError(f"empty reply for bytes {start}-{end - 1}", self.platform)
        if resp.status == 206:
            # Never trust a reply's bytes to be the ones asked for: a stale or cut reply on
            # a reused connection would otherwise shift the rest of the file.
            m = re.match(r"bytes (\d+)-(\d+)/", resp.get("content-range", ""))
            if not m or int(m.group(1)) != start or len(content) != int(m.group(2)) - start + 1 \
                    or len(content) != end - start:
                raise TransientError(f"reply for bytes {start}-{end - 1} came back as "
                                     f"{resp.get('content-range', 'no Content-Range')} with {len(content)} bytes",
                                     self.platform)
        return resp.status, content

    def read_range(self, file_id: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a file (``orch logs`` reads the log this way)."""
        req = self.service.files().get_media(fileId=file_id)
        status, content = self.retrying(f"read {file_id}", lambda: self._get_range(req, start, end))
        return content[start:end] if status == 200 else content

    def download(self, file_id: str, dest: Path, *, size: int | None = None, sha256: str | None = None) -> Path:
        """Download a file to ``dest`` via ``dest.part``, continuing a partial one.

        Size and sha256 default to what Drive reports; a mismatch deletes the partial
        file and raises TransientError so the next try starts clean (:class:`PartFile`).
        """
        if size is None or sha256 is None:
            meta = self.get(file_id, "id,size,sha256Checksum")
            size = int(meta.get("size", 0)) if size is None else size
            sha256 = sha256 or meta.get("sha256Checksum")
        what = f"download {dest.name}"
        part = PartFile(dest, size=size, sha256=sha256, what=what, platform=self.platform)
        req = self.service.files().get_media(fileId=file_id)
        tries = self.backoff.begin()
        with part.open() as out, transfer(f"{self.platform}: download {dest.name}", size) as advance:
            advance(out.offset)
            while out.offset < size:
                try:
                    status, content = self._get_range(req, out.offset, min(size, out.offset + self.chunk_size))
                except Exception as exc:  # noqa: BLE001 - classified in _absorb
                    self._absorb(exc, what, tries)
                    continue
                if status == 200:  # the server ignored Range: this is the whole file
                    out.restart()
                out.write(content)
                advance(len(content))
                tries.reset()
        return part.commit()
