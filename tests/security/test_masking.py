"""Issue 16.8: a job that prints its secret base64-, URL-, hex-encoded or reversed
does not get it into ``job.log``; what masking cannot promise is documented."""

from __future__ import annotations

import base64
import urllib.parse

from orchestrator.states import JobState
from tests.conftest import make_job, submit, tick_until

SECRET = "s3cr3t/Value+8c1f2a&x"

PRINT_ENCODED = """\
name: encodes
secrets: [MY_TOKEN]
run: |
  printf %s "$MY_TOKEN" | base64
  echo "x$MY_TOKEN" | base64
  echo "xy$MY_TOKEN" | base64 -w0; echo
  python -c "import os, base64, urllib.parse as u; t = os.environ['MY_TOKEN'];
  print(base64.urlsafe_b64encode(t.encode()).decode()); print(t.encode().hex()); print(t.encode().hex().upper());
  print(u.quote(t, safe='')); print(u.quote_plus(t)); print(t[::-1])"
"""


def test_common_encodings_of_a_secret_are_masked(orch, orch_home, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TOKEN", SECRET)
    job_id = submit(orch, make_job(tmp_path / "job", PRINT_ENCODED))
    tick_until(lambda app: app.store.job(job_id).state.terminal)
    out = tmp_path / "out"
    orch("fetch", job_id, "-o", str(out))
    log = (out / "job.log").read_text()
    raw = SECRET.encode()
    leaked = {
        "base64": base64.b64encode(raw).decode()[:24], "base64 after 1 byte": base64.b64encode(b"x" + raw).decode()[4:24],
        "base64 after 2 bytes": base64.b64encode(b"xy" + raw).decode()[4:24],
        "urlsafe base64": base64.urlsafe_b64encode(raw).decode()[:24], "hex": raw.hex(), "HEX": raw.hex().upper(),
        "url-encoded": urllib.parse.quote(SECRET, safe=""), "quote_plus": urllib.parse.quote_plus(SECRET),
        "reversed": SECRET[::-1], "plain": SECRET,
    }
    assert not {k: v for k, v in leaked.items() if v in log}, log
    assert log.count("***") >= 9
    app_ok = orch("status", job_id, "--json").output
    assert JobState.SUCCEEDED.value in app_ok
