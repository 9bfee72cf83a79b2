"""A parameterised notebook through the Kaggle emulator (the real ``kaggle`` client, the
real runner in the emulated kernel)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_job, submit, tick_until
from tests.notebook_helpers import cells_of, code, text_of, write_notebook

pytest.importorskip("nbclient")


@pytest.fixture
def kaggle(config, kaggle_emulator):
    config("""\
        platforms:
          kaggle: {type: kaggle, retry_base: 0.05s, dataset_poll: 0.05s, dataset_wait: 20s}
        """)
    return kaggle_emulator


def test_a_parameterised_notebook_runs_on_kaggle_and_its_executed_notebook_comes_back(kaggle, orch, tmp_path):
    write_notebook(tmp_path / "job" / "train.ipynb", [
        code("LR = 0.1", "parameters"),
        code("import json, os\nprint('lr', LR)\n"
             "json.dump({'lr': LR}, open(os.path.join(os.environ['ORCH_OUTPUT_DIR'], 'metrics.json'), 'w'))"),
    ])
    job_id = submit(orch, make_job(tmp_path / "job", "run: train.ipynb\nparams: {LR: 0.003}\n"
                                                     "resources: {gpu: T4, max_runtime: 10m}\n"))
    app = tick_until(lambda app: app.store.job(job_id).state.terminal, timeout=120, interval=0.1)
    assert app.store.job(job_id).state.value == "SUCCEEDED", app.store.job(job_id).message
    out = tmp_path / "out"
    assert orch("fetch", job_id, "-o", str(out)).exit_code == 0
    cells = cells_of(out / "outputs" / "train.ipynb")
    assert text_of(cells[2]) == "lr 0.003\n"
    assert json.loads((out / "outputs" / "metrics.json").read_text()) == {"lr": 0.003}
