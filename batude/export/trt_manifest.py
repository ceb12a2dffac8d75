"""The pure half of the TensorRT exporter: engine specs, version rules, profiles, manifests, I/O plans.

Nothing here imports ``tensorrt`` or touches CUDA, so all of it is unit-tested on any machine;
:mod:`batude.export.trt` does the TensorRT calls and re-exports these names.

Precision rules by TensorRT version (see :func:`precision_setup`), following NVIDIA's 10.12 release
notes (weak typing deprecated) and the 10.x -> 11.x migration guide (``BuilderFlag.FP16`` removed,
networks always strongly typed):

- 8.6 <= v < 10.12: weakly typed network; FP16 sets ``BuilderFlag.FP16`` (fp32 or fp16 ONNX).
- 10.12 <= v < 11: strongly typed network (``STRONGLY_TYPED``); FP16 needs a float16 ONNX model,
  else :class:`BatudeError` (the deprecated flag is not used: same behaviour as on 11).
- v >= 11: strongly typed (always; no flag); FP16 needs a float16 ONNX model, else BatudeError.
- FP32 on every version: a float32 ONNX model, ``BuilderFlag.TF32`` cleared.

An fp16 ONNX model with an FP32 engine requested is an error on every version: its weights are
already rounded to fp16, so an "fp32" engine would not be what the manifest says.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Sequence

from batude._version import __version__
from batude.errors import BatudeError

__all__ = [
    "MANIFEST_FORMAT", "MANIFEST_VERSION", "MIN_TENSORRT", "TOLERANCE", "EngineSpec", "Precision",
    "build_manifest", "check_manifest", "check_network_input", "io_binding_plan", "manifest_path",
    "manifest_problems", "network_creation_flags", "parse_version", "precision_setup", "profile_shapes",
    "read_manifest", "sha256_file",
]

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "batude-tensorrt-engine"
MANIFEST_VERSION = 1
MIN_TENSORRT = (8, 6, 0)  # builder_optimization_level, named-tensor I/O and execute_async_v3 exist from 8.6
WEAK_TYPING_DEPRECATED = (10, 12, 0)
WEAK_TYPING_REMOVED = (11, 0, 0)
ONNX_DTYPES = ("float32", "float16")
TORCH_DTYPES = ("float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64", "bool")
ENV_KEYS = ("tensorrt", "cuda", "driver", "torch", "gpu", "compute_capability")
REBUILD = "rebuild it with batude-export --trt on this machine"


class Precision(str, Enum):
    """Precision of the engine's math: FP32 (TF32 disabled) or FP16."""

    FP32 = "fp32"
    FP16 = "fp16"


TOLERANCE = {Precision.FP32: 1e-3, Precision.FP16: 1e-2}  # relative L2 error, engine vs reference


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class EngineSpec:
    """What to build: one image input, a static batch or a dynamic-batch profile, precision and builder knobs.

    ``input_shape`` is per image (e.g. ``(3, 224, 224)``); full shapes are ``(batch, *input_shape)``.
    Give exactly one of ``batch`` (static) and ``profile`` (``(min, opt, max)`` batch sizes).
    ``onnx_dtype`` is the dtype of the ONNX model's input and weights. ``workspace_bytes`` caps the
    builder's scratch memory (bytes); ``optimization_level`` is TensorRT's builder_optimization_level
    (0..5, default 3). ``timing_cache`` is a file: loaded when it exists, saved after the build.
    """

    input_name: str
    input_shape: tuple[int, ...]
    batch: int | None = None
    profile: tuple[int, int, int] | None = None
    precision: Precision = Precision.FP32
    onnx_dtype: str = "float32"
    workspace_bytes: int = 1 << 30
    optimization_level: int = 3
    timing_cache: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.input_name, str) or not self.input_name:
            raise BatudeError(f"input_name must be the ONNX input's name (e.g. 'input'), not {self.input_name!r}")
        shape = self.input_shape
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or not shape \
                or not all(_is_int(d) and d >= 1 for d in shape):
            raise BatudeError(f"input_shape must be the per-image shape as positive integers, e.g. (3, 224, 224), not {shape!r}")
        object.__setattr__(self, "input_shape", tuple(shape))
        if (self.batch is None) == (self.profile is None):
            raise BatudeError("give exactly one of batch (static batch size) and profile ((min, opt, max) dynamic batch)")
        if self.batch is not None and not (_is_int(self.batch) and self.batch >= 1):
            raise BatudeError(f"batch must be a positive integer, not {self.batch!r}")
        if self.profile is not None:
            prof = self.profile
            if isinstance(prof, (str, bytes)) or not isinstance(prof, Sequence) or len(prof) != 3 \
                    or not all(_is_int(b) for b in prof) or not 1 <= prof[0] <= prof[1] <= prof[2]:
                raise BatudeError(f"profile must be (min, opt, max) batch sizes with 1 <= min <= opt <= max, not {prof!r}")
            object.__setattr__(self, "profile", tuple(prof))
        try:
            object.__setattr__(self, "precision", Precision(self.precision))
        except ValueError:
            raise BatudeError(f"precision must be one of {[p.value for p in Precision]}, not {self.precision!r}") from None
        if self.onnx_dtype not in ONNX_DTYPES:
            raise BatudeError(f"onnx_dtype must be one of {list(ONNX_DTYPES)} (the ONNX model's input dtype), not {self.onnx_dtype!r}")
        if not (_is_int(self.workspace_bytes) and self.workspace_bytes > 0):
            raise BatudeError(f"workspace_bytes must be a positive integer (bytes), not {self.workspace_bytes!r}")
        if not (_is_int(self.optimization_level) and 0 <= self.optimization_level <= 5):
            raise BatudeError(f"optimization_level must be an integer from 0 to 5, not {self.optimization_level!r}")
        if self.timing_cache is not None:
            if not isinstance(self.timing_cache, (str, os.PathLike)) or not str(self.timing_cache):
                raise BatudeError(f"timing_cache must be a file path or None, not {self.timing_cache!r}")
            object.__setattr__(self, "timing_cache", str(self.timing_cache))

    @property
    def batches(self) -> tuple[int, int, int]:
        """(min, opt, max) batch sizes; a static batch gives three equal numbers."""
        return self.profile if self.profile is not None else (self.batch, self.batch, self.batch)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["precision"] = self.precision.value
        out["input_shape"] = list(self.input_shape)
        out["profile"] = list(self.profile) if self.profile is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BatudeError(f"unknown EngineSpec field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**dict(data))


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """``"10.12.0.36"`` -> ``(10, 12, 0)``; None (or unparsable text) -> None."""
    if not text:
        return None
    parts = str(text).split(".")
    try:
        nums = [int(p) for p in parts[:3]]
    except ValueError:
        return None
    return tuple(nums + [0] * (3 - len(nums)))  # type: ignore[return-value]


def _vstr(version: Sequence[int]) -> str:
    return ".".join(str(v) for v in version)


def precision_setup(version: tuple[int, int, int], spec: EngineSpec) -> dict[str, Any]:
    """How to get ``spec.precision`` on TensorRT ``version``: ``{"strongly_typed", "builder_flags", "clear_flags"}``.

    ``builder_flags`` / ``clear_flags`` are ``trt.BuilderFlag`` member names to set / clear. FP32
    clears TF32 so that an FP32 engine computes in FP32. Raises :class:`BatudeError` instead of
    ever falling back to another precision (see the module docstring for the table).
    """
    if not (isinstance(version, tuple) and len(version) == 3 and all(_is_int(v) and v >= 0 for v in version)):
        raise BatudeError(f"TensorRT version must be (major, minor, patch), not {version!r}")
    if version < MIN_TENSORRT:
        raise BatudeError(f"TensorRT {_vstr(version)} is too old; batude needs TensorRT {_vstr(MIN_TENSORRT)} or newer")
    fp16_onnx = spec.onnx_dtype == "float16"
    if spec.precision is Precision.FP32:
        if fp16_onnx:
            raise BatudeError("the ONNX model is float16 but an fp32 engine was requested; "
                              "build with precision fp16, or export the ONNX model in float32 (without --fp16)")
        return {"strongly_typed": version >= WEAK_TYPING_DEPRECATED, "builder_flags": [], "clear_flags": ["TF32"]}
    if version < WEAK_TYPING_DEPRECATED:
        return {"strongly_typed": False, "builder_flags": ["FP16"], "clear_flags": []}
    if not fp16_onnx:
        why = ("TensorRT 11 removed BuilderFlag.FP16 (networks are always strongly typed)" if version >= WEAK_TYPING_REMOVED
               else "TensorRT 10.12 deprecated BuilderFlag.FP16 (weak typing), so batude builds strongly typed networks")
        raise BatudeError(f"an fp16 engine needs a float16 ONNX model on TensorRT {_vstr(version)}: {why}; "
                          "export the model with batude-export --fp16 (onnx_dtype='float16')")
    return {"strongly_typed": True, "builder_flags": [], "clear_flags": []}


def network_creation_flags(version: tuple[int, int, int], setup: Mapping[str, Any]) -> list[str]:
    """``trt.NetworkDefinitionCreationFlag`` member names for ``builder.create_network``.

    8.x networks are implicit-batch unless EXPLICIT_BATCH is set (ignored from 10.0); STRONGLY_TYPED
    is an opt-in on 10.x and deprecated, ignored and therefore omitted from 11.0 on.
    """
    flags = []
    if version < (10, 0, 0):
        flags.append("EXPLICIT_BATCH")
    if setup["strongly_typed"] and version < WEAK_TYPING_REMOVED:
        flags.append("STRONGLY_TYPED")
    return flags


def profile_shapes(spec: EngineSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Input name -> (min, opt, max) full shapes for ``IOptimizationProfile.set_shape``."""
    lo, opt, hi = spec.batches
    return {spec.input_name: tuple((b, *spec.input_shape) for b in (lo, opt, hi))}  # type: ignore[dict-item]


def check_network_input(name: str, dims: Sequence[int], spec: EngineSpec) -> None:
    """Check the parsed ONNX input (``dims`` with -1 for dynamic axes) against ``spec``."""
    dims = [int(d) for d in dims]
    if name != spec.input_name:
        raise BatudeError(f"the ONNX model's input is named {name!r}, not {spec.input_name!r}; set input_name={name!r}")
    if len(dims) != 1 + len(spec.input_shape) or any(d not in (-1, w) for d, w in zip(dims[1:], spec.input_shape)):
        raise BatudeError(f"the ONNX input {name!r} has shape {dims} (-1 = dynamic) but the spec asks for "
                          f"(batch, {', '.join(map(str, spec.input_shape))}); fix input_shape or re-export the model")
    if dims[0] != -1 and spec.profile is not None:
        raise BatudeError(f"the ONNX model has a static batch of {dims[0]} but a dynamic-batch profile was requested; "
                          "export it with a dynamic batch, or build with batch=" + str(dims[0]))
    if dims[0] != -1 and dims[0] != spec.batch:
        raise BatudeError(f"the ONNX model has a static batch of {dims[0]}, not {spec.batch}; "
                          f"build with batch={dims[0]} or export it with a dynamic batch")


def io_binding_plan(io: Sequence[Mapping[str, Any]], batch: int) -> list[dict[str, Any]]:
    """Concrete shapes and torch dtype names for binding engine I/O at ``batch``.

    ``io``: ``[{"name", "mode": "input"|"output", "dtype": "float32"|..., "shape": [-1, 3, 224, 224]}]``
    as the engine reports them (-1 = dynamic). Only dimension 0 may be dynamic; it becomes ``batch``.
    An input with a static dimension 0 must equal ``batch``. Returns
    ``[{"name", "mode", "dtype", "shape": tuple}]`` in the same order.
    """
    if not _is_int(batch) or batch < 1:
        raise BatudeError(f"batch must be a positive integer, not {batch!r}")
    plan, seen = [], set()
    for entry in io:
        try:
            name, mode, dtype, shape = entry["name"], entry["mode"], entry["dtype"], [int(d) for d in entry["shape"]]
        except (KeyError, TypeError, ValueError):
            raise BatudeError(f"engine I/O description {dict(entry)!r} needs name, mode, dtype and an integer shape") from None
        if name in seen:
            raise BatudeError(f"engine tensor {name!r} is listed twice")
        seen.add(name)
        if mode not in ("input", "output"):
            raise BatudeError(f"engine tensor {name!r} has mode {mode!r}; expected 'input' or 'output'")
        if dtype not in TORCH_DTYPES:
            raise BatudeError(f"engine tensor {name!r} has dtype {dtype}, which batude cannot bind to a torch tensor; "
                              f"rebuild the engine with {'/'.join(TORCH_DTYPES[:3])} I/O")
        for axis, d in enumerate(shape):
            if d < -1 or (d == -1 and axis > 0):
                raise BatudeError(f"engine tensor {name!r} has shape {shape}: only the batch (axis 0) may be dynamic; "
                                  "export the ONNX model with static image sizes")
        if mode == "input" and shape and shape[0] not in (-1, batch):
            raise BatudeError(f"the engine was built for batch {shape[0]}, not {batch}; "
                              "rebuild it for this batch or with a dynamic-batch profile")
        concrete = tuple(batch if (axis == 0 and d == -1) else d for axis, d in enumerate(shape))
        plan.append({"name": name, "mode": mode, "dtype": dtype, "shape": concrete})
    if not any(p["mode"] == "input" for p in plan) or not any(p["mode"] == "output" for p in plan):
        raise BatudeError("the engine must have at least one input and one output tensor")
    return plan


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_path(engine_path: str | os.PathLike) -> Path:
    """The manifest beside an engine: ``model.plan`` -> ``model.plan.json``."""
    engine = Path(engine_path)
    return engine.with_name(engine.name + ".json")


def build_manifest(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, spec: EngineSpec, env: Mapping[str, Any],
                   timing_cache_sha256: str | None, **extra: Any) -> dict[str, Any]:
    """The JSON manifest written beside an engine (see :func:`check_manifest` for how it is used).

    ``env`` comes from :func:`batude.export.trt.runtime_environment`; ``extra`` adds keys such as
    ``build`` (the precision setup), ``io`` and ``verification``.
    """
    for what, path in (("ONNX model", onnx_path), ("engine", engine_path)):
        if not Path(path).is_file():
            raise BatudeError(f"cannot write the manifest: the {what} {path} does not exist")
    lo, opt, hi = profile_shapes(spec)[spec.input_name]
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "batude": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "env": {key: env.get(key) for key in ENV_KEYS},
        "precision": spec.precision.value,
        "onnx_dtype": spec.onnx_dtype,
        "dynamic_batch": spec.profile is not None,
        "profiles": [{spec.input_name: {"min": list(lo), "opt": list(opt), "max": list(hi)}}],
        "optimization_level": spec.optimization_level,
        "workspace_bytes": spec.workspace_bytes,
        "spec": spec.to_dict(),
        "onnx": {"path": str(onnx_path), "sha256": sha256_file(onnx_path)},
        "engine": {"file": Path(engine_path).name, "bytes": Path(engine_path).stat().st_size, "sha256": sha256_file(engine_path)},
        "timing_cache": None if spec.timing_cache is None else {"path": spec.timing_cache, "sha256": timing_cache_sha256},
    }
    manifest.update(extra)
    return manifest


def manifest_problems(manifest: Mapping[str, Any], env: Mapping[str, Any], engine_sha256: str) -> tuple[list[str], list[str]]:
    """(fatal, warnings) for running the manifest's engine in ``env`` with an engine file of ``engine_sha256``.

    Fatal: another TensorRT major.minor.patch (or none), another GPU compute capability (or no GPU),
    an engine file whose hash differs from the manifest. Warnings only: another GPU name with the
    same compute capability (e.g. an H100 PCIe engine on an H100 SXM runs, tuned for the other
    SKU), another CUDA, driver or torch version (the engine depends on TensorRT, not on them).
    """
    found = manifest.get("format") if isinstance(manifest, Mapping) else type(manifest).__name__
    if found != MANIFEST_FORMAT:
        raise BatudeError(f"not a batude TensorRT manifest (format {found!r}, expected {MANIFEST_FORMAT!r}); {REBUILD}")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise BatudeError(f"manifest format version {manifest.get('format_version')!r} is not {MANIFEST_VERSION}; {REBUILD}")
    built, engine = manifest.get("env"), manifest.get("engine")
    if not isinstance(built, Mapping) or not isinstance(engine, Mapping) or "sha256" not in engine:
        raise BatudeError(f"the manifest lacks its env or engine hash; {REBUILD}")
    fatal, warnings = [], []
    trt_built, trt_here = parse_version(built.get("tensorrt")), parse_version(env.get("tensorrt"))
    if trt_here is None:
        fatal.append(f"TensorRT is not installed here (the engine needs TensorRT {built.get('tensorrt')})")
    elif trt_built != trt_here:
        fatal.append(f"TensorRT version {built.get('tensorrt')} built it but {env.get('tensorrt')} is installed")
    cc_built, cc_here = built.get("compute_capability"), env.get("compute_capability")
    if cc_here is None:
        fatal.append(f"no CUDA GPU here (the engine was built for compute capability {cc_built})")
    elif cc_built != cc_here:
        fatal.append(f"GPU compute capability {cc_built} built it but this GPU is {cc_here}")
    if engine.get("sha256") != engine_sha256:
        fatal.append("the engine file's sha256 differs from the manifest (file changed or corrupted)")
    if cc_here is not None and built.get("gpu") != env.get("gpu"):
        warnings.append(f"GPU name {built.get('gpu')!r} built it, this is {env.get('gpu')!r} (same compute capability)")
    for key in ("cuda", "driver", "torch"):
        if built.get(key) != env.get(key):
            warnings.append(f"{key} {built.get(key)} built it, {env.get(key)} is here")
    return fatal, warnings


def check_manifest(manifest: Mapping[str, Any], env: Mapping[str, Any], engine_path: str | os.PathLike) -> None:
    """Refuse an engine that cannot run here: raise :class:`BatudeError` naming every fatal mismatch.

    See :func:`manifest_problems` for what is fatal; warnings are logged.
    """
    engine = Path(engine_path)
    if not engine.is_file():
        raise BatudeError(f"engine file {engine} does not exist; build it with batude-export --trt")
    fatal, warnings = manifest_problems(manifest, env, sha256_file(engine))
    for warning in warnings:
        log.warning("engine %s: %s", engine, warning)
    if fatal:
        raise BatudeError(f"engine {engine} cannot be used here: {'; '.join(fatal)}; {REBUILD}")


def read_manifest(engine_path: str | os.PathLike) -> dict[str, Any]:
    """Load ``<engine>.json``; raise :class:`BatudeError` when it is missing or not JSON."""
    path = manifest_path(engine_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BatudeError(f"engine {engine_path} has no manifest {path}; {REBUILD}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BatudeError(f"cannot read the manifest {path}: {type(err).__name__}; {REBUILD}") from None
    if not isinstance(data, dict):
        raise BatudeError(f"the manifest {path} is not a JSON object; {REBUILD}")
    return data
