"""`orch ui` as a command: what it prints, Ctrl-C, a port already taken."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

from tests.conftest import orch_process


def test_it_prints_one_url_with_a_token_and_ctrl_c_stops_it(orch_home):
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    try:
        line = proc.stdout.readline()
        assert re.fullmatch(r"orch ui: http://127\.0\.0\.1:\d+/\?token=[\w-]{32}\n", line), line
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "orch ui stopped" in out and "Traceback" not in out


def test_a_port_in_use_is_one_line_naming_the_fix(orch_home):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = orch_process("ui", "--port", str(port), timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert f"--port {port}" in done.stderr and "--port 0" in done.stderr
