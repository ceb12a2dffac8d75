"""``onnx_from_module``: export, then verify (checker, onnxruntime numerics, Conv-only graph check).

Heavy dependencies (onnx, onnxruntime, onnxscript for the dynamo exporter) are imported inside the
functions; a missing one raises :class:`BatudeError` naming ``pip install 'batude[onnx]'``.
The file is written to a temporary name and renamed only after every check passed, so a failed
export leaves no partial model behind.
"""

from __future__ import annotations

import collections
import importlib
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from batude._io import atomic_path
from batude.errors import BatudeError

__all__ = ["DEFAULT_OPSET", "OnnxReport", "onnx_from_module", "require"]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
RTOL = {torch.float32: 1e-4, torch.float16: 1e-2}  # relative L2 error allowed, by export dtype


def require(module: str, extra: str = "onnx"):
    """Import an optional dependency or raise a one-line install hint."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BatudeError(f"{module} is not installed; pip install 'batude[{extra}]'") from None


@dataclass
class OnnxReport:
    path: str
    exporter: str  # "dynamo" or "torchscript"
    opset: int
    dtype: str
    input_shape: list[int]
    dynamic_batch: bool
    op_counts: dict[str, int]
    expected_convs: int | None  # None: the module is a flattened program (e.g. from .pt2), count unchecked
    max_abs_error: float
    rel_error: float  # ||ort - torch|| / ||torch|| over the check batches
    tolerance: float
    output_spread: float  # ||torch - mean over 4 probe samples|| / ||torch||: ~0 means the output ignores the input
    checked_batches: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _export(module: nn.Module, example: torch.Tensor, path: Path, dynamo: bool, opset: int, dynamic_batch: bool) -> None:
    kwargs: dict[str, Any] = {"input_names": ["input"], "output_names": ["output"], "opset_version": opset, "dynamo": dynamo}
    if dynamic_batch:
        if dynamo:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
        else:
            kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
    if dynamo:
        require("onnxscript")
        kwargs.update(external_data=False, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet = logging.getLogger("torch.onnx")
        level, quiet.level = quiet.level, logging.ERROR
        try:
            torch.onnx.export(module, (example,), str(path), **kwargs)
        except Exception as err:  # noqa: BLE001 - exporter failures come in many types
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise BatudeError(f"ONNX export ({'dynamo' if dynamo else 'torchscript'}) failed: {type(err).__name__}: {first[:300]}; "
                              f"try {'--legacy-exporter' if dynamo else 'the dynamo exporter'} or another --opset") from None
        finally:
            quiet.setLevel(level)


def _probe(batch: int, shape: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    """Random inputs whose samples differ in scale and per-channel offset (pure noise averages out
    under global pooling, which would make outputs nearly identical and the comparison weak)."""
    scale = torch.rand((batch,) + (1,) * len(shape), generator=gen) * 1.5 + 0.5
    offset = torch.randn((batch, shape[0]) + (1,) * (len(shape) - 1), generator=gen)
    return torch.randn((batch, *shape), generator=gen) * scale + offset


def _output_spread(module: nn.Module, shape: Sequence[int], dtype: torch.dtype, gen: torch.Generator,
                   samples: int = 4) -> float:
    """``||y - mean_over_samples(y)|| / ||y||`` of the PyTorch module on ``samples`` probe inputs (one
    batch, whatever batch the ONNX file takes): about 0 when the output ignores the input."""
    with torch.no_grad():
        ref = module(_probe(samples, shape, gen).to(dtype)).float()
    return float((ref - ref.mean(0, keepdim=True)).norm() / ref.norm().clamp_min(1e-30))


def _op_counts(model_proto) -> dict[str, int]:
    return dict(collections.Counter(node.op_type for node in model_proto.graph.node))


def onnx_from_module(
    module: nn.Module,
    input_shape: Sequence[int],
    path: str | os.PathLike,
    *,
    dynamo: bool = True,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    fp16: bool = False,
    check_batches: Sequence[int] | None = None,
) -> OnnxReport:
    """Export ``module`` (eval mode, CPU) to ONNX at ``path`` and verify it.

    Checks, in order: ``onnx.checker``; the graph has one ``Conv`` node per ``nn.Conv2d`` of the
    module and no ``MatMul``/``Reshape`` detours beyond what the module's own Linear/Flatten need;
    onnxruntime (CPU) outputs match PyTorch on random inputs (fp32: relative L2 error <= 1e-4;
    fp16: <= 1e-2, the fp16 rounding of activations). Only then is the file moved into place.
    """
    onnx = require("onnx")
    ort = require("onnxruntime")
    dtype = torch.float16 if fp16 else torch.float32
    module = module.eval().to("cpu", dtype)
    shape = [int(d) for d in input_shape]
    expected_convs = sum(isinstance(m, nn.Conv2d) for m in module.modules()) or None
    expected_gemms = sum(isinstance(m, nn.Linear) for m in module.modules())
    batches = list(check_batches or ([shape[0], shape[0] + 2] if dynamic_batch else [shape[0]]))
    gen = torch.Generator().manual_seed(0)
    with atomic_path(path) as tmp:
        _export(module, torch.randn(shape, generator=gen).to(dtype), tmp, dynamo, opset, dynamic_batch)
        proto = onnx.load(str(tmp))
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as err:  # noqa: BLE001 - checker raises ValidationError and friends
            raise BatudeError(f"the exported ONNX model does not pass onnx.checker: {str(err).splitlines()[0]}") from None
        counts = _op_counts(proto)
        if expected_convs is not None:
            _check_graph(counts, expected_convs, expected_gemms)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        max_abs, num, den = 0.0, 0.0, 0.0
        for batch in batches:
            x = _probe(batch, shape[1:], gen).to(dtype)
            with torch.no_grad():
                ref = module(x).float()
            got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]).float()
            max_abs = max(max_abs, float((got - ref).abs().max()))
            num, den = num + float((got - ref).square().sum()), den + float(ref.square().sum())
        rel = (num / max(den, 1e-30)) ** 0.5
        spread = _output_spread(module, shape[1:], dtype, gen)
        if spread < 1e-3:
            log.warning("the model's output barely depends on its input (spread %.1e): the numeric check is weak; "
                        "calibrate BatchNorm statistics or use trained weights", spread)
        if not rel <= RTOL[dtype]:
            raise BatudeError(f"onnxruntime output differs from PyTorch: relative error {rel:.3g} > {RTOL[dtype]:g}; please report this model")
    return OnnxReport(str(path), "dynamo" if dynamo else "torchscript", opset, str(dtype).replace("torch.", ""), shape,
                      dynamic_batch, counts, expected_convs, max_abs, rel, RTOL[dtype], spread, batches)


def _check_graph(counts: dict[str, int], expected_convs: int, expected_gemms: int) -> None:
    if counts.get("Conv", 0) != expected_convs:
        raise BatudeError(f"the ONNX graph has {counts.get('Conv', 0)} Conv nodes but the model has {expected_convs} convolutions")
    detours = counts.get("MatMul", 0) + counts.get("Gemm", 0)
    if detours > expected_gemms:
        raise BatudeError(f"the ONNX graph has {detours} MatMul/Gemm nodes for {expected_gemms} Linear layers: a convolution was lowered to a matrix product")
