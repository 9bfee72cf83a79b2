"""Bundles: deterministic bytes, ignore rules, the credential guard, the dataset cache."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from orchestrator import bundle as b
from orchestrator import spec as spec_mod
from orchestrator.errors import BundleError


def make_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def build(tmp: Path, code: Path, data: Path | None = None, allow=()) -> b.Bundle:
    yaml = "run: python main.py\n" + (f"datasets:\n  - {{path: {data}, name: data}}\n" if data else "")
    (code / "job.yaml").write_text(yaml)
    s = spec_mod.load(code / "job.yaml")
    return b.build(s, tmp / "bundles", b.DatasetCache(tmp / "blobs", tmp / "index"), allow)


def test_same_content_gives_same_bytes_whatever_mtimes_umask_and_order(tmp_path):
    files = {"main.py": "print(1)\n", "pkg/a.py": "A = 1\n", "pkg/b.py": "B = 2\n", "z/data.txt": "zzz"}
    one, two = tmp_path / "one", tmp_path / "two"
    make_tree(one, files)
    old = os.umask(0o077)
    try:
        make_tree(two, dict(reversed(list(files.items()))))
    finally:
        os.umask(old)
    os.utime(two / "pkg" / "a.py", (1_000_000, 1_000_000))
    (two / "main.py").chmod(0o600)
    b1 = build(tmp_path / "h1", one)
    b2 = build(tmp_path / "h2", two)
    assert b1.digest == b2.digest
    assert b1.code_archive.read_bytes() == b2.code_archive.read_bytes()


def test_changing_one_byte_changes_the_digest(tmp_path):
    code = tmp_path / "code"
    make_tree(code, {"main.py": "print(1)\n"})
    first = build(tmp_path / "h", code).digest
    (code / "main.py").write_text("print(2)\n")
    assert build(tmp_path / "h", code).digest != first


def test_orchignore_and_default_ignores_are_honoured(tmp_path):
    code = tmp_path / "code"
    make_tree(code, {"main.py": "", "big/weights.bin": "x", "notes.log": "", "keep.log": "",
                     ".git/config": "", "__pycache__/m.pyc": "", ".orchignore": "big/\n*.log\n!keep.log\n"})
    names = [rel for rel, _ in b.list_code_files(code)[0]]
    assert names == [".orchignore", "keep.log", "main.py"]


@pytest.mark.parametrize("name", ["kaggle.json", ".env", "id_rsa", "id_ed25519.pub", "server.pem", "credentials.json",
                                  "token.json", ".netrc", "sub/dir/.env"])
def test_credential_looking_files_are_refused_by_name(tmp_path, name):
    code = tmp_path / "code"
    make_tree(code, {"main.py": "", name: "secret"})
    with pytest.raises(BundleError) as info:
        build(tmp_path / "h", code)
    assert name in str(info.value) and ".orchignore" in str(info.value) and "--allow-file" in str(info.value)
    assert not (tmp_path / "h" / "bundles").exists() or not any((tmp_path / "h" / "bundles").glob("*/manifest.json"))


def test_credential_refusal_lists_every_file_and_allow_file_opts_out(tmp_path):
    code = tmp_path / "code"
    make_tree(code, {"main.py": "", "kaggle.json": "{}", "a/.env": "X=1"})
    with pytest.raises(BundleError) as info:
        build(tmp_path / "h", code)
    assert "kaggle.json" in str(info.value) and "a/.env" in str(info.value)
    assert build(tmp_path / "h", code, allow=("kaggle.json", ".env")).digest


def test_credentials_inside_a_dataset_are_refused_before_anything_is_archived(tmp_path):
    code, data = tmp_path / "code", tmp_path / "data"
    make_tree(code, {"main.py": ""})
    make_tree(data, {"x.csv": "1", "id_ed25519": "key"})
    with pytest.raises(BundleError):
        build(tmp_path / "h", code, data)
    assert not list((tmp_path / "h" / "blobs").glob("data-*.tar"))


def test_manifest_lists_every_file_with_its_sha256(tmp_path):
    import json

    code, data = tmp_path / "code", tmp_path / "data"
    make_tree(code, {"main.py": "print(1)\n"})
    make_tree(data, {"x.csv": "1,2\n", "sub/y.csv": "3\n"})
    bun = build(tmp_path / "h", code, data)
    manifest = json.loads(bun.manifest_path.read_text())
    assert manifest["code"]["files"]["main.py"] == hashlib.sha256(b"print(1)\n").hexdigest()
    ds = manifest["datasets"][0]
    assert ds["files"] == {"x.csv": hashlib.sha256(b"1,2\n").hexdigest(), "sub/y.csv": hashlib.sha256(b"3\n").hexdigest()}
    assert ds["sha256"] == hashlib.sha256(bun.datasets[0].archive.read_bytes()).hexdigest()


def test_unchanged_dataset_is_not_read_again(tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_tree(data, {f"f{i}.bin": str(i) * 100 for i in range(50)})
    old = time.time() - 60
    for p in data.iterdir():
        os.utime(p, (old, old))
    cache = b.DatasetCache(tmp_path / "blobs", tmp_path / "index")
    first = cache.add("d", data)
    opened: list[str] = []
    real_open = open

    def spy(path, *args, **kwargs):
        if str(path).startswith(str(data)):
            opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    again = cache.add("d", data)
    assert again.digest == first.digest and opened == []
    monkeypatch.undo()
    (data / "f1.bin").write_text("changed")
    assert cache.add("d", data).digest != first.digest


def test_a_dataset_shared_by_two_jobs_is_stored_once(tmp_path):
    data = tmp_path / "data"
    make_tree(data, {"x.csv": "1"})
    copy = tmp_path / "copy"
    make_tree(copy, {"x.csv": "1"})
    cache = b.DatasetCache(tmp_path / "blobs", tmp_path / "index")
    assert cache.add("a", data).archive == cache.add("b", copy).archive
    assert len(list((tmp_path / "blobs").glob("data-*.tar"))) == 1


def test_symlink_pointing_outside_code_is_not_bundled(tmp_path):
    code = tmp_path / "code"
    make_tree(code, {"main.py": ""})
    (tmp_path / "outside.txt").write_text("private")
    (code / "link.txt").symlink_to(tmp_path / "outside.txt")
    files, skipped = b.list_code_files(code)
    assert [rel for rel, _ in files] == ["main.py"] and skipped == ["link.txt"]


def test_gitignore_is_honoured_and_orchignore_can_bring_a_file_back(tmp_path):
    code = tmp_path / "code"
    make_tree(code, {"main.py": "", "data/big.bin": "x", "data/small.csv": "", ".hypothesis/db": "",
                     ".gitignore": "data/*\n", ".orchignore": "!data/small.csv\n"})
    names = [rel for rel, _ in b.list_code_files(code)[0]]
    assert sorted(names) == [".gitignore", ".orchignore", "data/small.csv", "main.py"]


def test_an_orch_home_inside_the_code_directory_is_never_bundled(tmp_path):
    code = tmp_path / "code"
    make_tree(code, {"main.py": "", "home/state.db": "x", "home/bundles/old/code.tar.gz": "y"})
    names = [rel for rel, _ in b.list_code_files(code, exclude=[code / "home"])[0]]
    assert names == ["main.py"]


def test_fifos_are_skipped_and_listed(tmp_path):
    code = tmp_path / "code"
    make_tree(code, {"main.py": ""})
    os.mkfifo(code / "pipe")
    files, skipped = b.list_code_files(code)
    assert [rel for rel, _ in files] == ["main.py"] and skipped == ["pipe"]


def test_a_dataset_path_with_tilde_is_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    (tmp_path / "me" / "data").mkdir(parents=True)
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.yaml").write_text("run: echo\ndatasets:\n  - {path: ~/data}\n")
    s = spec_mod.load(tmp_path / "job" / "job.yaml")
    assert s.datasets[0].path == str((tmp_path / "me" / "data").resolve())
