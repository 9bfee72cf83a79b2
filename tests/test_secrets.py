"""Secrets reach the job's environment and nowhere else: not the DB, the log or the bundle."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.states import JobState
from tests.conftest import backends, make_job, open_app, submit, tick_until

#: The core end-to-end suite must pass on PostgreSQL (team mode) as well as SQLite.
state_backend = backends

SECRET = "s3cr3t-Value-8c1f2a"


def db_dump(app) -> str:
    from sqlalchemy import select

    from orchestrator.schema import metadata

    with app.store.engine.connect() as conn:
        return "\n".join(repr(tuple(row)) for table in metadata.sorted_tables for row in conn.execute(select(table)))


def all_bytes_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def test_secret_values_never_reach_db_logs_or_bundle(orch, orch_home, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TOKEN", SECRET)
    path = make_job(tmp_path / "job", """\
        name: uses-secret
        secrets: [MY_TOKEN]
        run: >-
          echo "token is $MY_TOKEN";
          python -c "import os; print('split', os.environ['MY_TOKEN'][:6], end=''); print(os.environ['MY_TOKEN'][6:])";
          python -c "import os,hashlib; open(os.environ['ORCH_OUTPUT_DIR']+'/seen.txt','w').write(hashlib.sha256(os.environ['MY_TOKEN'].encode()).hexdigest())"
        """)
    job_id = submit(orch, path)
    app = tick_until(lambda app: app.store.job(job_id).state.terminal)
    assert app.store.job(job_id).state == JobState.SUCCEEDED
    out = tmp_path / "out"
    orch("fetch", job_id, "-o", str(out))
    import hashlib

    assert (out / "outputs" / "seen.txt").read_text() == hashlib.sha256(SECRET.encode()).hexdigest()  # the job saw it
    log = (out / "job.log").read_text()
    assert "token is ***" in log and "split ***" in log and SECRET not in log
    everything = all_bytes_under(orch_home)  # SQLite (+WAL), bundles, blobs, results, attempt dirs
    assert SECRET.encode() not in everything
    assert SECRET not in db_dump(app)  # every row of every table, on either backend
    assert "MY_TOKEN" in json.dumps(app.store.job(job_id).spec)  # the name is kept, the value is not


def test_job_waits_with_a_reason_when_the_secret_is_not_set(orch, orch_home, tmp_path, monkeypatch):
    monkeypatch.delenv("ABSENT_TOKEN", raising=False)
    path = make_job(tmp_path / "job", "name: needs\nsecrets: [ABSENT_TOKEN]\nrun: echo\n")
    job_id = submit(orch, path)
    orch("tick")
    app = open_app()
    try:
        job = app.store.job(job_id)
        assert job.state == JobState.QUEUED
        assert "ABSENT_TOKEN is not set" in job.message
    finally:
        app.close()
    monkeypatch.setenv("ABSENT_TOKEN", "now-set-123")
    tick_until(lambda app: app.store.job(job_id).state == JobState.SUCCEEDED)
