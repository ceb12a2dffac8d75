"""TensorRT: ``engine_from_onnx`` builds and verifies an engine; ``load_engine`` runs it on torch CUDA tensors.

Only this module touches ``tensorrt``, and only inside functions; every decision that can be made
without it (precision by version, profiles, manifests, I/O plans) lives in
:mod:`batude.export.trt_manifest` and is re-exported here. Written against NVIDIA's Python API:
``Builder`` -> ``OnnxParser`` -> ``IBuilderConfig`` (workspace pool, builder_optimization_level,
timing cache, one optimization profile) -> ``build_serialized_network``; at run time
``Runtime.deserialize_cuda_engine`` and ``IExecutionContext.set_input_shape`` /
``set_tensor_address`` / ``execute_async_v3`` on torch's current stream (no pycuda: torch owns the
CUDA context, memory and streams).

Each engine gets a JSON manifest beside it (``<engine>.json``); :func:`load_engine` refuses an
engine whose manifest does not match this machine (TensorRT version, GPU compute capability,
engine hash).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from batude._io import atomic_path, check_parent, write_text_atomic
from batude.errors import BatudeError
from batude.export.trt_manifest import (
    TOLERANCE, EngineSpec, Precision, build_manifest, check_manifest, check_network_input, io_binding_plan,
    manifest_path, network_creation_flags, parse_version, precision_setup, profile_shapes,
    read_manifest,
)

__all__ = [
    "EngineSpec", "Precision", "TrtRunner", "build_manifest", "check_manifest", "engine_from_onnx", "io_binding_plan",
    "load_engine", "manifest_path", "precision_setup", "profile_shapes", "runtime_environment", "tensorrt_version",
]

log = logging.getLogger(__name__)

TRT_MISSING = "TensorRT is not installed; pip install 'batude[trt]' (needs NVIDIA's package index and a CUDA GPU)"
_DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
                "INT32": "int32", "INT64": "int64", "BOOL": "bool"}
_LOG_LEVELS = {"INTERNAL_ERROR": logging.ERROR, "ERROR": logging.ERROR, "WARNING": logging.WARNING,
               "INFO": logging.DEBUG, "VERBOSE": logging.DEBUG}
_LOGGER: Any = None


def _require_tensorrt():
    try:
        import tensorrt
    except (ImportError, OSError):  # OSError: the wheel is there but its CUDA libraries are not
        raise BatudeError(TRT_MISSING) from None
    return tensorrt


def _require_cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise BatudeError("TensorRT needs a CUDA GPU and none is visible; run on a GPU machine (the ONNX model works on CPU)")
    torch.cuda.init()  # torch creates the primary context first; TensorRT then uses it
    return torch.device("cuda", torch.cuda.current_device())


def tensorrt_version() -> tuple[int, int, int] | None:
    """The installed TensorRT as (major, minor, patch), or None when ``tensorrt`` cannot be imported."""
    try:
        import tensorrt
    except (ImportError, OSError):
        return None
    return parse_version(getattr(tensorrt, "__version__", None))


def _nvidia_smi_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0] if lines else None


def runtime_environment() -> dict[str, str | None]:
    """What an engine depends on: tensorrt, cuda (torch's), driver, torch, gpu name, compute capability.

    Unknown fields are None. CUDA is initialised only when a GPU is visible (to name it); on a
    machine without one, nothing touches CUDA.
    """
    version = tensorrt_version()
    env: dict[str, str | None] = {
        "tensorrt": ".".join(map(str, version)) if version else None,
        "cuda": torch.version.cuda,
        "driver": _nvidia_smi_driver(),
        "torch": torch.__version__,
        "gpu": None,
        "compute_capability": None,
    }
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        env["gpu"], env["compute_capability"] = torch.cuda.get_device_name(index), f"{major}.{minor}"
    return env


def _trt_logger(trt):
    """One process-wide ILogger forwarding to :mod:`logging` (TensorRT keeps the first logger it sees)."""
    global _LOGGER
    if _LOGGER is None:
        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: collections.deque[str] = collections.deque(maxlen=8)

            def log(self, severity, msg):
                name = getattr(severity, "name", str(severity)).rsplit(".", 1)[-1]
                level = _LOG_LEVELS.get(name, logging.INFO)
                if level >= logging.ERROR:
                    self.errors.append(str(msg).strip().splitlines()[0] if str(msg).strip() else name)
                log.log(level, "TensorRT: %s", msg)

        _LOGGER = _Logger()
    return _LOGGER


def _engine_io(trt, engine) -> list[dict[str, Any]]:
    io = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name)
        io.append({
            "name": name,
            "mode": "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output",
            "dtype": _DTYPE_NAMES.get(dtype.name, dtype.name.lower()),
            "shape": [int(d) for d in engine.get_tensor_shape(name)],
        })
    return io


def _attach_timing_cache(config, path: str | None):
    if path is None:
        return None
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    try:
        cache = config.create_timing_cache(data)
        attached = cache is not None and config.set_timing_cache(cache, False)  # ignore_mismatch=False
    except Exception:  # noqa: BLE001 - the bindings raise several types for a foreign or corrupt cache
        attached = False
    if not attached:
        raise BatudeError(f"timing cache {path} was written by another TensorRT version or GPU, or is corrupt; "
                          "delete it or pass another timing_cache path")
    return cache


def _build(trt, version, onnx_path: Path, spec: EngineSpec, setup: dict) -> tuple[bytes, bytes | None]:
    logger = _trt_logger(trt)
    logger.errors.clear()
    builder = trt.Builder(logger)
    flags = 0
    for name in network_creation_flags(version, setup):
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)] or list(logger.errors) or ["unknown error"]
        raise BatudeError(f"TensorRT cannot parse {onnx_path}: {errors[0].splitlines()[0][:300]}")
    if network.num_inputs != 1:
        raise BatudeError(f"the ONNX model has {network.num_inputs} inputs; batude engines take exactly one image input")
    tensor = network.get_input(0)
    is_half = tensor.dtype == trt.DataType.HALF
    if is_half != (spec.onnx_dtype == "float16"):
        raise BatudeError(f"the ONNX input is {'float16' if is_half else _DTYPE_NAMES.get(tensor.dtype.name, tensor.dtype.name)} "
                          f"but onnx_dtype is {spec.onnx_dtype!r}; set onnx_dtype to the model's dtype")
    check_network_input(tensor.name, list(tensor.shape), spec)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    config.builder_optimization_level = spec.optimization_level
    for name in setup["builder_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in setup["clear_flags"]:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
        else:
            log.warning("TensorRT %s has no BuilderFlag.%s to clear; fp32 layers may use its default math", trt.__version__, name)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(spec).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    _attach_timing_cache(config, spec.timing_cache)
    log.info("building a TensorRT %s engine from %s (%s, batches %s, level %d)", trt.__version__, onnx_path,
             spec.precision.value, spec.batches, spec.optimization_level)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        reason = logger.errors[-1] if logger.errors else "see the TensorRT log (logger batude.export.trt)"
        raise BatudeError(f"TensorRT could not build an engine from {onnx_path}: {reason[:300]}")
    cache = bytes(config.get_timing_cache().serialize()) if spec.timing_cache is not None else None
    return bytes(serialized), cache


def _verify(runner: TrtRunner, onnx_path: Path, spec: EngineSpec) -> dict[str, Any]:
    """Compare the engine with onnxruntime (CPU) on random inputs at the min and opt batch."""
    from batude.export.onnx_export import require

    ort = require("onnxruntime")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    batches = sorted({spec.batches[0], spec.batches[1]})
    num = den = 0.0
    for batch in batches:
        x = torch.randn((batch, *spec.input_shape), generator=gen).to(getattr(torch, spec.onnx_dtype))
        refs = session.run(None, {spec.input_name: x.numpy()})
        outs = runner(x.to(runner.device))
        for got, ref in zip(outs if isinstance(outs, tuple) else (outs,), refs):
            ref = torch.from_numpy(ref).double()
            num += float((got.cpu().double() - ref).square().sum())
            den += float(ref.square().sum())
    rel, tol = math.sqrt(num / max(den, 1e-30)), TOLERANCE[spec.precision]
    if not rel <= tol:
        raise BatudeError(f"the TensorRT engine differs from onnxruntime: relative error {rel:.3g} > {tol:g}; "
                          "nothing was written; please report this model")
    return {"reference": "onnxruntime-cpu", "batches": batches, "rel_error": rel, "tolerance": tol}


def engine_from_onnx(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, spec: EngineSpec, *,
                     verify: bool = True) -> dict[str, Any]:
    """Build a TensorRT engine from an ONNX model, verify it, write it and its manifest; return the manifest.

    The precision is set up per installed version (:func:`precision_setup`; never a silent
    fallback). With ``verify`` the engine's outputs are compared with onnxruntime on random inputs
    (relative L2 error <= 1e-3 for fp32, 1e-2 for fp16) before anything is written. The engine is
    written atomically, then ``spec.timing_cache`` (loaded before the build when it exists), then
    ``<engine>.json``.
    """
    if not isinstance(spec, EngineSpec):
        raise BatudeError(f"spec must be an EngineSpec, not {type(spec).__name__}")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise BatudeError(f"ONNX model {onnx_path} does not exist; export it first (batude-export)")
    check_parent(engine_path)
    if spec.timing_cache is not None:
        check_parent(spec.timing_cache)
    trt = _require_tensorrt()
    version = tensorrt_version()
    if version is None:
        raise BatudeError(f"cannot read the TensorRT version from {getattr(trt, '__version__', None)!r}; reinstall tensorrt")
    setup = precision_setup(version, spec)
    _require_cuda()
    env = runtime_environment()
    engine_bytes, cache_bytes = _build(trt, version, onnx_path, spec, setup)
    runner = TrtRunner(engine_bytes)
    verification = _verify(runner, onnx_path, spec) if verify else None
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(engine_bytes)
    cache_sha = None
    if cache_bytes is not None:
        with atomic_path(spec.timing_cache) as tmp:
            tmp.write_bytes(cache_bytes)
        cache_sha = hashlib.sha256(cache_bytes).hexdigest()
    build = {**setup, "network_flags": network_creation_flags(version, setup)}
    manifest = build_manifest(onnx_path, engine_path, spec, env, cache_sha, build=build, io=runner.io,
                              verification=verification)
    write_text_atomic(manifest_path(engine_path), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("wrote %s and its manifest (%d bytes)", engine_path, len(engine_bytes))
    return manifest


class TrtRunner:
    """Runs one deserialized engine on torch CUDA tensors, on torch's current stream.

    Build it with :func:`load_engine` (which checks the manifest first). One execution context:
    not thread-safe; use one runner per thread. ``io`` lists the engine's tensors as
    ``{"name", "mode", "dtype", "shape"}`` (-1 = dynamic).
    """

    def __init__(self, engine_bytes: bytes, manifest: dict[str, Any] | None = None):
        trt = _require_tensorrt()
        self.device = _require_cuda()
        self.manifest = manifest
        self._logger = _trt_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self._engine is None:
            raise BatudeError("TensorRT could not deserialize the engine (built by another TensorRT or GPU?); "
                              "rebuild it with batude-export --trt")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BatudeError("TensorRT could not create an execution context (out of GPU memory?)")
        self.io = _engine_io(trt, self._engine)
        inputs = [t for t in self.io if t["mode"] == "input"]
        if len(inputs) != 1:
            raise BatudeError(f"the engine has {len(inputs)} inputs; TrtRunner runs single-input engines")
        self._input = inputs[0]
        if self._input["shape"] and self._input["shape"][0] == -1:
            lo, _, hi = self._engine.get_tensor_profile_shape(self._input["name"], 0)
            self.batch_range = (int(lo[0]), int(hi[0]))
        else:
            self.batch_range = (self._input["shape"][0],) * 2 if self._input["shape"] else (1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the engine on ``x`` ``(N, *input_shape)`` (on this runner's GPU, the engine's input dtype).

        Returns the output tensor (a tuple when the engine has several), allocated on ``x``'s
        device and written asynchronously on ``torch.cuda.current_stream()``.
        """
        name, want = self._input["name"], getattr(torch, self._input["dtype"])
        if not isinstance(x, torch.Tensor) or x.device != self.device:
            raise BatudeError(f"TrtRunner needs a torch tensor on {self.device}; got {getattr(x, 'device', type(x).__name__)}")
        if x.dtype != want:
            raise BatudeError(f"engine input {name!r} is {self._input['dtype']}, got {str(x.dtype).replace('torch.', '')}; "
                              f"convert it with x.to(torch.{self._input['dtype']})")
        if x.dim() != len(self._input["shape"]) or not self.batch_range[0] <= x.shape[0] <= self.batch_range[1]:
            raise BatudeError(f"input shape {tuple(x.shape)} does not fit the engine's {self._input['shape']} "
                              f"with batch {self.batch_range[0]}..{self.batch_range[1]}; rebuild with a wider profile")
        plan = io_binding_plan(self.io, int(x.shape[0]))
        x = x.contiguous()
        if tuple(x.shape) != next(p["shape"] for p in plan if p["name"] == name):
            raise BatudeError(f"input shape {tuple(x.shape)} does not match the engine's {self._input['shape']}")
        if not self._context.set_input_shape(name, tuple(x.shape)):
            raise BatudeError(f"TensorRT rejected input shape {tuple(x.shape)} for {name!r}")
        self._context.set_tensor_address(name, x.data_ptr())
        outputs = []
        for p in (p for p in plan if p["mode"] == "output"):
            shape = tuple(int(d) for d in self._context.get_tensor_shape(p["name"]))
            if shape != p["shape"]:
                raise BatudeError(f"TensorRT reports output {p['name']!r} shape {shape}, expected {p['shape']}")
            out = torch.empty(shape, dtype=getattr(torch, p["dtype"]), device=self.device)
            self._context.set_tensor_address(p["name"], out.data_ptr())
            outputs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            reason = self._logger.errors[-1] if self._logger.errors else "see the TensorRT log"
            raise BatudeError(f"TensorRT execution failed: {reason[:300]}")
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def load_engine(engine_path: str | os.PathLike) -> TrtRunner:
    """Load an engine built by :func:`engine_from_onnx` after checking its manifest against this machine."""
    _require_tensorrt()
    engine_path = Path(engine_path)
    manifest = read_manifest(engine_path)
    check_manifest(manifest, runtime_environment(), engine_path)
    data = engine_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest["engine"]["sha256"]:  # changed between the check and the read
        raise BatudeError(f"engine {engine_path} changed while loading; rebuild it with batude-export --trt")
    return TrtRunner(data, manifest)
