"""Issue 16.2 and 16.3: nothing secret leaves in a bundle. Each test plants what a
cloned repo or a careless home can hold and runs the real ``orch submit``."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from tests.conftest import make_job

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-not-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"


def bundled_bytes(home: Path) -> bytes:
    """Every byte orch archived: code archives and dataset archives, unpacked."""
    out = b""
    for archive in list(home.glob("bundles/*/code-*.tar.gz")) + list(home.glob("blobs/data-*.tar")):
        with tarfile.open(archive) as tar:
            for m in tar:
                if m.isfile():
                    out += m.name.encode() + b"\n" + tar.extractfile(m).read()
    return out


def names_in_code(home: Path) -> list[str]:
    [archive] = home.glob("bundles/*/code-*.tar.gz")
    with tarfile.open(archive) as tar:
        return sorted(m.name for m in tar)


@pytest.fixture
def fake_home(tmp_path, monkeypatch) -> Path:
    """A user home with an SSH key and a Kaggle token, as a real one has."""
    home = tmp_path / "me"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text(KEY)
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "kaggle.json").write_text('{"username": "me", "key": "kaggle-secret-key-3b7"}')
    monkeypatch.setenv("HOME", str(home))
    return home


def test_a_dataset_symlink_to_an_ssh_key_is_not_archived(orch, orch_home, tmp_path, fake_home):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ok.csv").write_text("1,2\n")
    (data / "train.csv").symlink_to(fake_home / ".ssh" / "id_ed25519")
    (data / "meta.json").symlink_to(fake_home / ".kaggle" / "kaggle.json")
    path = make_job(tmp_path / "job", f"run: echo\ndatasets: [{{path: {data}, name: d}}]\n")
    r = orch("submit", str(path))
    assert r.exit_code == 0, r.output
    assert "d/train.csv (dataset) was not bundled" in r.output and "d/meta.json (dataset)" in r.output
    everything = bundled_bytes(orch_home)
    assert b"PRIVATE KEY" not in everything and b"kaggle-secret-key" not in everything and b"1,2" in everything


def test_a_code_symlink_out_of_the_tree_is_skipped_the_same_way(orch, orch_home, tmp_path, fake_home):
    path = make_job(tmp_path / "job", "run: echo\n", {"main.py": ""})
    (path.parent / "train.csv").symlink_to(fake_home / ".ssh" / "id_ed25519")
    (path.parent / "dotssh").symlink_to(fake_home / ".ssh", target_is_directory=True)
    r = orch("submit", str(path))
    assert r.exit_code == 0, r.output
    assert "train.csv was not bundled" in r.output and "dotssh was not bundled" in r.output
    assert b"PRIVATE KEY" not in bundled_bytes(orch_home)


def test_an_in_tree_symlink_is_judged_by_its_target(orch, orch_home, tmp_path):
    path = make_job(tmp_path / "job", "run: echo\n", {"main.py": "", "private/notes.txt": "do not ship",
                                                      ".orchignore": "private/\n", "keys/deploy.txt": KEY})
    (path.parent / "notes.txt").symlink_to("private/notes.txt")  # ignored target: skipped
    (path.parent / "readme.txt").symlink_to("keys/deploy.txt")   # credential content: refused
    r = orch("submit", str(path))
    assert r.exit_code != 0 and "readme.txt" in r.output and "keys/deploy.txt" in r.output
    (path.parent / "keys" / "deploy.txt").unlink()
    (path.parent / "readme.txt").unlink()
    r = orch("submit", str(path))
    assert r.exit_code == 0 and "notes.txt was not bundled" in r.output
    assert b"do not ship" not in bundled_bytes(orch_home)


#: 22 common credential files (name, content); every one must be refused.
CREDENTIAL_FILES = [
    ("kaggle.json", '{"username": "u", "key": "k"}'), ("KAGGLE.JSON", "{}"), (".env", "A=1"),
    (".ssh/id_rsa", KEY), ("id_ed25519", KEY), ("server.pem", "x"), ("credentials.json", "{}"),
    ("token.json", "{}"), (".netrc", "machine x"), (".pgpass", "h:5432:*:u:p"), (".git-credentials",
    "https://me:ghp_tok@github.com\n"), (".aws/credentials", "[default]\naws_secret_access_key = x\n"),
    (".pypirc", "[pypi]\npassword = x\n"), (".npmrc", "//registry.npmjs.org/:_authToken=npm_x\n"),
    ("tls.key", "x"), ("cert.p12", "x"), (".docker/config.json", '{"auths": {}}'),
    ("application_default_credentials.json", "{}"), ("service-account.json", "{}"),
    ("client_secret_123.json", "{}"), (".kube/config", "users: []"), ("access_token", "x"),
]

#: Innocent names, tell-tale content: caught by the content check.
CREDENTIAL_CONTENT = [
    ("config/gcp.json", '{"type": "service_account", "private_key": "x"}'),
    ("deploy/key.txt", KEY), ("ci/npm.cfg", "//r/:_authToken=abc\n"), ("ci/remote.txt", "https://bot:ghp_abc@github.com/x"),
    ("cfg/aws.ini", "[default]\naws_secret_access_key=abc\n"),
]


@pytest.mark.parametrize("name,content", CREDENTIAL_FILES + CREDENTIAL_CONTENT)
def test_credential_files_are_refused_by_name_or_content(orch, orch_home, tmp_path, name, content):
    path = make_job(tmp_path / "job", "run: echo\n", {"main.py": "", name: content})
    r = orch("submit", str(path))
    assert r.exit_code != 0 and name in r.output and "--allow-file" in r.output, r.output
    assert not list(orch_home.glob("bundles/*/manifest.json"))


def test_credentials_in_a_dataset_are_refused_by_content(orch, orch_home, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text(KEY)
    path = make_job(tmp_path / "job", f"run: echo\ndatasets: [{{path: {data}, name: d}}]\n")
    r = orch("submit", str(path))
    assert r.exit_code != 0 and "train.csv" in r.output
    assert not list(orch_home.glob("blobs/data-*.tar"))


def test_git_can_never_be_re_included(orch, orch_home, tmp_path):
    path = make_job(tmp_path / "job", "run: echo\n", {
        "main.py": "", ".orchignore": "!.git/\n!.git/config\n",
        ".git/config": '[remote "origin"]\n\turl = https://me:ghp_token123@github.com/me/repo\n', ".git/HEAD": "ref"})
    r = orch("submit", str(path))
    assert r.exit_code == 0, r.output
    assert names_in_code(orch_home) == [".orchignore", "job.yaml", "main.py"]


def test_gitignore_is_honoured_by_default_and_no_gitignore_opts_out(orch, orch_home, tmp_path):
    path = make_job(tmp_path / "job", "run: echo\n", {"main.py": "", ".gitignore": "scratch.txt\n",
                                                      "scratch.txt": "big"})
    assert orch("submit", str(path)).exit_code == 0
    assert "scratch.txt" not in names_in_code(orch_home)
    for d in orch_home.glob("bundles/*"):
        import shutil
        shutil.rmtree(d)
    assert orch("submit", str(path), "--no-gitignore").exit_code == 0
    assert "scratch.txt" in names_in_code(orch_home)


def test_the_orch_home_and_results_are_never_bundled_even_when_re_included(orch, tmp_path, monkeypatch):
    job_dir = tmp_path / "job"
    home = job_dir / "orch-home"
    monkeypatch.setenv("ORCH_HOME", str(home))
    path = make_job(job_dir, "run: echo\n", {"main.py": "", ".orchignore": "!results/\n!orch-home/\n",
                                             "results/old-1/outputs/x.txt": "fetched"})
    r = orch("submit", str(path), "--json")
    assert r.exit_code == 0, r.output
    names = names_in_code(home)
    assert names == [".orchignore", "job.yaml", "main.py"], names
    assert json.loads(r.output)["id"]


def test_placeholders_in_docs_are_not_credentials_and_the_readme_job_bundles(tmp_path):
    """Docs that show the pattern (`https://user:token@host`, `https://me:<PAT>@host`) are
    not credentials; and the README's main command bundles this repository (its tests,
    whose fixtures hold fake keys on purpose, are left out by the repo's .orchignore)."""
    from orchestrator.bundle import CREDENTIAL_CONTENT, DatasetCache, build
    from orchestrator.spec import load
    from tests.conftest import REPO

    for text in (b"https://user:token@host", b"https://me:<PAT>@github.com", b"https://u:$TOKEN@h"):
        assert CREDENTIAL_CONTENT.search(text) is None, text
    assert CREDENTIAL_CONTENT.search(b"https://me:ghp_a1b2c3@github.com") is not None
    spec = load(REPO / "jobs" / "els-pricer" / "job.yaml")
    bundle = build(spec, tmp_path / "bundles", DatasetCache(tmp_path / "blobs", tmp_path / "index"))
    names = [name for name, _size in bundle.code_files]
    assert "kernels/els/fdm.py" in names and not any(n.startswith("tests/") for n in names)
