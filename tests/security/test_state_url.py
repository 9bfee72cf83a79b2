"""Issue 16.11: a PostgreSQL password in the state URL never reaches an error message,
in the ``user:pw@host`` form or as ``?password=``. Runs against the real server with a
role that needs a password (scram-sha-256 for that role only)."""

from __future__ import annotations

import pytest

PASSWORD = "hunter2-pg-Secret"


@pytest.fixture(scope="module")
def password_role(pg_server):
    """A role ``pwuser`` that must log in with :data:`PASSWORD` (the others keep trust)."""
    import psycopg

    hba = pg_server.data / "pg_hba.conf"
    line = "host all pwuser 127.0.0.1/32 scram-sha-256\n"
    if line not in hba.read_text():
        hba.write_text(line + hba.read_text())
    with psycopg.connect(f"host=127.0.0.1 port={pg_server.port} user=orch dbname=postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'pwuser'").fetchone():
            conn.execute(f"CREATE ROLE pwuser LOGIN CREATEDB PASSWORD '{PASSWORD}'")
        conn.execute("SELECT pg_reload_conf()")
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'pwdb'").fetchone():
            conn.execute("CREATE DATABASE pwdb OWNER pwuser")
    return f"127.0.0.1:{pg_server.port}"


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_a_wrong_password_is_reported_without_the_password(orch, orch_home, monkeypatch, password_role, form):
    wrong = "wrong-" + PASSWORD
    url = (f"postgresql+psycopg://pwuser:{wrong}@{password_role}/postgres" if form == "userinfo"
           else f"postgresql+psycopg://pwuser@{password_role}/postgres?password={wrong}")
    monkeypatch.setenv("ORCH_STATE_URL", url)
    r = orch("plan")
    assert r.exit_code != 0 and "password authentication failed" in r.output, r.output
    assert wrong not in r.output and PASSWORD not in r.output
    assert "***" in r.output


def test_the_right_password_in_the_query_connects(orch, orch_home, monkeypatch, password_role):
    monkeypatch.setenv("ORCH_STATE_URL", f"postgresql+psycopg://pwuser@{password_role}/pwdb?password={PASSWORD}")
    r = orch("plan")
    assert r.exit_code == 0, r.output
