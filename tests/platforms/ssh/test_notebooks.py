"""A parameterised notebook over the real sshd: the executor travels in the bundle and the
executed notebook comes back through the ssh platform's fetch."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_job, submit
from tests.notebook_helpers import cells_of, code, text_of, write_notebook
from tests.platforms.conftest import DONE, fetched, tick_until_state

pytest.importorskip("nbclient")


def test_a_parameterised_notebook_runs_over_ssh_and_a_failing_one_says_which_cell(orch, config, ssh_platform, tmp_path):
    config(platforms={"lab": ssh_platform()})
    write_notebook(tmp_path / "job" / "train.ipynb", [
        code("STEPS = 1", "parameters"),
        code("print('steps', STEPS * 10)"),
        code("assert STEPS < 3, 'too many steps'"),
    ])
    good = submit(orch, make_job(tmp_path / "job", "run: train.ipynb STEPS=2\nplatforms: [lab]\n"))
    job = tick_until_state(orch, good, DONE, timeout=120)
    assert job["state"] == "SUCCEEDED", job["message"]
    cells = cells_of(fetched(orch, good, tmp_path / "out") / "outputs" / "train.ipynb")
    assert text_of(cells[2]) == "steps 20\n"

    bad = submit(orch, make_job(tmp_path / "job", "run: train.ipynb STEPS=5\nplatforms: [lab]\n"))
    job = tick_until_state(orch, bad, DONE, timeout=120)
    assert job["state"] == "FAILED"
    assert job["message"] == "train.ipynb cell 4, line 1 `assert STEPS < 3, 'too many steps'`: AssertionError: too many steps"
    out = fetched(orch, bad, tmp_path / "out-bad")
    assert json.loads((out / "result.json").read_text())["failure"]["cell"] == 4
    assert cells_of(out / "outputs" / "train.ipynb")[3]["outputs"][0]["ename"] == "AssertionError"
