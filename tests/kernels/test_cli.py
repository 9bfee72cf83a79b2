"""python -m kernels.els: the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import kernels.xp
from kernels.els import create_sample_els
from kernels.els.__main__ import main

yaml = pytest.importorskip("yaml")  # the GPU check machine has only cupy, numpy and pytest


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


def test_batch_file_prices_each_product(capsys, tmp_path):
    p = create_sample_els()
    path = tmp_path / "book.yaml"
    path.write_text(yaml.safe_dump([p.to_dict(), p.replace(rho=0.2).to_dict()]))
    assert main(["--n", "30", "--nt", "60", "--device", "cpu", "--batch", str(path), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["batch"] == str(path) and len(r["results"]) == 2
    assert r["results"][0]["price"] != r["results"][1]["price"]
    assert main(["--n", "30", "--nt", "60", "--device", "cpu", "--batch", str(path)]) == 0
    assert "batch    " + str(path) + ": 2 products" in capsys.readouterr().out


def test_bad_batch_entry_names_the_file_and_the_entry(capsys, tmp_path):
    path = tmp_path / "book.yaml"
    path.write_text(yaml.safe_dump([create_sample_els().to_dict(), {"maturity": 3}]))
    assert main(["--batch", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: [1]: missing field") and err.count("\n") == 1
    path.write_text("maturity: 3\n")
    assert main(["--batch", str(path)]) == 1
    assert "expected a non-empty YAML list of products" in capsys.readouterr().err


def test_greeks_full_adds_bumped_sensitivities(capsys):
    assert main(["--n", "30", "--nt", "60", "--device", "cpu", "--greeks", "full", "--json"]) == 0
    g = json.loads(capsys.readouterr().out)["greeks"]
    assert g["pricings"] == 9 and len(g["vega"]) == 2 and "rate_rho" in g and "correlation" in g


def test_batch_does_not_combine_with_product_or_greeks():
    with pytest.raises(SystemExit) as exc:
        main(["--batch", "a.yaml", "--greeks", "full"])
    assert exc.value.code == 2
