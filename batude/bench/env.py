"""The environment record attached to every benchmark and latency result.

GPU name, compute capability, driver, CUDA, cuDNN, torch, onnxruntime, TensorRT versions and the
CPU model and threads. It never initialises CUDA on a machine without a GPU.
"""

from __future__ import annotations

import os
import platform
import subprocess

import torch

from batude._version import __version__


def environment() -> dict:
    """A JSON-able dict of the software and hardware that produced a measurement."""
    env = {
        "batude": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
        "cpu": _cpu_model(), "cpu_threads": torch.get_num_threads(), "os_cpus": os.cpu_count(),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "onnxruntime": _version_of("onnxruntime"), "tensorrt": _version_of("tensorrt"),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}", driver=_driver())
    return env


def _version_of(module: str) -> str | None:
    from importlib import metadata

    for dist in (module, f"{module}-gpu", f"{module}-cu12", f"{module}-cu13"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
