"""In team mode (a shared PostgreSQL state) the dashboard shows every member's jobs, and
the user filter narrows to one member's."""

from __future__ import annotations

import pytest

from orchestrator.app import App
from orchestrator.ui import server
from tests.conftest import make_job, submit

PORT = 48214


@pytest.fixture
def state_backend() -> str:
    return "postgres"


def test_the_queue_shows_the_whole_team_and_filters_by_member(orch_home, orch, config, monkeypatch, tmp_path):
    config(platforms={"laptop": {"type": "local", "max_concurrent": 1}})
    job = make_job(tmp_path / "j", """
        name: team-job
        run: "true"
        resources: {gpu: [none], max_runtime: 5m}
    """)
    ids = {}
    for member in ("alice", "bob"):
        monkeypatch.setenv("ORCH_USER", member)
        ids[member] = submit(orch, job)
    app = App.open()
    try:
        assert app.store.shared
        client = server.create(app, "tok", PORT).test_client()
        client.set_cookie(f"orch_ui_{PORT}", "tok", domain="127.0.0.1")
        html = client.get("/", base_url=f"http://127.0.0.1:{PORT}").get_data(as_text=True)
        assert ids["alice"][:8] in html and ids["bob"][:8] in html
        assert '<option value="alice"' in html and '<option value="bob"' in html
        html = client.get("/?user=bob", base_url=f"http://127.0.0.1:{PORT}").get_data(as_text=True)
        assert ids["bob"][:8] in html and ids["alice"][:8] not in html
    finally:
        app.close()
