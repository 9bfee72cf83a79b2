"""kernels.xp: picking numpy or cupy, and ORCH_DEVICE."""

from __future__ import annotations

import numpy as np
import pytest

import kernels.xp as xpmod
from kernels.xp import DeviceError, get_xp, resolve_device, to_numpy


def test_orch_device_cpu_forces_numpy(monkeypatch):
    monkeypatch.setenv("ORCH_DEVICE", "cpu")
    assert resolve_device() == "cpu"
    assert get_xp() is np
    assert xpmod.xp is np  # the module attribute follows the environment


def test_explicit_device_argument_beats_the_environment(monkeypatch):
    monkeypatch.setenv("ORCH_DEVICE", "gpu")
    assert resolve_device("cpu") == "cpu"


def test_unknown_orch_device_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("ORCH_DEVICE", "tpu")
    with pytest.raises(DeviceError) as err:
        resolve_device()
    assert "ORCH_DEVICE='tpu'" in str(err.value) and "\n" not in str(err.value)


def test_unknown_device_argument_is_rejected():
    with pytest.raises(DeviceError, match="device='quantum'"):
        resolve_device("quantum")


def test_auto_falls_back_to_numpy_without_a_gpu(monkeypatch):
    monkeypatch.delenv("ORCH_DEVICE", raising=False)
    monkeypatch.setattr(xpmod, "gpu_status", lambda: (False, "no CUDA device is visible"))
    assert resolve_device("auto") == "cpu"
    assert get_xp() is np


def test_gpu_without_a_device_says_why_in_one_line(monkeypatch):
    monkeypatch.setattr(xpmod, "gpu_status", lambda: (False, "cupy is not installed (pip install 'orch[gpu]')"))
    monkeypatch.setenv("ORCH_DEVICE", "gpu")
    with pytest.raises(DeviceError) as err:
        get_xp()
    msg = str(err.value)
    assert msg.startswith("ORCH_DEVICE=gpu but no GPU is usable: cupy is not installed")
    assert "\n" not in msg


def test_gpu_status_never_raises_and_explains_itself():
    ok, reason = xpmod.gpu_status()
    assert isinstance(ok, bool) and reason


def test_to_numpy_passes_host_arrays_through():
    a = np.arange(3.0)
    assert to_numpy(a) is a
    assert to_numpy([1, 2]).tolist() == [1, 2]
