"""python -m kernels.els: the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

import kernels.xp
from kernels.els import create_sample_els
from kernels.els.__main__ import main


def test_json_output_has_price_greeks_grid_and_device(capsys):
    assert main(["--n", "40", "--nt", "80", "--device", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    f = r["fdm"]
    assert r["product"] == "sample" and (f["n1"], f["n2"], f["nt"], f["device"]) == (40, 40, 80, "cpu")
    assert 90 < f["price"] < 100 and len(f["delta"]) == 2 and len(f["gamma"]) == 2


def test_text_output_and_a_matched_mc_check(capsys, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(create_sample_els().to_dict()))
    assert main(["--n1", "40", "--n2", "48", "--nt", "60", "--product", str(path), "--mc", "2000", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "grid     40 x 48 x 60" in out and "price    " in out
    assert "mc       " in out and "(2000 paths, 60 steps" in out


def test_bad_product_file_is_one_line_and_exit_1(capsys, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("maturity: 3\n")
    assert main(["--product", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: missing field") and err.count("\n") == 1


def test_gpu_without_a_device_is_one_line_and_exit_1(capsys, monkeypatch):
    monkeypatch.setattr(kernels.xp, "gpu_status", lambda: (False, "no CUDA device is visible"))
    assert main(["--n", "40", "--nt", "80", "--device", "gpu"]) == 1
    assert capsys.readouterr().err == "error: device=gpu but no GPU is usable: no CUDA device is visible\n"


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as exc:
        main(["--device", "tpu"])
    assert exc.value.code == 2


def test_module_runs_as_a_script():
    run = subprocess.run(
        [sys.executable, "-m", "kernels.els", "--n", "40", "--nt", "80", "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("product  sample")
