"""Latency backends behind one interface: eager, CUDA graphs, torch.compile (plain or graphed), onnxruntime, TensorRT,
batude's Triton kernels (graphed, or compiled and graphed).

:func:`make_runner` prepares a model for one backend, batch and dtype and returns a zero-argument
callable that runs one batch with its inputs already in place (no host-device copies inside the
timed call, except onnxruntime on CPU where host memory *is* the device). A backend that cannot run
here raises :class:`BackendUnavailable` with the reason; :func:`measure` records that reason
instead of crashing.

``triton``: batude's fused Triton kernels (:mod:`batude.kernels`) replayed in a CUDA graph. A
torchvision/batude ResNet is rewritten by ``fuse_resnet_`` (BatchNorm folded, ReLU and residual
add in the kernels' epilogues); any other factorised layer gets ``impl="triton"``.
``triton-compile``: the same model compiled as ``compile-graph`` compiles (frozen weights; the
kernels are custom ops Inductor calls as they are, and it fuses what runs around them: the stem,
pooling, dense layers' epilogues), then replayed: the like-for-like rival of compiled dense.
"""

from __future__ import annotations

import copy
import enum
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from batude._device import resolve_device
from batude.bench.profile import profile_entry
from batude.bench.timing import Stats, time_callable
from batude.errors import BatudeError

__all__ = ["Backend", "BackendUnavailable", "KERNEL_BACKENDS", "Runner", "make_runner", "measure", "torch_runner"]

log = logging.getLogger(__name__)


class Backend(str, enum.Enum):
    EAGER = "eager"
    CUDA_GRAPH = "cuda-graph"
    COMPILE = "compile"
    COMPILE_GRAPH = "compile-graph"
    ORT = "onnxruntime"
    TRT = "tensorrt"
    TRITON = "triton"
    TRITON_COMPILE = "triton-compile"


KERNEL_BACKENDS = (Backend.TRITON, Backend.TRITON_COMPILE)  # the model on batude's kernels


class BackendUnavailable(BatudeError):
    """This backend cannot run on this machine (the message says why)."""


@dataclass
class Runner:
    backend: Backend
    run: Callable[[], object]
    device: torch.device
    batch: int
    dtype: torch.dtype
    workdir: tempfile.TemporaryDirectory | None = None  # keeps exported files alive


def _device_for(backend: Backend, device: str | None) -> torch.device:
    """The device ``backend`` runs on: ``device`` (``cuda:N`` kept), CUDA for the GPU-only backends.

    A CUDA device becomes the current one (streams, graphs and timing events use the current device).
    """
    gpu_only = backend in (Backend.CUDA_GRAPH, Backend.COMPILE_GRAPH, Backend.TRT) + KERNEL_BACKENDS
    if gpu_only and not torch.cuda.is_available():
        raise BackendUnavailable(f"{backend.value} needs a CUDA GPU; none is available here")
    if gpu_only and not str(device or "").startswith("cuda"):
        device = "cuda"
    try:
        return resolve_device(device, make_current=True)
    except BatudeError as err:
        raise BackendUnavailable(str(err)) from None


def torch_runner(model: nn.Module, x: torch.Tensor, backend: Backend) -> Callable[[], object]:
    """A no-argument callable running ``model(x)`` eagerly, compiled, or as a replayed CUDA graph.

    ``compile-graph``: ``torch.compile`` with weights frozen as constants (inference), its output
    replayed as a CUDA graph: what a server that compiles and graphs its model runs, and on an H100
    the fastest dense ResNet-18 measured (BENCHMARKS.md).
    """
    if backend is Backend.EAGER:
        return lambda: model(x)
    if backend is Backend.COMPILE:
        compiled = torch.compile(model)
        return lambda: compiled(x)
    fn = model
    if backend is Backend.COMPILE_GRAPH:
        fn = torch.compile(model, dynamic=False, options={"freezing": True})
    stream = torch.cuda.Stream()  # graphed backends: warm up (compile, autotune) on a side stream, capture, replay
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        fn(x)
    return graph.replay


def make_runner(model: nn.Module, backend: Backend | str, input_shape: Sequence[int], batch: int,
                dtype: torch.dtype = torch.float32, device: str | None = None) -> Runner:
    """A runner for one (backend, batch, dtype); ``input_shape`` is per image (C, H, W)."""
    backend = Backend(backend)
    dev = _device_for(backend, device)
    if dtype == torch.float16 and dev.type == "cpu" and backend is not Backend.ORT:
        raise BackendUnavailable(f"{backend.value} fp16 on the CPU is not a meaningful latency target; use fp32 or a GPU")
    shape = (batch, *input_shape)
    if backend in (Backend.ORT, Backend.TRT):
        return _exported_runner(model, backend, tuple(input_shape), batch, dtype, dev)
    model = copy.deepcopy(model).eval().to(dev, dtype)
    x = torch.randn(shape, device=dev, dtype=dtype)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    runs_as = backend
    if backend in KERNEL_BACKENDS:
        model = _with_kernels(model)
        runs_as = Backend.COMPILE_GRAPH if backend is Backend.TRITON_COMPILE else Backend.CUDA_GRAPH
    return Runner(backend, torch_runner(model, x, runs_as), dev, batch, dtype)


def _with_kernels(model: nn.Module) -> nn.Module:
    """The model rewritten onto batude's Triton kernels (fused ResNet blocks where recognised)."""
    from batude.nn.tucker_conv import ensure_kernels_importable

    ensure_kernels_importable()
    from batude.kernels._runtime import triton_unavailable_reason
    from batude.kernels.resnet_fuse import fuse_resnet_
    from batude.nn.decompose import set_impl

    reason = triton_unavailable_reason()
    if reason:
        raise BackendUnavailable(f"triton backend: {reason}")
    try:
        fuse_resnet_(model)
    except BatudeError as err:
        log.info("triton backend: no block fusion (%s); using impl='triton' layers", err)
    set_impl(model, "triton")
    return model


def _exported_runner(model: nn.Module, backend: Backend, input_shape: tuple[int, ...], batch: int,
                     dtype: torch.dtype, dev: torch.device) -> Runner:
    import importlib.util

    from batude.export.pipeline import ExportOptions, export_model
    from batude.runtime import load

    needs = ["onnx", "onnxruntime"] + (["tensorrt"] if backend is Backend.TRT else [])
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailable(f"{backend.value} needs {', '.join(missing)}, which is not installed here")
    work = tempfile.TemporaryDirectory(prefix="batude-bench-")
    options = ExportOptions(input_shape=input_shape, batches=(batch,), fp16=dtype == torch.float16, trt=backend is Backend.TRT)
    export_model(model, work.name, options)
    path = Path(work.name) / ("model.plan" if backend is Backend.TRT else "model.onnx")
    runner = load(path)
    x = torch.randn((batch, *input_shape), dtype=dtype, device=dev if backend is Backend.TRT else "cpu")
    if backend is Backend.ORT:
        session, feed = runner.session, {runner.input.name: x.numpy()}
        return Runner(backend, lambda: session.run(None, feed), torch.device("cpu"), batch, dtype, work)
    return Runner(backend, lambda: runner(x), dev, batch, dtype, work)


def measure(model: nn.Module, backends: Sequence[Backend | str], input_shape: Sequence[int], batches: Sequence[int],
            dtype: torch.dtype = torch.float32, iters: int = 50, warmup: int = 10, device: str | None = None,
            label: str = "", progress: Callable[[int, int, str], None] | None = None,
            profile_calls: int = 0) -> list[dict]:
    """Time ``model`` on every (backend, batch); unavailable backends are reported with the reason.

    ``progress(i, n, what)`` is called before each of the ``n`` cells and once with ``i == n``.
    ``profile_calls`` > 0: after timing, profile that many calls of each runner
    (:func:`batude.bench.profile.profile_entry`) into the entry's ``profile`` (``profile_error`` if it failed).
    """
    results = []
    cells = [(backend, batch) for backend in map(Backend, backends) for batch in batches]
    for i, (backend, batch) in enumerate(cells):
        if progress is not None:
            progress(i, len(cells), f"{label} {backend.value} b{batch}".strip())
        entry = {"model": label, "backend": backend.value, "batch": int(batch), "dtype": str(dtype).replace("torch.", "")}
        try:
            runner = make_runner(model, backend, input_shape, int(batch), dtype, device)
            stats: Stats = time_callable(runner.run, iters=iters, warmup=warmup, device=runner.device,
                                         batch=int(batch), label=f"{label} {backend.value} b{batch}")
            entry.update(available=True, device=str(runner.device), **stats.to_dict())
            if profile_calls:
                entry.update(profile_entry(runner.run, runner.device, profile_calls, stats.median_ms,
                                           f"{label} {backend.value} b{batch}"))
        except BackendUnavailable as err:
            entry.update(available=False, reason=str(err))
            log.info("%s unavailable: %s", backend.value, err)
        results.append(entry)
    if progress is not None:
        progress(len(cells), len(cells), "done")
    return results
