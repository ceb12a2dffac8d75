"""Environment record attached to every benchmark result."""

from __future__ import annotations

import os
import platform
import subprocess

import torch

import batude


def environment() -> dict:
    env = {
        "batude": batude.__version__, "torch": str(torch.__version__), "python": platform.python_version(),
        "cpu": _cpu_model(), "cpu_threads": torch.get_num_threads(), "os_cpus": os.cpu_count(),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}", driver=_driver())
    return env


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
