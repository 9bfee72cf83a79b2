"""`orch notify test` / `orch notify log`, per-job routing from job.yaml, and config
mistakes reported in one line."""

from __future__ import annotations

import json

from tests.conftest import make_job, submit, tick_until
from tests.notify.conftest import SECRET


def two_channels(config, receiver, **ops):
    config(platforms={"local": {"type": "local", "max_concurrent": 4}}, notify={"channels": {
        "ops": {"type": "webhook", "url": f"{receiver.url}/hook", "secret_env": "HOOK_SECRET", **ops},
        "pager": {"type": "webhook", "url": f"{receiver.url}/pager", "secret_env": "HOOK_SECRET",
                  "events": ["job.failed"], "default": False}}})


def test_notify_test_sends_a_signed_sample_and_notify_log_lists_it(orch, config, receiver, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    two_channels(config, receiver)
    r = orch("notify", "test", "ops")
    assert r.exit_code == 0, r.output
    assert "✓ ops: sent" in r.output
    (event,) = receiver.events()
    assert event["test"] is True and event["type"] == "job.succeeded"
    r = orch("notify", "log", "--json")
    doc = json.loads(r.output)
    assert doc["pending"] == 0 and doc["deliveries"][0]["channel"] == "ops" and doc["deliveries"][0]["ok"]


def test_notify_test_reports_a_failing_channel_and_exits_1(orch, config, receiver, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    two_channels(config, receiver)
    receiver.fail_with = 404
    r = orch("notify", "test", "ops")
    assert r.exit_code == 1 and "✗ ops: ops: HTTP 404 from 127.0.0.1" in r.output
    assert "failed" in orch("notify", "log").output
    r = orch("notify", "test", "nosuch")
    assert r.exit_code == 1 and "no notify channel named 'nosuch'; configured: ops, pager" in r.output


def test_a_channel_without_its_secret_in_the_environment_says_which_variable(orch, config, receiver, monkeypatch):
    monkeypatch.delenv("HOOK_SECRET", raising=False)
    two_channels(config, receiver)
    r = orch("notify", "test", "ops")
    assert r.exit_code == 1 and "environment variable HOOK_SECRET is not set" in r.output
    assert receiver.requests == []


def test_a_job_adds_an_opt_in_channel_or_silences_them_all(orch, config, receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    two_channels(config, receiver)
    paged = submit(orch, make_job(tmp_path / "a", "name: paged\nnotify: [pager]\nrun: exit 1\n"))
    quiet = submit(orch, make_job(tmp_path / "b", "name: quiet\nnotify: false\nrun: exit 1\n"))
    plain = submit(orch, make_job(tmp_path / "c", "name: plain\nrun: exit 1\n"))
    tick_until(lambda app: all(app.store.job(j).state.terminal for j in (paged, quiet, plain)), what="jobs end")
    assert sorted(e["job"]["name"] for e in receiver.events("/hook")) == ["paged", "plain"]
    assert [e["job"]["name"] for e in receiver.events("/pager")] == ["paged"]


def test_config_mistakes_in_notify_are_one_line_naming_the_field(orch, config):
    config("""\
        notify:
          channels:
            team: {type: slack, url: "https://hooks.slack.com/services/T/B/X"}
        """)
    r = orch("status")
    assert r.exit_code == 2 and "config.yaml:3" in r.output and "url" in r.output and "Traceback" not in r.output
    config("""\
        notify:
          channels:
            ops: {type: webhook, url: "https://example.org/h", events: [job.finished]}
        """)
    r = orch("status")
    assert r.exit_code == 2 and "unknown event 'job.finished'" in r.output
    config("""\
        notify:
          channels:
            ops: {type: webhook, url: "https://example.org/h", secret_env: "abc def"}
        """)
    r = orch("status")
    assert r.exit_code == 2 and "give the NAME of the variable" in r.output


def test_a_job_naming_an_unknown_channel_is_refused_at_submit(orch, config, receiver, tmp_path):
    two_channels(config, receiver)
    r = orch("submit", str(make_job(tmp_path / "j", "name: j\nnotify: [pagr]\nrun: 'true'\n")))
    assert r.exit_code == 2
    assert "job.yaml:2: notify: unknown channel 'pagr' (configured in config.yaml notify.channels: ops, pager)" \
        in r.output.replace("\n", "")
    assert "0 job" in orch("status").output or "no jobs" in orch("status").output.lower()
