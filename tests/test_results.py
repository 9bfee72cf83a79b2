"""Hostile outputs: nothing is ever written outside the results directory."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from orchestrator.results import extract_archive, safe_name
from tests.conftest import make_job, submit, tick_until


def hostile_tar(path: Path, victim: Path) -> None:
    def add(tar, name, data=b"x", **kw):
        info = tarfile.TarInfo(name)
        for k, v in kw.items():
            setattr(info, k, v)
        if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        else:
            tar.addfile(info)

    with tarfile.open(path, "w:gz") as tar:
        add(tar, "ok.txt", b"fine")
        add(tar, "../escape.txt")
        add(tar, "a/../../escape2.txt")
        add(tar, str(victim))                                    # absolute
        add(tar, "link", type=tarfile.SYMTYPE, linkname=str(victim.parent))
        add(tar, "link/through.txt")                              # would write through the symlink
        add(tar, "hard", type=tarfile.LNKTYPE, linkname="/etc/passwd")
        add(tar, "dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        add(tar, "fifo", type=tarfile.FIFOTYPE)
        add(tar, "sub/deep.txt", b"deep")


def test_hostile_archive_writes_only_regular_files_inside_dest(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    archive = tmp_path / "outputs.tar.gz"
    hostile_tar(archive, victim)
    dest = tmp_path / "results" / "job"
    report = extract_archive(archive, dest)
    # the symlink "link" is skipped, so "link/through.txt" lands in a real directory inside dest
    assert sorted(report.written) == ["link/through.txt", "ok.txt", "sub/deep.txt"]
    assert len(report.skipped) == 7
    assert not victim.exists() and not (tmp_path / "results" / "escape.txt").exists()
    assert not (tmp_path / "escape2.txt").exists() and not (outside / "through.txt").exists()
    for p in dest.rglob("*"):
        assert p.is_dir() or (p.is_file() and not p.is_symlink())
        assert dest in p.resolve().parents


@pytest.mark.parametrize("name,ok", [("a/b.txt", "a/b.txt"), ("./a", "a"), ("../a", None), ("/etc/x", None),
                                     ("a/../../b", None), ("", None), ("c:/x", None), ("a\x00b", None)])
def test_safe_name(name, ok):
    assert safe_name(name) == ok


def test_job_writing_links_fifos_and_devices_gets_only_its_regular_files_back(orch, orch_home, tmp_path):
    outside = tmp_path / "secret-outside.txt"
    outside.write_text("do not copy")
    dev = "mknod $ORCH_OUTPUT_DIR/null c 1 3;" if os.geteuid() == 0 else ""
    path = make_job(tmp_path / "job", f"""\
        name: hostile
        run: >-
          echo good > $ORCH_OUTPUT_DIR/good.txt;
          ln -s {outside} $ORCH_OUTPUT_DIR/leak.txt;
          ln -s {tmp_path} $ORCH_OUTPUT_DIR/dirlink;
          mkfifo $ORCH_OUTPUT_DIR/pipe;
          {dev}
          ln -s /etc/passwd pw.txt
        outputs: ["*.txt"]  # "../*" is refused at submit (tests/specs/broken/53-*)
        """)
    job_id = submit(orch, path)
    tick_until(lambda app: app.store.job(job_id).state.terminal)
    out = tmp_path / "fetched"
    assert orch("fetch", job_id, "-o", str(out)).exit_code == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir())
    assert files == ["job.log", "outputs/good.txt", "result.json"]
    result = json.loads((out / "result.json").read_text())
    assert "leak.txt" in result["skipped_outputs"] and "pipe" in result["skipped_outputs"]
    assert all(not p.is_symlink() for p in out.rglob("*"))
