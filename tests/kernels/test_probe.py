"""kernels.probe: what the machine computes with."""

from __future__ import annotations

import json

from kernels import probe


def test_probe_reports_cpu_figures_and_the_gpu_or_why_not():
    r = probe.run_probe(quick=True)
    cpu = r["cpu"]
    assert cpu["model"] and cpu["logical_cores"] >= 1
    assert cpu["matmul_gflops"]["fp32"] > 0 and cpu["matmul_gflops"]["fp64"] > 0
    assert cpu["bandwidth_gbs"] > 0
    if r["gpu"] is None:
        assert r["gpu_absent_reason"] and r["comparison"] is None
    else:
        assert r["gpu"]["name"] and r["comparison"]["matmul_fp64_gpu_over_cpu"] > 0
    json.dumps(r)  # JSON-ready, so the runner can attach it to result.json


def test_probe_cli_prints_json_and_saves_into_the_output_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORCH_OUTPUT_DIR", str(tmp_path))
    assert probe.main(["--json", "--save", "--quick"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert printed["cpu"]["model"] == saved["cpu"]["model"]


def test_probe_text_output_names_cpu_and_gpu(capsys):
    assert probe.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("CPU ") and "\nGPU " in out
