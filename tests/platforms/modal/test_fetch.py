"""Fetching a Modal run's artefacts: a download cut mid-way resumes on a later tick (per
file: the client reads a volume file only from its start), and every file is checked
against the sha256 the sandbox wrote, with the unmodified client against the stand-in."""

from __future__ import annotations

import random

import pytest

from tests.conftest import make_job, submit, tick_until
from tests.platforms.modal.test_modal import settled, state

SIZE = 20 << 20  # three of the client's 8 MiB blocks

BIG = f"""\
import random
open("model.bin", "wb").write(random.Random(7).randbytes({SIZE}))
"""


def big_job(tmp_path):
    return make_job(tmp_path / "big", """\
        name: big
        run: python3 big.py
        outputs: [model.bin]
        resources: {gpu: T4, max_runtime: 5m}
        """, {"big.py": BIG})


def served(standin, suffix: str) -> int:
    return sum(n for path, n in standin.served.items() if path.endswith(suffix))


@pytest.mark.parametrize("fault", ["cut", "corrupt"])
def test_a_fetch_cut_or_corrupted_mid_way_is_finished_on_a_later_tick_and_verified(orch, modal_config, modal_standin,
                                                                                   tmp_path, fault):
    modal_config()
    # cut: more drops than the client's own five tries per block; corrupt: one bad block
    armed = getattr(modal_standin, fault)
    armed["outputs.tar.gz"] = 50 if fault == "cut" else 1
    job_id = submit(orch, big_job(tmp_path))
    tick_until(lambda app: app.store.attempts_of(job_id)[-1].unknown_since is not None
               and armed["outputs.tar.gz"] < (50 if fault == "cut" else 1), timeout=120, what="a fetch that failed")
    att = state(orch, job_id)
    assert att["state"] == "FETCHING", att
    log_bytes = served(modal_standin, "job.log")
    assert log_bytes > 0 and served(modal_standin, "sha256sums") > 0  # fetched before the fault
    armed.clear()
    settled(job_id, timeout=120)
    assert state(orch, job_id)["state"] == "SUCCEEDED", orch("logs", job_id).output
    assert served(modal_standin, "job.log") == log_bytes  # kept from the first try
    tar = served(modal_standin, "outputs.tar.gz")  # cut: never in full before; corrupt: twice
    assert SIZE < tar // (2 if fault == "corrupt" else 1) < SIZE + (1 << 20), tar
    assert orch("fetch", job_id, "-o", str(tmp_path / "out")).exit_code == 0
    got = (tmp_path / "out" / "outputs" / "model.bin").read_bytes()
    assert got == random.Random(7).randbytes(SIZE)


def test_a_small_artefact_is_checked_against_the_sums_too(orch, modal_config, modal_standin, tmp_path):
    modal_config()
    modal_standin.corrupt["job.log"] = 1  # one byte flipped, the length right
    job_id = submit(orch, make_job(tmp_path / "hi", """\
        name: hi
        run: echo hello from the sandbox
        resources: {gpu: T4, max_runtime: 5m}
        """))
    settled(job_id, timeout=120)
    assert state(orch, job_id)["state"] == "SUCCEEDED"
    assert modal_standin.corrupt["job.log"] == 0
    once = len(b"hello from the sandbox\n")
    assert served(modal_standin, "job.log") >= 2 * once  # refused, then fetched again
    assert "hello from the sandbox" in orch("logs", job_id).output
