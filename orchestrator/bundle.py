"""Deterministic, content-addressed bundles of a job's code and datasets.

(The builder lands with the core commit; the data classes below are the contract
platform backends rely on.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DatasetBlob:
    """One dataset, archived once and shared by every job that uses the same content.

    Attributes:
        name: the directory name the job sees under ``$ORCH_DATA``.
        digest: sha256 of the dataset's content (file names + file hashes), stable
            across machines; the archive is ``data-<digest>.tar``.
        archive: the archive on local disk (uncompressed tar).
        sha256: sha256 of the archive bytes.
        size: archive size in bytes.
    """

    name: str
    digest: str
    archive: Path
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return f"data-{self.digest}.tar"


@dataclass(frozen=True)
class Bundle:
    """A job's packaged inputs: ``manifest.json`` + the code archive + dataset archives.

    ``digest`` is the sha256 of the manifest bytes, so two jobs with the same code,
    data and run settings share one bundle. ``directory`` holds ``manifest.json`` and
    the code archive under their manifest names; dataset archives live in the
    content-addressed blob cache (``DatasetBlob.archive``).
    """

    digest: str
    directory: Path
    code_archive: Path
    code_sha256: str
    datasets: tuple[DatasetBlob, ...]

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"
