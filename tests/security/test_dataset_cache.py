"""Issue 16.5: one job cannot poison the per-host dataset cache for the next. Job 1
writes into ``$ORCH_DATA/d/train.csv`` (which is the cached, already-verified copy);
job 2 must still read the original bytes."""

from __future__ import annotations

import os

from orchestrator.states import JobState
from tests.conftest import make_job, submit, tick_until

ORIGINAL = "a,b\n1,2\n"

#: Makes the cached file writable, overwrites it with bytes of the same size, then puts
#: the mtime and the read-only modes back: everything a same-user job can restore.
POISON = """\
name: poison
run: >-
  f=$(readlink -f "$ORCH_DATA/d/train.csv"); d=$(dirname "$f"); cp -p "$f" /tmp/orch-ref-$$;
  chmod u+w "$d" "$f"; printf 'POISON!\\n' > "$f"; touch -r /tmp/orch-ref-$$ "$f"; rm -f /tmp/orch-ref-$$;
  chmod a-w "$f" "$d"; echo wrote
datasets: [{{path: {data}, name: d}}]
"""

READ = """\
name: read
run: cp "$ORCH_DATA/d/train.csv" "$ORCH_OUTPUT_DIR/seen.csv"
datasets: [{{path: {data}, name: d}}]
"""


def run_job(orch, tmp_path, name, text) -> str:
    job_id = submit(orch, make_job(tmp_path / name, text))
    tick_until(lambda app: app.store.job(job_id).state.terminal, what=f"{name} finished")
    return job_id


def test_a_job_cannot_poison_the_cached_dataset_for_the_next(orch, orch_home, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text(ORIGINAL)
    assert len("POISON!\n") == len(ORIGINAL)
    run_job(orch, tmp_path, "warm", READ.format(data=data))  # extracts and seals the cache
    cached = next(orch_home.glob("platforms/local/cache/data/*/train.csv"))
    assert not os.stat(cached).st_mode & 0o222 and not os.stat(cached.parent).st_mode & 0o222  # read-only
    poison = run_job(orch, tmp_path, "poison", POISON.format(data=data))
    assert '"SUCCEEDED"' in orch("status", poison, "--json").output
    assert cached.read_text() == "POISON!\n"  # the attack landed in the cache
    job_id = run_job(orch, tmp_path, "read", READ.format(data=data))
    out = tmp_path / "out"
    assert orch("fetch", job_id, "-o", str(out)).exit_code == 0
    assert (out / "outputs" / "seen.csv").read_text() == ORIGINAL  # the re-check saw it and re-extracted
    assert next(orch_home.glob("platforms/local/cache/data/*/train.csv")).read_text() == ORIGINAL


def test_an_unchanged_cache_is_reused_without_extracting_again(orch, orch_home, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text(ORIGINAL)
    run_job(orch, tmp_path, "one", READ.format(data=data))
    cached = next(orch_home.glob("platforms/local/cache/data/*/train.csv"))
    before = os.stat(cached).st_ino
    job_id = run_job(orch, tmp_path, "two", READ.format(data=data))
    assert f'"{JobState.SUCCEEDED.value}"' in orch("status", job_id, "--json").output
    assert os.stat(cached).st_ino == before  # same inode: linked, not extracted again
