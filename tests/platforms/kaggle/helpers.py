"""Small helpers for driving the emulator with the real client (no orch code here)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.platforms.kaggle.conftest import USERNAME


def kernel_folder(root: Path, slug: str, code: str, **meta) -> Path:
    """A kernel folder as ``kaggle kernels push`` reads it."""
    folder = root / slug
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(code)
    doc = {"id": f"{USERNAME}/{slug}", "title": slug, "code_file": "main.py", "language": "python",
           "kernel_type": "script", "is_private": True, "enable_gpu": False, "enable_internet": False}
    doc.update(meta)
    (folder / "kernel-metadata.json").write_text(json.dumps(doc))
    return folder


def dataset_folder(root: Path, slug: str, files: dict[str, bytes]) -> Path:
    folder = root / f"ds-{slug}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "dataset-metadata.json").write_text(json.dumps(
        {"id": f"{USERNAME}/{slug}", "title": slug, "licenses": [{"name": "unknown"}]}))
    return folder


def wait_status(api, ref: str, want=("COMPLETE", "ERROR"), timeout: float = 20.0):
    """Poll the real client until the kernel reaches one of ``want``."""
    deadline = time.monotonic() + timeout
    while True:
        resp = api.kernels_status(ref)
        if resp.status.name in want:
            return resp
        if time.monotonic() > deadline:
            raise AssertionError(f"{ref} stayed {resp.status.name}")
        time.sleep(0.03)
