"""The example jobs jobs/els-pricer and jobs/gpu-probe, run the way the runner runs them."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")  # the GPU check machine has only cupy, numpy and pytest

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "jobs"


def run_job_command(command: list[str], out: Path | None, cwd: Path = ROOT, extra_path: str | None = None):
    """Run like the runner: code dir on PYTHONPATH, cwd the code dir, ORCH_OUTPUT_DIR set."""
    env = {k: v for k, v in os.environ.items() if k not in ("ORCH_OUTPUT_DIR", "ORCH_DEVICE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, str(ROOT)]))
    env["ORCH_DEVICE"] = "cpu"
    if out is not None:
        env["ORCH_OUTPUT_DIR"] = str(out)
    if command[0] == "python":
        command = [sys.executable, *command[1:]]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["els-pricer", "gpu-probe"])
def test_job_specs_have_the_shape_the_orchestrator_expects(name):
    spec = yaml.safe_load((JOBS / name / "job.yaml").read_text())
    assert spec["name"] == name and spec["code"] == "../.."
    assert (JOBS / name / spec["code"]).resolve() == ROOT
    # a GPU when a platform has one free, else the CPU (so the README's command runs anywhere)
    assert spec["resources"]["gpu"] == ["any", "none"] and spec["run"].startswith("python ")


def test_els_pricer_job_writes_results_and_a_plot(tmp_path):
    spec = yaml.safe_load((JOBS / "els-pricer" / "job.yaml").read_text())
    command = shlex.split(spec["run"])
    command[command.index("--grids") + 1] = "40x40x80,60x60x120"  # the job's own grids take ~1 s more
    run = run_job_command(command, tmp_path)
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["n1"], r["nt"]) for r in results["results"]] == [(40, 80), (60, 120)]
    assert all(90 < r["price"] < 100 and r["device"] == "cpu" for r in results["results"])
    assert (tmp_path / "els_pricer.png").stat().st_size > 1000


def test_els_pricer_job_compares_with_the_cpu_on_request(tmp_path):
    # On a GPU this is the default; here it runs cpu against cpu, which exercises the same plot.
    run = run_job_command(["python", "jobs/els-pricer/price.py", "--grids", "30x30x60", "--compare-cpu", "yes"], tmp_path)
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["cpu_results"][0]["n1"] == 30 and results["results"][0]["speedup_vs_cpu"] > 0
    assert "x speed-up" in run.stdout and (tmp_path / "els_pricer.png").stat().st_size > 1000


def test_els_pricer_job_still_writes_results_without_matplotlib(tmp_path):
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    out = tmp_path / "out"
    run = run_job_command(["python", "jobs/els-pricer/price.py", "--grids", "40x40x80"], out, extra_path=str(fake))
    assert run.returncode == 0, run.stderr
    assert "plot skipped: matplotlib is not installed" in run.stdout
    assert json.loads((out / "results.json").read_text())["results"][0]["n1"] == 40
    assert not (out / "els_pricer.png").exists()


def test_els_pricer_falls_back_to_out_in_the_working_directory(tmp_path):
    run = run_job_command(["python", str(JOBS / "els-pricer" / "price.py"), "--grids", "40x40x80"], None, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "results.json").exists()


def test_els_pricer_rejects_a_malformed_grid(tmp_path):
    run = run_job_command(["python", "jobs/els-pricer/price.py", "--grids", "40x40"], tmp_path)
    assert run.returncode != 0 and "--grids: '40x40' is not N1xN2xNT" in run.stderr


def test_gpu_probe_job_saves_probe_json(tmp_path):
    spec = yaml.safe_load((JOBS / "gpu-probe" / "job.yaml").read_text())
    run = run_job_command(shlex.split(spec["run"]) + ["--quick"], tmp_path)
    assert run.returncode == 0, run.stderr
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert json.loads(run.stdout) == saved and saved["cpu"]["matmul_gflops"]["fp64"] > 0
