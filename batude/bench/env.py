"""The environment record attached to every benchmark and latency result.

GPU name, compute capability, driver, CUDA, cuDNN, torch, onnxruntime, TensorRT, Triton versions and the
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
        "triton": _version_of("triton"),  # batude's kernels: compiled (and tuned) by this version
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())  # the one a runner made current
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
    """The CPU's model name, with family/model and widest vector unit where /proc/cpuinfo has them:
    virtual machines often report only "AMD EPYC", and an AVX-512 and an AVX2-only EPYC time
    the same model up to 2-3x apart (BENCHMARKS.md, 2026-11-27)."""
    fields: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if not line.strip():
                break  # the first processor's block is enough
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    flags = set(fields.get("flags", "").split())
    detail = []
    if "cpu family" in fields and "model" in fields:
        detail.append(f"family {fields['cpu family']} model {fields['model']}")
    detail += [isa for flag, isa in (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"), ("asimd", "asimd")) if flag in flags][:1]
    return f"{name} ({', '.join(detail)})" if detail else name


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
