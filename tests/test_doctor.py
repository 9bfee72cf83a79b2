"""`orch doctor`: one checklist with a fix per problem, --json, exit 0 unless something is ✗."""

from __future__ import annotations

import json
import time

from sqlalchemy import update

from orchestrator.app import App
from orchestrator.schema import jobs
from tests.conftest import make_job, submit


def checks(orch) -> tuple[int, dict[str, dict]]:
    r = orch("doctor", "--json")
    doc = json.loads(r.output)
    assert doc["ok"] == (r.exit_code == 0)
    return r.exit_code, {c["name"]: c for c in doc["checks"]}


def test_a_fresh_home_passes_with_warnings_that_say_how_to_fix_them(orch, orch_home):
    code, by = checks(orch)
    assert code == 0
    assert by["config"]["status"] == "ok" and by["state"]["status"] == "ok" and by["disk"]["status"] == "ok"
    assert by["last tick"]["status"] == "warn" and by["last tick"]["fix"] == "orch tick"
    assert by["notifications"]["status"] == "warn" and "docs/notifications.md" in by["notifications"]["fix"]
    assert orch("tick", "--quiet").exit_code == 0
    _, by = checks(orch)
    assert by["last tick"]["status"] == "ok" and "ago" in by["last tick"]["detail"]
    text = orch("doctor").output
    assert "✓ state: state database intact" in text and "! notifications:" in text and "    fix: " in text


def test_a_config_that_does_not_parse_is_the_one_failure_shown(orch, config):
    config("platforms:\n  lab: {type: ssh}\n")
    r = orch("doctor")
    assert r.exit_code == 1
    assert r.output.startswith("✗ config: ") and "config.yaml:2" in r.output and "Traceback" not in r.output


def test_a_platform_whose_credentials_are_missing_fails_with_its_fix(orch, config, tmp_path):
    config(platforms={"lab": {"type": "ssh", "host": "127.0.0.1", "port": 1, "user": "me",
                              "key": str(tmp_path / "no-such-key")}})
    r = orch("doctor", "--json")
    assert r.exit_code == 1
    lab = [c for c in json.loads(r.output)["checks"] if c["name"] == "platform lab"]
    assert all(c["status"] == "fail" and c["fix"] for c in lab)
    key = next(c for c in lab if "no-such-key" in c["detail"])
    pin = next(c for c in lab if "not pinned" in c["detail"])
    assert pin["fix"] == "orch ssh trust lab", pin
    assert key["fix"]


def test_stuck_jobs_and_a_queue_bigger_than_the_quota_are_warnings(orch, config, tmp_path):
    config(platforms={"box": {"type": "local", "gpu": "T4", "max_concurrent": 1,
                              "budget": {"unit": "gpu_hours", "limit": 3, "window": "weekly", "reset": "mon 00:00"}}})
    ids = [submit(orch, make_job(tmp_path / f"j{i}", f"name: big{i}\nresources: {{gpu: T4, max_runtime: 2h}}\n"
                                                     "run: 'true'\n")) for i in range(2)]
    app = App.open()
    try:
        with app.store.transaction() as tx:
            tx.conn.execute(update(jobs).where(jobs.c.id == ids[0]).values(updated_at=time.time() - 2 * 86400))
    finally:
        app.close()
    code, by = checks(orch)
    assert code == 0
    stuck = by[f"job {ids[0][:8]}"]
    assert stuck["status"] == "warn" and "has waited 2d" in stuck["detail"] and "orch plan" in stuck["fix"]
    forecast = by["quota box"]
    assert forecast["status"] == "warn"
    assert "the queue wants 4.0 GPU h, 3.0 GPU h left" in forecast["detail"] and "resets" in forecast["detail"]


def test_a_drive_token_is_dated_and_its_testing_expiry_shown(orch_home, config, tmp_path):
    from orchestrator.logins import TESTING_TOKEN_S, consent_file, expiries

    (tmp_path / "client.json").write_text("{}")
    config(platforms={"gdrive": {"type": "colab_drive", "credentials": str(tmp_path / "client.json"), "tier": "pro"}})
    app = App.open()
    try:
        (missing,) = expiries(app)
        assert missing.expires_at == 0.0 and missing.fix == "orch auth drive gdrive"
        token = orch_home / "platforms" / "gdrive" / "token.json"
        token.parent.mkdir(parents=True)
        token.write_text("{}")
        consent_file(token).write_text(f"{time.time() - 6 * 86400}")
        (dated,) = expiries(app)
        assert dated.if_testing and abs(dated.expires_at - (time.time() - 6 * 86400 + TESTING_TOKEN_S)) < 5
        assert 5.9 < dated.age_s / 86400 < 6.1
    finally:
        app.close()
