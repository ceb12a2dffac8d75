"""``batude.runtime.load(path)``: a callable that runs an exported model on torch tensors.

``.onnx`` files run in onnxruntime (the CUDA execution provider when onnxruntime-gpu is installed
and the input is on CUDA, else CPU); ``.plan``/``.engine`` files are TensorRT engines (checked
against their manifest first). For embedding in any Python server.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from batude.errors import BatudeError

__all__ = ["OnnxRunner", "load"]


class OnnxRunner:
    """An onnxruntime session called like a module: ``runner(x) -> y`` on x's device."""

    def __init__(self, path: str | os.PathLike) -> None:
        from batude.export.onnx_export import require

        ort = require("onnxruntime")
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise BatudeError(f"{path} is not a loadable ONNX model ({type(err).__name__}); re-export it with batude-export") from None
        self.input = self.session.get_inputs()[0]
        self.providers = self.session.get_providers()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != len(self.input.shape):
            raise BatudeError(f"input has {x.dim()} dims, the model expects {len(self.input.shape)} ({self.input.shape})")
        array = x.detach().to("cpu").contiguous().numpy()
        try:
            out = self.session.run(None, {self.input.name: array})[0]
        except Exception as err:  # noqa: BLE001
            raise BatudeError(f"onnxruntime refused the input of shape {list(x.shape)}: {str(err).splitlines()[0][:200]}") from None
        return torch.from_numpy(out).to(x.device)


def load(path: str | os.PathLike):
    """A callable for an exported model: ONNX (onnxruntime) or a TensorRT engine (``.plan``)."""
    p = Path(path)
    if not p.is_file():
        raise BatudeError(f"{p} not found; export a model with batude-export")
    if p.suffix == ".onnx":
        return OnnxRunner(p)
    if p.suffix in (".plan", ".engine"):
        from batude.export.trt import load_engine

        return load_engine(p)
    raise BatudeError(f"{p}: unknown model format '{p.suffix}'; expected .onnx or .plan")
