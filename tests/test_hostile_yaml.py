"""Hostile YAML: alias bombs, recursive aliases and deep nesting are refused while loading,
in one line with exit 2, under a memory limit, and the queue survives them."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO, make_job, orch_process, write_config

BROKEN = Path(__file__).parent / "specs" / "broken"
MEMORY_LIMIT = 1 << 30  # 1 GiB: a billion-laughs load without caps needs several


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def test_every_broken_spec_loads_to_one_line_under_a_memory_limit():
    script = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from orchestrator import spec
        from orchestrator.errors import SpecError
        out = {}
        for path in sorted(Path(sys.argv[1]).glob("*.yaml")):
            try:
                spec.load(path)
                out[path.stem] = None
            except SpecError as exc:
                out[path.stem] = str(exc)
        print(json.dumps(out))
    """)
    r = subprocess.run([sys.executable, "-c", script, str(BROKEN)], capture_output=True, text=True,
                       timeout=60, preexec_fn=_limit_memory, cwd=REPO)
    assert r.returncode == 0, r.stderr
    messages = json.loads(r.stdout)
    assert messages and all(m and "\n" not in m for m in messages.values()), messages


def test_an_alias_bomb_in_config_yaml_is_one_line_for_every_command_and_the_queue_survives(orch_home, tmp_path):
    job = make_job(tmp_path / "job", "run: 'true'\n")
    queued = orch_process("submit", str(job), "--json")
    assert queued.returncode == 0, queued.stderr
    good = (orch_home / "config.yaml").read_text() if (orch_home / "config.yaml").exists() else None
    write_config(orch_home, (BROKEN / "42-alias-bomb.yaml").read_text().replace("run: echo\n", ""))
    for args in (("status",), ("plan",), ("submit", str(job))):
        r = subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                           timeout=60, preexec_fn=_limit_memory)
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1, (args, r.stdout, r.stderr)
        assert "expands to more than" in lines[0] and "Traceback" not in lines[0]
    if good is None:
        (orch_home / "config.yaml").unlink()
    else:
        write_config(orch_home, good)
    listed = json.loads(orch_process("status", "--json").stdout)
    assert [j["id"] for j in listed] == [json.loads(queued.stdout)["id"]]


def test_deep_nesting_in_config_yaml_is_refused_with_its_line(orch_home):
    write_config(orch_home, "platforms:\n  local: {type: local}\nx: " + "[" * 3000 + "]" * 3000 + "\n")
    r = orch_process("status")
    assert r.returncode == 2 and "config.yaml:3: nested more than 64 levels deep" in r.stderr + r.stdout
