"""Moving bytes to and from Kaggle: datasets up (once per content), outputs down.

Both directions distrust the other side: a dataset is identified by a slug derived
from its content hash, so one that exists is the same data and is never uploaded
again; an output listing may name files ``../x`` or ``/etc/x`` and may hand out URLs
that answer with error pages, so names are sanitised and only a 200 is saved.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from ...errors import PrecheckError, TransientError
from ...partfile import PartFile
from .client import ExpiredLink, KaggleAccount

#: What a run stopped mid-write leaves: the runner's ``<archive>.partial`` and
#: ``<file>.tmp.<pid>``, its write-speed probe. Never fetched as results.
INCOMPLETE = re.compile(r"(\.partial|\.tmp\.\d+)$|(^|/)pack-probe\.")
#: Fresh listings tried for one file whose links keep expiring.
RELISTS = 3

log = logging.getLogger(__name__)


def log_text(raw: str) -> str:
    """Kaggle's log (a JSON array of {stream_name, time, data}) as plain text."""
    try:
        events = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(events, list):
        return raw
    return "".join(str(e.get("data", "")) for e in events if isinstance(e, dict))


# --------------------------------------------------------------------------- datasets


#: Slugs tried for one content before giving up (``<slug>``, ``<slug>-1``, ...).
GENERATIONS = 8


class DeadSlug(PrecheckError):
    """This slug can no longer hold the dataset: Kaggle failed to process it, it was
    deleted (Kaggle keeps a deleted slug reserved), or it is taken by nothing we can see."""


def generation_ref(ref: str, generation: int) -> str:
    """``ref`` for generation 0, ``ref-<n>`` after it: same content, a slug Kaggle still allows."""
    return ref if generation == 0 else f"{ref}-{generation}"


def place_dataset(account: KaggleAccount, ref: str, files: Mapping[str, Path], staging: Path,
                  wait_s: float, poll_s: float, sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> tuple[str, bool]:
    """:func:`ensure_dataset` on the first generation of ``ref`` whose slug still works,
    so content whose dataset orch deleted (``orch gc``) or Kaggle failed can be uploaded
    again. Stateless: every controller finds the same generation. Returns (ref, uploaded)."""
    for generation in range(GENERATIONS):
        candidate = generation_ref(ref, generation)
        try:
            return candidate, ensure_dataset(account, candidate, files, staging, wait_s, poll_s, sleep, clock)
        except DeadSlug as exc:
            log.info("%s; trying the next slug", exc)
    raise PrecheckError(f"no usable slug for dataset {ref} after {GENERATIONS} tries; delete the old ones "
                        f"with `orch gc` and submit again")


def ensure_dataset(account: KaggleAccount, ref: str, files: Mapping[str, Path], staging: Path,
                   wait_s: float, poll_s: float, sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> bool:
    """Make private dataset ``ref`` exist with ``files`` and be ready.

    A dataset that already exists is never uploaded again (the slug is derived from
    the content, so existing means identical); a new one is uploaded once. Returns
    True when this call uploaded it.

    Raises:
        TransientError: still processing after ``wait_s`` (a later tick retries).
        PrecheckError: Kaggle refused the upload or failed to process it.
    """
    status = account.dataset_status(ref)
    uploaded = False
    if status is None:
        folder = staging / ref.split("/")[1]
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for name, path in files.items():
            os.symlink(path.resolve(), folder / name)
        slug = ref.split("/")[1]
        (folder / "dataset-metadata.json").write_text(json.dumps(
            {"id": ref, "title": slug, "licenses": [{"name": "unknown"}],
             "description": "Created by orch for its jobs; remove it with `orch gc`."}))
        try:
            account.create_dataset(folder, ref)
            uploaded = True
        except PrecheckError as exc:
            if "already in use" not in str(exc):
                raise
            status = account.dataset_status(ref)  # lost a race with another submit: fine
            if status is None:
                raise DeadSlug(f"the slug of dataset {ref} is taken by nothing this account can see "
                               "(deleted datasets keep their slug)") from exc
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    deadline = clock() + wait_s
    while status != "ready":
        if status in ("failed", "deleted"):
            raise DeadSlug(f"Kaggle could not process dataset {ref} (status {status}); delete it with "
                                f"`kaggle datasets delete {ref}` (or `orch gc`) and submit again")
        if clock() >= deadline:
            raise TransientError(f"dataset {ref} is still being processed by Kaggle ({status or 'not listed yet'}); "
                                 "the push is retried on a later tick")
        sleep(poll_s)
        status = account.dataset_status(ref)
    return uploaded


# --------------------------------------------------------------------------- outputs


@dataclass
class FetchReport:
    saved: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name (why)"
    log: str = ""


def _safe_target(dest: Path, name: str) -> Path | None:
    """``dest/<name>`` for a sanitised output name, creating real directories only."""
    from ...results import safe_name

    rel = safe_name(name)
    if rel is None:
        return None
    target = dest
    for part in rel.split("/")[:-1]:
        target = target / part
        try:
            if not stat.S_ISDIR(os.lstat(target).st_mode):
                return None
        except FileNotFoundError:
            os.mkdir(target)
    target = target / rel.split("/")[-1]
    if os.path.lexists(target) and not stat.S_ISREG(os.lstat(target).st_mode):
        return None
    return target


def download_outputs(account: KaggleAccount, ref: str, dest: Path, page_size: int = 50) -> FetchReport:
    """Download every output file of kernel ``ref`` into ``dest``, page by page.

    Names are sanitised (no ``..``, no absolute paths, no writing through links);
    refused names are reported, never written. Error pages are never saved: only a
    200 (or 206) answer becomes a file. Resumable: ``dest`` is the controller's
    ``staging/<key>``, kept across ticks, so a file already there under its final name
    (complete, see :class:`PartFile`) is kept and a ``.part`` is continued.
    """
    report = FetchReport()
    token, seen = "", {""}
    dest.mkdir(parents=True, exist_ok=True)
    while True:
        page = account.output_page(ref, token, page_size)
        report.log = page.log or report.log
        for name, url in page.files:
            if INCOMPLETE.search(name):
                report.skipped.append(f"{name} (incomplete: the run was stopped while writing it)")
                continue
            target = _safe_target(dest, name)
            if target is None:
                report.skipped.append(f"{name} (unsafe name)")
                log.warning("%s: refused output file name %r", ref, name)
                continue
            if not PartFile(target).complete():  # else fetched on an earlier tick
                _download_listed(account, ref, token, page_size, name, url, target)
            report.saved.append(str(target.relative_to(dest)))
        token = page.next_token
        if not token or token in seen:  # a repeated token would loop forever
            return report
        seen.add(token)


def _download_listed(account: KaggleAccount, ref: str, token: str, page_size: int, name: str, url: str,
                     target: Path) -> None:
    """Download one listed file; when its signed link has expired, list that page again
    for a fresh link and go on from the bytes already saved (``.part``)."""
    for _ in range(RELISTS):
        try:
            account.download(url, target, f"output {name} of {ref}")
            return
        except ExpiredLink as exc:
            log.info("%s; listing the outputs again for a fresh link", exc)
            fresh = dict(account.output_page(ref, token, page_size).files)
            if name not in fresh:
                raise TransientError(f"output {name} of {ref} is no longer listed by Kaggle") from exc
            url = fresh[name]
    account.download(url, target, f"output {name} of {ref}")
