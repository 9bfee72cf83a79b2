"""The array module for the current run: cupy on a CUDA device, numpy otherwise.

Kernel code is written once against ``xp`` and runs on either device::

    from kernels.xp import get_xp
    xp = get_xp()            # or: from kernels.xp import xp
    a = xp.zeros((200, 200))

How the device is chosen, first match wins:

1. an explicit ``device="cpu"|"gpu"`` argument to :func:`get_xp` / :func:`resolve_device`;
2. the ``ORCH_DEVICE`` environment variable (``cpu``, ``gpu`` or ``auto``);
3. auto-detection: ``gpu`` when cupy imports *and* a CUDA device is visible, else ``cpu``.

Asking for ``gpu`` where there is none raises :class:`DeviceError` with a one-line reason
(cupy missing, no driver, no device) instead of a traceback from deep inside cupy.

Design choice: ``xp`` is resolved on each access (PEP 562 module ``__getattr__``), not frozen
at import time, so importing this module never fails and a test can flip ``ORCH_DEVICE``.
The cupy probe itself is cached: it costs a driver call.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy

ENV_VAR = "ORCH_DEVICE"
DEVICES = ("auto", "cpu", "gpu")

__all__ = [
    "DEVICES",
    "ENV_VAR",
    "DeviceError",
    "cpu_model",
    "device_label",
    "get_xp",
    "gpu_status",
    "resolve_device",
    "to_numpy",
    "xp",
]


class DeviceError(RuntimeError):
    """The requested device cannot be used (e.g. ``ORCH_DEVICE=gpu`` on a machine without one)."""


@functools.lru_cache(maxsize=1)
def gpu_status() -> tuple[bool, str]:
    """Whether a CUDA device is usable through cupy, and why not when it is not.

    Returns:
        ``(True, "<n> CUDA device(s)")`` or ``(False, reason)``; never raises.
    """
    try:
        import cupy  # noqa: F401  (imported for its side effect of loading CUDA)
    except Exception as exc:  # ImportError, or a broken CUDA install raising on import
        what = "is not installed" if isinstance(exc, ImportError) else f"failed to import ({type(exc).__name__})"
        return False, f"cupy {what} (pip install 'orch[gpu]')"
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # cupy raises CUDARuntimeError when there is no driver
        return False, f"cupy cannot reach a CUDA driver ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if count < 1:
        return False, "no CUDA device is visible"
    return True, f"{count} CUDA device(s)"


def resolve_device(device: str = "auto") -> str:
    """Turn ``auto``/``cpu``/``gpu`` plus ``ORCH_DEVICE`` into ``"cpu"`` or ``"gpu"``.

    Args:
        device: ``"auto"`` (defer to ``ORCH_DEVICE``, then detection), ``"cpu"`` or ``"gpu"``.

    Returns:
        ``"cpu"`` or ``"gpu"``.

    Raises:
        DeviceError: an unknown name, or ``gpu`` requested where no CUDA device is usable.
    """
    source = "device"
    choice = (device or "auto").strip().lower()
    if choice not in DEVICES:
        raise DeviceError(f"device={device!r}: expected one of {', '.join(DEVICES)}")
    if choice == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env:
            if env not in DEVICES:
                raise DeviceError(f"{ENV_VAR}={env!r}: expected one of {', '.join(DEVICES)}")
            choice, source = env, ENV_VAR
    if choice == "cpu":
        return "cpu"
    ok, reason = gpu_status()
    if choice == "gpu":
        if not ok:
            raise DeviceError(f"{source}=gpu but no GPU is usable: {reason}")
        return "gpu"
    return "gpu" if ok else "cpu"


def get_xp(device: str = "auto") -> ModuleType:
    """The array module for ``device``: ``cupy`` for the GPU, ``numpy`` for the CPU."""
    if resolve_device(device) == "gpu":
        import cupy

        return cupy
    return numpy


def to_numpy(array: Any) -> numpy.ndarray:
    """Copy a cupy array to the host; numpy arrays and scalars pass through."""
    get = getattr(array, "get", None)
    if callable(get) and type(array).__module__.startswith("cupy"):
        return get()
    return numpy.asarray(array)


def device_label(device: str) -> str:
    """A short human label for a resolved device, e.g. ``gpu: NVIDIA H100 80GB HBM3 (cupy 13.6.0)``."""
    if device == "gpu":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return f"gpu: {name} (cupy {cupy.__version__})"
    return f"cpu: {cpu_model()} (numpy {numpy.__version__})"


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS), else the arch."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5)
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def __getattr__(name: str) -> Any:
    if name == "xp":
        return get_xp()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
