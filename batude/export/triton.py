"""Triton Inference Server model repositories: ``<repo>/<model>/config.pbtxt`` + ``<repo>/<model>/1/``.

An ONNX model is served by the onnxruntime backend (``platform: "onnxruntime_onnx"``, file
``model.onnx``); a TensorRT engine by ``platform: "tensorrt_plan"`` (file ``model.plan``). With a
dynamic batch axis ``max_batch_size`` is the largest batch and ``dims`` omit it; a static-batch
model has ``max_batch_size: 0`` and full dims. :func:`validate_config` parses the text into the
real ``ModelConfig`` protobuf (``tritonclient[grpc]``).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from batude._io import atomic_path, inside, write_text_atomic
from batude.errors import BatudeError

__all__ = ["TensorSpec", "config_pbtxt", "validate_config", "write_triton_model"]

_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
_PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"), ".plan": ("tensorrt_plan", "model.plan")}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: ``dims`` exclude the batch axis when the model batches."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in _TYPES:
            raise BatudeError(f"Triton: unsupported tensor dtype {self.dtype}; use one of {sorted(_TYPES)}")


def _tensor(spec: TensorSpec) -> str:
    dims = ", ".join(str(d) for d in spec.dims)
    return f'  {{\n    name: "{spec.name}"\n    data_type: {_TYPES[spec.dtype]}\n    dims: [ {dims} ]\n  }}'


def config_pbtxt(name: str, model_file: str | Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 max_batch_size: int, dynamic_batching: bool = True) -> str:
    """The ``config.pbtxt`` text for a model file (``.onnx`` or ``.plan``)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise BatudeError(f"Triton model name '{name}' may only contain letters, digits, '_', '.', '-'")
    suffix = Path(model_file).suffix
    if suffix not in _PLATFORMS:
        raise BatudeError(f"Triton: cannot serve '{model_file}'; expected a .onnx model or a .plan TensorRT engine")
    platform, default_name = _PLATFORMS[suffix]
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {int(max_batch_size)}",
             f'default_model_filename: "{default_name}"',
             "input [\n" + ",\n".join(_tensor(t) for t in inputs) + "\n]",
             "output [\n" + ",\n".join(_tensor(t) for t in outputs) + "\n]"]
    if dynamic_batching and max_batch_size > 0:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


def validate_config(text: str):
    """Parse ``text`` into Triton's ``ModelConfig`` protobuf; returns the message or raises."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):
        raise BatudeError("validating Triton configs needs tritonclient: pip install 'batude[serve]'") from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as err:
        raise BatudeError(f"generated Triton config does not parse as ModelConfig: {err}") from None


def write_triton_model(repo: str | Path, name: str, model_file: str | Path, inputs: Sequence[TensorSpec],
                       outputs: Sequence[TensorSpec], max_batch_size: int, version: int = 1) -> Path:
    """Copy ``model_file`` into ``repo/name/<version>/`` and write ``config.pbtxt``; returns the model folder."""
    folder = inside(repo, name)  # a model name must not lead out of the repository
    text = config_pbtxt(name, model_file, inputs, outputs, max_batch_size)
    validate_config(text)
    try:
        (folder / str(version)).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BatudeError(f"cannot create Triton repository folder {folder}: {err.strerror}") from None
    target = folder / str(version) / _PLATFORMS[Path(model_file).suffix][1]
    with atomic_path(target) as tmp:
        shutil.copyfile(model_file, tmp)
    write_text_atomic(folder / "config.pbtxt", text)
    return folder
