"""The dashboard's server without a browser: the token, the host check, escaping, files,
filters and pages, through Flask's test client on the shared dashboard home."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.app import App
from orchestrator.ui import server

PORT = 48213
TOKEN = "t0ken-for-tests"


@pytest.fixture(scope="module")
def app(dashboard):
    app = App.open()
    yield app
    app.close()


@pytest.fixture
def client(app):
    web = server.create(app, TOKEN, PORT)
    c = web.test_client()
    c.set_cookie(f"orch_ui_{PORT}", TOKEN, domain="127.0.0.1")
    return c


def get(client, path: str, **kw):
    return client.get(path, base_url=f"http://127.0.0.1:{PORT}", **kw)


def test_without_the_token_every_page_is_refused(app):
    bare = server.create(app, TOKEN, PORT).test_client()
    for path in ("/", "/quota", "/platforms", "/static/orch.css", "/nothing"):
        resp = bare.get(path, base_url=f"http://127.0.0.1:{PORT}")
        assert resp.status_code == 403, path
        assert b"orch ui" in resp.data and b"token" in resp.data


def test_a_wrong_token_is_refused_and_the_right_one_sets_a_cookie_and_leaves_the_url(app):
    bare = server.create(app, TOKEN, PORT).test_client()
    assert bare.get("/?token=nope", base_url=f"http://127.0.0.1:{PORT}").status_code == 403
    resp = bare.get(f"/quota?token={TOKEN}", base_url=f"http://127.0.0.1:{PORT}")
    assert resp.status_code == 302 and resp.headers["Location"] == "/quota"
    cookie = resp.headers["Set-Cookie"]
    assert f"orch_ui_{PORT}={TOKEN}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert bare.get("/quota", base_url=f"http://127.0.0.1:{PORT}").status_code == 200


def test_another_host_name_is_refused_even_with_the_token(client):
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 still says Host: evil.example
    resp = client.get(f"/?token={TOKEN}", base_url=f"http://evil.example:{PORT}")
    assert resp.status_code == 403
    assert client.get(f"/?token={TOKEN}", base_url=f"http://localhost:{PORT}").status_code == 302


def test_pages_carry_a_strict_content_security_policy(client):
    resp = get(client, "/")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"


def test_queue_lists_every_state_with_its_wait_reason(client, dashboard):
    html = get(client, "/").get_data(as_text=True)
    for state in ("QUEUED", "SUBMITTING", "PENDING", "RUNNING", "UNKNOWN", "FETCHING", "SUCCEEDED", "FAILED",
                  "LOST", "CANCELLED"):
        assert f'data-state="{state}"' in html, state
    assert dashboard.ids["queued"][:8] in html
    assert "laptop" in html and "lr-sweep" in html


def test_text_from_a_job_is_escaped_and_stripped_of_controls(client, dashboard):
    for path in ("/", f"/jobs/{dashboard.ids['lost']}"):
        html = get(client, path).get_data(as_text=True)
        assert "<img src=x" not in html and "<script>alert" not in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html
        assert "\x1b" not in html


def test_filters_narrow_the_queue(client, dashboard):
    html = get(client, "/?state=FAILED").get_data(as_text=True)
    assert dashboard.ids["failed"][:8] in html and dashboard.ids["els"][:8] not in html
    html = get(client, "/?platform=laptop").get_data(as_text=True)
    assert dashboard.ids["running"][:8] in html and dashboard.ids["els"][:8] not in html
    html = get(client, f"/?sweep={dashboard.sweep_id[:8]}").get_data(as_text=True)
    assert html.count('class="job"') == 2
    html = get(client, "/?user=nobody-here").get_data(as_text=True)
    assert "no jobs match" in html
    assert get(client, "/?state=<bogus>&page=x").status_code == 200  # bad filters are dropped


def test_job_page_shows_attempts_across_platforms_with_their_events(client, dashboard):
    html = get(client, f"/jobs/{dashboard.ids['lost']}").get_data(as_text=True)
    assert "kaggle → colab" in html
    assert html.count('class="attempt"') == 2
    assert "placed on kaggle: est. 12m on T4" in html and "colab lost the run" in html
    assert "s-checkpointed" in html and "checkpointed; the next segment is queued" in html


def test_job_page_shows_result_fields_and_the_plot_inline(client, dashboard):
    html = get(client, f"/jobs/{dashboard.ids['els']}").get_data(as_text=True)
    assert "exit_code" in html and "els_pricer.png" in html and "results.json" in html
    src = f"/jobs/{dashboard.ids['els']}/files/outputs/els_pricer.png"
    assert f'<img src="{src}"' in html
    img = get(client, src)
    assert img.status_code == 200 and img.mimetype == "image/png" and img.data[:4] == b"\x89PNG"


def test_html_and_svg_outputs_are_downloads_never_rendered(client, dashboard):
    for name in ("report.html", "picture.svg"):
        resp = get(client, f"/jobs/{dashboard.ids['failed']}/files/outputs/{name}")
        assert resp.status_code == 200, name
        assert resp.mimetype == "application/octet-stream"
        assert resp.headers["Content-Disposition"].startswith("attachment")


def test_files_outside_the_results_are_not_served(client, dashboard):
    job = dashboard.ids["els"]
    for rel in ("../../config.yaml", "..%2F..%2Fconfig.yaml", "outputs/../../../state.db", "/etc/passwd", "outputs"):
        assert get(client, f"/jobs/{job}/files/{rel}", follow_redirects=True).status_code == 404, rel
    assert get(client, "/jobs/../../etc/passwd").status_code == 404
    assert get(client, "/jobs/" + "0" * 32).status_code == 404


def test_log_endpoint_gives_the_tail_without_controls(client, dashboard):
    doc = get(client, f"/jobs/{dashboard.ids['failed']}/log").get_json()
    assert doc["found"] and "<script>alert('note')</script>" in doc["text"]  # JSON: the page sets textContent
    assert "\x1b" not in doc["text"] and not doc["active"]
    running = get(client, f"/jobs/{dashboard.ids['running']}/log").get_json()
    assert "epoch 1" in running["text"] and running["active"]


def test_quota_page_shows_the_budget_the_reset_and_the_days(client):
    html = get(client, "/quota").get_data(as_text=True)
    assert 'id="quota-lab"' in html and "of 30 GPU h" in html and "data-until=" in html
    assert html.count('class="day"') == 2 * 28
    assert "total 13.5" in html  # 2.5 + 4 + 1 + 6 GPU hours charged in the last 28 days


def test_platforms_page_shows_each_platform(client):
    html = get(client, "/platforms").get_data(as_text=True)
    assert 'data-name="laptop"' in html and 'data-name="lab"' in html
    assert "1/1" in html


def test_platforms_page_shows_the_doctor_checklist_where_orch_has_one(client):
    html = get(client, "/platforms").get_data(as_text=True)
    if not (Path(server.__file__).resolve().parents[1] / "doctor.py").is_file():  # before issue 19
        assert "this orch has no <code>orch doctor</code>" in html
        return
    assert 'data-check="config"' in html and 'data-check="state"' in html


def test_a_refresh_returns_only_the_live_part(client):
    html = get(client, "/", headers={"X-Orch-Partial": "1"}).get_data(as_text=True)
    assert "<html" not in html and 'class="jobs"' in html
