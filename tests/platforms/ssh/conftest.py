"""Fixtures of the SSH tests: an SSH key whose sessions a test can kill mid-operation.

The real sshd of ``tests/platforms/conftest.py`` is shared; this adds one more
authorised key whose forced command is ``tests/emulators/sshfault.py``, so only the
test that asks for faults gets them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.emulators import sshfault
from tests.emulators.sshd import SSHD, generate_ed25519


class Faults:
    """The test's handle on sshfault's control directory."""

    def __init__(self, control: Path, key: Path):
        self.control = control
        self.key = key
        control.mkdir(parents=True, exist_ok=True)
        self.set([])

    def set(self, rules: list[dict]) -> None:
        (self.control / "rules.json").write_text(json.dumps(rules))

    def hits(self) -> list[str]:
        try:
            return (self.control / "hits.log").read_text().splitlines()
        except FileNotFoundError:
            return []


@pytest.fixture
def faults(sshd: SSHD, tmp_path: Path):
    """A client key whose SSH sessions die where ``faults.set(rules)`` says."""
    key = generate_ed25519(tmp_path / "fault_key", "orch-test-faults")
    control = tmp_path / "faults"
    handle = Faults(control, key.private)
    authorized = sshd.workdir / "authorized_keys"
    before = authorized.read_text()
    forced = f'command="{sys.executable} {Path(sshfault.__file__).resolve()} {control}",no-pty'
    authorized.write_text(before + f"{forced} {key.public}\n")
    yield handle
    authorized.write_text(before)
