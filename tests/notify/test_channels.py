"""Each channel's payload in its peer's documented format, sent to a real receiver:
Slack's incoming-webhook body, Discord's execute-webhook body, ntfy's publish headers,
a mail through an SMTP server with STARTTLS and AUTH, and a local command."""

from __future__ import annotations

import json
import sys

from orchestrator.notify import channels, config as cfg
from orchestrator.notify.events import new_event
from tests.notify.conftest import SMTP_PASSWORD, SMTP_USER


def failed_event():
    return new_event("job.failed", {
        "job": {"id": "a" * 32, "name": "pricer <@everyone>", "state": "FAILED", "platform": "kaggle",
                "attempt": 2, "sweep": None, "submitted_by": "me"},
        "reason": "exit code 3 & more", "log_tail": ["Traceback (most recent call last):", "ValueError: \x1b[31mbad"]})


def channel(kind: str, **settings):
    model = {"webhook": cfg.WebhookChannel, "ntfy": cfg.NtfyChannel, "slack": cfg.SlackChannel,
             "discord": cfg.DiscordChannel, "email": cfg.EmailChannel, "command": cfg.CommandChannel}[kind]
    return channels.build("c", model.model_validate({"type": kind, **settings}))


def test_slack_gets_an_incoming_webhook_body_with_its_characters_escaped(receiver, monkeypatch):
    monkeypatch.setenv("SLACK_URL", f"{receiver.url}/slack/T000/B000/XXXX")
    channel("slack", url_env="SLACK_URL").send(failed_event())
    (req,) = receiver.requests
    body = json.loads(req["body"])
    assert req["headers"]["Content-Type"] == "application/json"
    assert set(body) == {"text", "blocks"}
    (block,) = body["blocks"]
    assert block["type"] == "section" and block["text"]["type"] == "mrkdwn"
    assert "&lt;@everyone&gt;" in block["text"]["text"] and "&amp; more" in block["text"]["text"]
    assert "\x1b" not in block["text"]["text"] and len(block["text"]["text"]) <= 3000


def test_discord_gets_an_embed_and_can_never_mention_anyone(receiver, monkeypatch):
    monkeypatch.setenv("DISCORD_URL", f"{receiver.url}/discord/123/abc")
    event = failed_event()
    channel("discord", url_env="DISCORD_URL").send(event)
    body = json.loads(receiver.requests[0]["body"])
    assert body["allowed_mentions"] == {"parse": []}
    assert len(body["content"]) <= 2000
    (embed,) = body["embeds"]
    assert len(embed["title"]) <= 256 and len(embed["description"]) <= 4096
    assert embed["timestamp"] == event["at"] and isinstance(embed["color"], int)
    assert "ValueError: bad" in embed["description"].replace("[31m", "")


def test_ntfy_gets_the_message_with_title_priority_and_tags_headers(receiver, monkeypatch):
    monkeypatch.setenv("NTFY_TOKEN", "tk_abcdef")
    channel("ntfy", url=f"{receiver.url}/orch-alerts", token_env="NTFY_TOKEN").send(failed_event())
    channel("ntfy", url=f"{receiver.url}/orch-alerts", priorities={"job.succeeded": "min"}).send(
        new_event("job.succeeded", {"job": {"id": "b" * 32, "name": "ok", "platform": "local"}}))
    first, second = receiver.requests
    assert first["path"] == "/orch-alerts"
    assert first["headers"]["Priority"] == "4" and first["headers"]["Tags"] == "x"
    assert first["headers"]["Title"].startswith("orch: pricer") and "failed" in first["headers"]["Title"]
    assert first["headers"]["Authorization"] == "Bearer tk_abcdef"
    assert b"reason: exit code 3" in first["body"]
    assert second["headers"]["Priority"] == "1" and "Authorization" not in second["headers"]


def test_a_webhook_signature_covers_timestamp_and_body(receiver, monkeypatch):
    from tests.notify.conftest import SECRET

    monkeypatch.setenv("HOOK_SECRET", SECRET)
    event = failed_event()
    channel("webhook", url=f"{receiver.url}/hook", secret_env="HOOK_SECRET").send(event)
    (got,) = receiver.events()  # verifies X-Orch-Signature as a receiver would
    assert got == event


def test_email_goes_through_starttls_and_auth_with_the_password_from_the_environment(smtp_server, monkeypatch):
    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
    channel("email", host="127.0.0.1", port=smtp_server.port, ca_file=str(smtp_server.ca_file), username=SMTP_USER,
            password_env="SMTP_PASSWORD", **{"from": "orch@example.org"}, to="me@example.org").send(failed_event())
    (msg,) = smtp_server.messages
    assert msg["tls"] and msg["to"] == ["me@example.org"] and msg["from"] == "orch@example.org"
    assert "Subject: orch: pricer <@everyone> (aaaaaaaa) failed" in msg["data"]
    assert "reason: exit code 3 & more" in msg["data"] and SMTP_PASSWORD not in msg["data"]


def test_email_with_a_wrong_password_is_a_send_error_naming_the_server(smtp_server, monkeypatch):
    import pytest

    monkeypatch.setenv("SMTP_PASSWORD", "wrong")
    mail = channel("email", host="127.0.0.1", port=smtp_server.port, ca_file=str(smtp_server.ca_file),
                   username=SMTP_USER, password_env="SMTP_PASSWORD", **{"from": "orch@example.org"}, to="me@example.org")
    with pytest.raises(channels.SendError, match=r"127.0.0.1:\d+ refused: 535"):
        mail.send(failed_event())
    assert smtp_server.messages == []


def test_a_command_gets_the_event_json_on_stdin(tmp_path):
    out = tmp_path / "got.json"
    script = tmp_path / "hook.py"
    script.write_text(f"import sys, os\nopen({str(out)!r}, 'w').write(os.environ['ORCH_EVENT_ID'] + '\\n' + sys.stdin.read())\n")
    event = failed_event()
    channel("command", command=[sys.executable, str(script)]).send(event)
    first, rest = out.read_text().split("\n", 1)
    assert first == event["id"] and json.loads(rest) == event


def test_a_failing_command_is_transient_and_says_what_it_printed(tmp_path):
    import pytest

    from orchestrator.errors import TransientError

    with pytest.raises(TransientError, match="exited 2: no route"):
        channel("command", command=f"{sys.executable} -c \"import sys; print('no route'); sys.exit(2)\"").send(
            failed_event())


def test_a_title_is_one_line_whatever_the_remote_wrote(receiver):
    event = new_event("quota.low", {"quota": {"platform": "kaggle\r\nX-Injected: 1", "left_percent": 5}})
    channel("ntfy", url=f"{receiver.url}/t").send(event)
    (req,) = receiver.requests
    assert "X-Injected" not in req["headers"] and "\n" not in req["headers"]["Title"]
