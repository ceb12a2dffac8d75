"""TensorRT exporter: the pure rules run everywhere; real engine builds need TensorRT and a CUDA GPU.

Tolerances (relative L2 error against a float64 PyTorch reference): fp32 engine <= 1e-3, fp16
engine <= 1e-2. Without TensorRT, "missing TensorRT" is simulated by ``sys.modules["tensorrt"] =
None`` (import fails), never by a fake module.
"""

import datetime
import hashlib
import importlib.util
import json
import logging
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from batude import __version__
from batude.errors import BatudeError
from batude.export.trt import (
    TRT_MISSING, EngineSpec, Precision, TrtRunner, build_manifest, check_manifest, engine_from_onnx, io_binding_plan,
    load_engine, manifest_path, precision_setup, profile_shapes, runtime_environment, tensorrt_version,
)
from batude.export.trt_manifest import (
    MANIFEST_FORMAT, check_network_input, manifest_problems, network_creation_flags, read_manifest,
)

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = torch.cuda.is_available()
SHAPE = (3, 16, 16)


def needs_trt_gpu(fn):
    """Mark a test as needing TensorRT and a CUDA GPU, skipping it with a reason otherwise."""
    for mark in (pytest.mark.trt, pytest.mark.gpu,
                 pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed (pip install 'batude[trt]')"),
                 pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")):
        fn = mark(fn)
    return fn


class TwoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def export_two_conv(path, dtype=torch.float32, batch=2, dynamic=False):
    """Export a seeded 2-conv model with the TorchScript exporter; return the (CPU, ``dtype``) model."""
    torch.manual_seed(0)
    model = TwoConv().eval().to(dtype)
    x = torch.randn(batch, *SHAPE).to(dtype)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["output"], opset_version=17,
                          dynamo=False, dynamic_axes=axes)
    return model


def rel_error(got, ref):
    got, ref = got.detach().cpu().double(), ref.detach().cpu().double()
    return float((got - ref).norm() / ref.norm())


def spec(**kw):
    base = dict(input_name="input", input_shape=SHAPE, batch=2)
    base.update(kw)
    return EngineSpec(**base)


# ---------------------------------------------------------------- EngineSpec

BAD_SPECS = {
    "empty-name": (dict(input_name=""), "input_name"),
    "name-not-str": (dict(input_name=3), "input_name"),
    "shape-empty": (dict(input_shape=()), "input_shape"),
    "shape-zero": (dict(input_shape=(3, 0, 16)), "input_shape"),
    "shape-float": (dict(input_shape=(3, 16.0, 16)), "input_shape"),
    "shape-str": (dict(input_shape="3,16,16"), "input_shape"),
    "batch-and-profile": (dict(profile=(1, 2, 4)), "exactly one"),
    "neither": (dict(batch=None), "exactly one"),
    "batch-zero": (dict(batch=0), "batch"),
    "batch-bool": (dict(batch=True), "batch"),
    "profile-unordered": (dict(batch=None, profile=(4, 2, 8)), "min <= opt <= max"),
    "profile-min-zero": (dict(batch=None, profile=(0, 1, 2)), "min <= opt <= max"),
    "profile-two": (dict(batch=None, profile=(1, 2)), "min <= opt <= max"),
    "profile-float": (dict(batch=None, profile=(1, 2.0, 4)), "min <= opt <= max"),
    "precision": (dict(precision="int8"), "precision"),
    "onnx-dtype": (dict(onnx_dtype="bfloat16"), "onnx_dtype"),
    "workspace-zero": (dict(workspace_bytes=0), "workspace_bytes"),
    "workspace-float": (dict(workspace_bytes=1e9), "workspace_bytes"),
    "level-6": (dict(optimization_level=6), "optimization_level"),
    "level-negative": (dict(optimization_level=-1), "optimization_level"),
    "timing-cache-empty": (dict(timing_cache=""), "timing_cache"),
}


@pytest.mark.parametrize("kw,fragment", list(BAD_SPECS.values()), ids=list(BAD_SPECS))
def test_engine_spec_rejects_bad_fields(kw, fragment):
    with pytest.raises(BatudeError, match=fragment) as err:
        spec(**kw)
    assert "\n" not in str(err.value)


def test_engine_spec_normalises_and_round_trips():
    s = EngineSpec("input", [3, 16, 16], profile=[1, 4, 8], precision="fp16", onnx_dtype="float16", timing_cache="tc.bin")
    assert s.input_shape == (3, 16, 16) and s.profile == (1, 4, 8) and s.precision is Precision.FP16
    assert s.batches == (1, 4, 8) and spec().batches == (2, 2, 2)
    data = json.loads(json.dumps(s.to_dict()))
    assert data["precision"] == "fp16" and data["profile"] == [1, 4, 8]
    assert EngineSpec.from_dict(data) == s
    with pytest.raises(BatudeError, match="unknown EngineSpec field"):
        EngineSpec.from_dict({**data, "int8": True})


# ---------------------------------------------------------------- precision by TensorRT version

WEAK_FP32 = {"strongly_typed": False, "builder_flags": [], "clear_flags": ["TF32"]}
WEAK_FP16 = {"strongly_typed": False, "builder_flags": ["FP16"], "clear_flags": []}
STRONG_FP32 = {"strongly_typed": True, "builder_flags": [], "clear_flags": ["TF32"]}
STRONG_FP16 = {"strongly_typed": True, "builder_flags": [], "clear_flags": []}
FP16_ONNX_FP32_ENGINE = "ONNX model is float16 but an fp32 engine"
PRECISION_TABLE = {
    # (version, precision, onnx dtype): decision dict, or the error fragment
    ((8, 6, 1), "fp32", "float32"): WEAK_FP32,
    ((8, 6, 1), "fp32", "float16"): FP16_ONNX_FP32_ENGINE,
    ((8, 6, 1), "fp16", "float32"): WEAK_FP16,
    ((8, 6, 1), "fp16", "float16"): WEAK_FP16,
    ((10, 11, 0), "fp32", "float32"): WEAK_FP32,
    ((10, 11, 0), "fp32", "float16"): FP16_ONNX_FP32_ENGINE,
    ((10, 11, 0), "fp16", "float32"): WEAK_FP16,
    ((10, 11, 0), "fp16", "float16"): WEAK_FP16,
    ((10, 12, 0), "fp32", "float32"): STRONG_FP32,
    ((10, 12, 0), "fp32", "float16"): FP16_ONNX_FP32_ENGINE,
    ((10, 12, 0), "fp16", "float32"): "TensorRT 10.12 deprecated BuilderFlag.FP16",
    ((10, 12, 0), "fp16", "float16"): STRONG_FP16,
    ((11, 0, 0), "fp32", "float32"): STRONG_FP32,
    ((11, 0, 0), "fp32", "float16"): FP16_ONNX_FP32_ENGINE,
    ((11, 0, 0), "fp16", "float32"): "TensorRT 11 removed BuilderFlag.FP16",
    ((11, 0, 0), "fp16", "float16"): STRONG_FP16,
}


@pytest.mark.parametrize("case,expected", list(PRECISION_TABLE.items()),
                         ids=[f"trt{'.'.join(map(str, v))}-{p}-onnx_{d}" for v, p, d in PRECISION_TABLE])
def test_precision_setup_by_version(case, expected):
    version, precision, dtype = case
    s = spec(precision=precision, onnx_dtype=dtype)
    if isinstance(expected, dict):
        assert precision_setup(version, s) == expected
    else:
        with pytest.raises(BatudeError, match=expected) as err:
            precision_setup(version, s)
        assert "\n" not in str(err.value)
        if precision == "fp16":  # the fix is named
            assert "--fp16" in str(err.value)


@pytest.mark.parametrize("version", [(8, 5, 3), (7, 2, 1)], ids=["8.5.3", "7.2.1"])
def test_precision_setup_refuses_old_tensorrt(version):
    with pytest.raises(BatudeError, match="too old"):
        precision_setup(version, spec())


@pytest.mark.parametrize("version", [(10, 12), "10.12.0", (10, -1, 0), (10, 12, 0.5)], ids=["two", "str", "negative", "float"])
def test_precision_setup_rejects_malformed_versions(version):
    with pytest.raises(BatudeError, match="major, minor, patch"):
        precision_setup(version, spec())


@pytest.mark.parametrize("version,strong,expected", [
    ((8, 6, 1), False, ["EXPLICIT_BATCH"]),
    ((10, 11, 0), False, []),
    ((10, 12, 0), True, ["STRONGLY_TYPED"]),
    ((11, 0, 0), True, []),  # strong typing is always on; the flag is deprecated and ignored
], ids=["8.6.1", "10.11.0", "10.12.0", "11.0.0"])
def test_network_creation_flags(version, strong, expected):
    assert network_creation_flags(version, {"strongly_typed": strong}) == expected


# ---------------------------------------------------------------- profiles and input checks

def test_profile_shapes_static_and_dynamic():
    assert profile_shapes(spec(batch=8)) == {"input": ((8, 3, 16, 16),) * 3}
    dyn = EngineSpec("x", (3, 224, 224), profile=(1, 16, 64))
    assert profile_shapes(dyn) == {"x": ((1, 3, 224, 224), (16, 3, 224, 224), (64, 3, 224, 224))}


@pytest.mark.parametrize("dims,kw", [
    ([-1, 3, 16, 16], {}),
    ([-1, 3, 16, 16], dict(batch=None, profile=(1, 2, 4))),
    ([2, 3, 16, 16], {}),
    ([-1, 3, -1, -1], {}),  # dynamic image size: the profile fixes it
], ids=["dynamic-static", "dynamic-profile", "static-match", "dynamic-hw"])
def test_check_network_input_accepts(dims, kw):
    check_network_input("input", dims, spec(**kw))


@pytest.mark.parametrize("name,dims,kw,fragment", [
    ("images", [-1, 3, 16, 16], {}, "named 'images'"),
    ("input", [-1, 3, 16], {}, "has shape"),
    ("input", [-1, 1, 16, 16], {}, "has shape"),
    ("input", [2, 3, 16, 16], dict(batch=4), "static batch of 2, not 4"),
    ("input", [2, 3, 16, 16], dict(batch=None, profile=(1, 2, 4)), "dynamic-batch profile"),
], ids=["name", "rank", "channels", "static-batch", "static-vs-profile"])
def test_check_network_input_rejects(name, dims, kw, fragment):
    with pytest.raises(BatudeError, match=fragment):
        check_network_input(name, dims, spec(**kw))


# ---------------------------------------------------------------- I/O binding plans

IO_DYNAMIC = [{"name": "input", "mode": "input", "dtype": "float16", "shape": [-1, 3, 224, 224]},
              {"name": "output", "mode": "output", "dtype": "float16", "shape": [-1, 1000]}]


def test_io_binding_plan_fills_the_batch():
    assert io_binding_plan(IO_DYNAMIC, 8) == [
        {"name": "input", "mode": "input", "dtype": "float16", "shape": (8, 3, 224, 224)},
        {"name": "output", "mode": "output", "dtype": "float16", "shape": (8, 1000)},
    ]


def test_io_binding_plan_static_engine():
    io = [{"name": "x", "mode": "input", "dtype": "float32", "shape": [4, 3, 8, 8]},
          {"name": "y", "mode": "output", "dtype": "int64", "shape": [10]}]  # an output without a batch axis
    assert [p["shape"] for p in io_binding_plan(io, 4)] == [(4, 3, 8, 8), (10,)]
    with pytest.raises(BatudeError, match="built for batch 4, not 2"):
        io_binding_plan(io, 2)


@pytest.mark.parametrize("io,batch,fragment", [
    ([{**IO_DYNAMIC[0], "dtype": "fp8"}, IO_DYNAMIC[1]], 1, "dtype fp8"),
    ([{**IO_DYNAMIC[0], "dtype": "int4"}, IO_DYNAMIC[1]], 1, "dtype int4"),
    ([{**IO_DYNAMIC[0], "shape": [-1, 3, -1, 224]}, IO_DYNAMIC[1]], 1, "only the batch"),
    ([IO_DYNAMIC[0], {**IO_DYNAMIC[1], "shape": [-1, -1]}], 1, "only the batch"),
    ([{**IO_DYNAMIC[0], "shape": [-2, 3, 8, 8]}, IO_DYNAMIC[1]], 1, "only the batch"),
    ([{**IO_DYNAMIC[0], "mode": "both"}, IO_DYNAMIC[1]], 1, "mode 'both'"),
    ([IO_DYNAMIC[0], {**IO_DYNAMIC[1], "name": "input"}], 1, "listed twice"),
    ([IO_DYNAMIC[0]], 1, "at least one input and one output"),
    ([{"name": "input", "mode": "input"}, IO_DYNAMIC[1]], 1, "needs name, mode, dtype"),
    (IO_DYNAMIC, 0, "positive integer"),
], ids=["fp8", "int4", "dynamic-hw", "dynamic-output", "bad-dim", "mode", "duplicate", "no-output", "missing-keys", "batch-0"])
def test_io_binding_plan_rejects(io, batch, fragment):
    with pytest.raises(BatudeError, match=fragment):
        io_binding_plan(io, batch)


# ---------------------------------------------------------------- manifests

ENV = {"tensorrt": "10.12.0", "cuda": "12.8", "driver": "570.86.15", "torch": "2.11.0",
       "gpu": "NVIDIA H200", "compute_capability": "9.0"}


@pytest.fixture
def built(tmp_path):
    """A real ONNX-sized file, an engine file and a timing cache file, and a manifest over them."""
    onnx, engine, cache = tmp_path / "m.onnx", tmp_path / "m.plan", tmp_path / "tc.bin"
    onnx.write_bytes(b"onnx bytes " * 100)
    engine.write_bytes(b"\x00engine bytes" * 100)
    cache.write_bytes(b"timing cache")
    s = spec(batch=None, profile=(1, 4, 8), timing_cache=str(cache), optimization_level=5, workspace_bytes=1 << 28)
    manifest = build_manifest(onnx, engine, s, ENV, hashlib.sha256(cache.read_bytes()).hexdigest(), build={"x": 1})
    return manifest, engine, onnx, cache


def test_build_manifest_records_everything(built):
    manifest, engine, onnx, cache = built
    assert manifest["format"] == MANIFEST_FORMAT and manifest["format_version"] == 1 and manifest["batude"] == __version__
    created = datetime.datetime.fromisoformat(manifest["created"])
    assert created.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - created).total_seconds()) < 60
    assert manifest["env"] == ENV
    assert manifest["precision"] == "fp32" and manifest["onnx_dtype"] == "float32" and manifest["dynamic_batch"]
    assert manifest["profiles"] == [{"input": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16]}}]
    assert manifest["optimization_level"] == 5 and manifest["workspace_bytes"] == 1 << 28
    assert manifest["onnx"]["sha256"] == hashlib.sha256(onnx.read_bytes()).hexdigest()
    assert manifest["engine"] == {"file": "m.plan", "bytes": 1300, "sha256": hashlib.sha256(engine.read_bytes()).hexdigest()}
    assert manifest["timing_cache"] == {"path": str(cache), "sha256": hashlib.sha256(b"timing cache").hexdigest()}
    assert manifest["build"] == {"x": 1}
    assert EngineSpec.from_dict(manifest["spec"]).profile == (1, 4, 8)
    assert json.loads(json.dumps(manifest)) == manifest
    assert manifest_path(engine) == engine.parent / "m.plan.json"


def test_build_manifest_needs_both_files(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(BatudeError, match="engine .* does not exist"):
        build_manifest(tmp_path / "m.onnx", tmp_path / "missing.plan", spec(), ENV, None)


def test_check_manifest_accepts_the_same_machine(built, caplog):
    manifest, engine, _, _ = built
    with caplog.at_level(logging.WARNING):
        check_manifest(manifest, ENV, engine)
        check_manifest(manifest, {**ENV, "tensorrt": "10.12.0.36"}, engine)  # build number does not matter
    assert caplog.records == []


@pytest.mark.parametrize("change,fragment", [
    ({"tensorrt": "10.12.1"}, "TensorRT version 10.12.0 built it but 10.12.1 is installed"),
    ({"tensorrt": "10.13.0.35"}, "TensorRT version 10.12.0 built it but 10.13.0.35"),
    ({"tensorrt": "11.0.0"}, "TensorRT version 10.12.0"),
    ({"tensorrt": None}, "TensorRT is not installed here"),
    ({"compute_capability": "8.0"}, "compute capability 9.0 built it but this GPU is 8.0"),
    ({"compute_capability": None, "gpu": None}, "no CUDA GPU here"),
], ids=["patch", "minor", "major", "no-trt", "compute-capability", "no-gpu"])
def test_check_manifest_rejects_each_fatal_mismatch(built, change, fragment):
    manifest, engine, _, _ = built
    with pytest.raises(BatudeError, match=fragment) as err:
        check_manifest(manifest, {**ENV, **change}, engine)
    assert "\n" not in str(err.value) and str(err.value).endswith("rebuild it with batude-export --trt on this machine")


@pytest.mark.parametrize("change,fragment", [
    ({"gpu": "NVIDIA H100 80GB HBM3"}, "GPU name"),
    ({"cuda": "13.0"}, "cuda 12.8"),
    ({"driver": "580.1"}, "driver"),
    ({"torch": "2.14.1"}, "torch"),
], ids=["gpu-name", "cuda", "driver", "torch"])
def test_check_manifest_only_warns_about_the_rest(built, caplog, change, fragment):
    manifest, engine, _, _ = built
    with caplog.at_level(logging.WARNING, logger="batude.export.trt_manifest"):
        check_manifest(manifest, {**ENV, **change}, engine)
    assert any(fragment in r.getMessage() for r in caplog.records), caplog.text


def test_check_manifest_rejects_a_modified_engine(built):
    manifest, engine, _, _ = built
    data = bytearray(engine.read_bytes())
    data[10] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(BatudeError, match="sha256 differs"):
        check_manifest(manifest, ENV, engine)


def test_check_manifest_names_every_mismatch_in_one_line(built):
    manifest, engine, _, _ = built
    engine.write_bytes(b"another engine")
    with pytest.raises(BatudeError) as err:
        check_manifest(manifest, {**ENV, "tensorrt": "11.0.0", "compute_capability": "10.0"}, engine)
    message = str(err.value)
    assert "\n" not in message
    assert all(part in message for part in ("TensorRT version", "compute capability", "sha256", "batude-export --trt"))


@pytest.mark.parametrize("edit,fragment", [
    (lambda m: m.update(format="onnx"), "not a batude TensorRT manifest"),
    (lambda m: m.update(format_version=2), "format version 2"),
    (lambda m: m.pop("env"), "lacks its env"),
    (lambda m: m["engine"].pop("sha256"), "lacks its env or engine hash"),
], ids=["format", "version", "no-env", "no-hash"])
def test_check_manifest_rejects_malformed_manifests(built, edit, fragment):
    manifest, engine, _, _ = built
    manifest = json.loads(json.dumps(manifest))
    edit(manifest)
    with pytest.raises(BatudeError, match=fragment):
        check_manifest(manifest, ENV, engine)


def test_check_manifest_needs_the_engine_file(built, tmp_path):
    manifest, _, _, _ = built
    with pytest.raises(BatudeError, match="does not exist"):
        check_manifest(manifest, ENV, tmp_path / "gone.plan")
    with pytest.raises(BatudeError, match="not a batude TensorRT manifest"):
        manifest_problems([1, 2], ENV, "0" * 64)


def test_read_manifest(built, tmp_path):
    manifest, engine, _, _ = built
    with pytest.raises(BatudeError, match="has no manifest"):
        read_manifest(engine)
    manifest_path(engine).write_text(json.dumps(manifest))
    assert read_manifest(engine) == manifest
    manifest_path(engine).write_text("{not json")
    with pytest.raises(BatudeError, match="cannot read the manifest"):
        read_manifest(engine)
    manifest_path(engine).write_text("[1]")
    with pytest.raises(BatudeError, match="not a JSON object"):
        read_manifest(engine)


# ---------------------------------------------------------------- environment and missing TensorRT

def test_import_is_lean():
    code = ("import sys, torch, batude.export.trt\n"
            "print(sorted(m for m in ('tensorrt', 'onnxruntime', 'onnx') if m in sys.modules), torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] False"


def test_runtime_environment_here():
    code = ("import json, torch\nfrom batude.export.trt import runtime_environment\n"
            "env = runtime_environment()\nprint(json.dumps([env, torch.cuda.is_initialized()]))")
    env, initialised = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                 check=True).stdout)
    assert set(env) == {"tensorrt", "cuda", "driver", "torch", "gpu", "compute_capability"}
    assert env["torch"] == torch.__version__ and env["cuda"] == torch.version.cuda
    assert (env["tensorrt"] is None) == (tensorrt_version() is None)
    if HAS_CUDA:
        assert isinstance(env["gpu"], str) and env["compute_capability"] == "{}.{}".format(*torch.cuda.get_device_capability())
    else:
        assert env["gpu"] is None and env["compute_capability"] is None
        assert initialised is False


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make ``import tensorrt`` fail as on a machine without it (no stand-in module)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_tensorrt_version_without_tensorrt(no_tensorrt):
    assert tensorrt_version() is None
    assert runtime_environment()["tensorrt"] is None


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_tensorrt_is_really_absent_here():
    assert tensorrt_version() is None


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


def test_engine_from_onnx_without_tensorrt(no_tensorrt, tmp_path):
    export_two_conv(tmp_path / "m.onnx")
    before = _files(tmp_path)
    with pytest.raises(BatudeError) as err:
        engine_from_onnx(tmp_path / "m.onnx", tmp_path / "m.plan", spec(timing_cache=str(tmp_path / "tc.bin")))
    assert str(err.value) == TRT_MISSING
    assert "\n" not in TRT_MISSING and "pip install 'batude[trt]'" in TRT_MISSING
    assert _files(tmp_path) == before


def test_load_engine_and_runner_without_tensorrt(no_tensorrt, tmp_path):
    (tmp_path / "m.plan").write_bytes(b"engine")
    before = _files(tmp_path)
    with pytest.raises(BatudeError) as err:
        load_engine(tmp_path / "m.plan")
    assert str(err.value) == TRT_MISSING
    with pytest.raises(BatudeError) as err:
        TrtRunner(b"engine")
    assert str(err.value) == TRT_MISSING
    assert _files(tmp_path) == before


@pytest.mark.parametrize("case", ["no-onnx", "no-folder", "not-a-spec"])
def test_engine_from_onnx_checks_its_arguments_first(tmp_path, case):
    (tmp_path / "m.onnx").write_bytes(b"x")
    args = {"no-onnx": (tmp_path / "missing.onnx", tmp_path / "m.plan", spec()),
            "no-folder": (tmp_path / "m.onnx", tmp_path / "nope" / "m.plan", spec()),
            "not-a-spec": (tmp_path / "m.onnx", tmp_path / "m.plan", {"batch": 2})}[case]
    with pytest.raises(BatudeError, match={"no-onnx": "does not exist; export it", "no-folder": "folder .* does not exist",
                                           "not-a-spec": "must be an EngineSpec"}[case]):
        engine_from_onnx(*args)
    assert not (tmp_path / "m.plan").exists()


# ---------------------------------------------------------------- real TensorRT builds (TensorRT + GPU)

@needs_trt_gpu
def test_fp32_static_engine_matches_pytorch(tmp_path):
    model = export_two_conv(tmp_path / "m.onnx", batch=2)
    cache = tmp_path / "tc.bin"
    manifest = engine_from_onnx(tmp_path / "m.onnx", tmp_path / "m.plan", spec(timing_cache=str(cache)))
    assert json.loads(manifest_path(tmp_path / "m.plan").read_text()) == manifest
    assert manifest["verification"]["rel_error"] <= 1e-3 and manifest["env"]["tensorrt"] is not None
    assert manifest["timing_cache"]["sha256"] == hashlib.sha256(cache.read_bytes()).hexdigest()
    assert [t["shape"] for t in manifest["io"]] == [[2, 3, 16, 16], [2, 4, 16, 16]]
    runner = load_engine(tmp_path / "m.plan")
    x = torch.randn(2, *SHAPE)
    got = runner(x.cuda())
    assert got.shape == (2, 4, 16, 16) and got.dtype == torch.float32
    assert rel_error(got, model.double()(x.double())) <= 1e-3
    with pytest.raises(BatudeError, match="built for batch|does not fit"):
        runner(torch.randn(3, *SHAPE, device="cuda"))
    with pytest.raises(BatudeError, match="needs a torch tensor on cuda"):
        runner(x)
    with pytest.raises(BatudeError, match="is float32, got float16"):
        runner(x.cuda().half())


@needs_trt_gpu
def test_fp32_dynamic_engine_and_timing_cache_reuse(tmp_path):
    model = export_two_conv(tmp_path / "m.onnx", dynamic=True)
    cache = tmp_path / "tc.bin"
    s = spec(batch=None, profile=(1, 2, 4), timing_cache=str(cache), optimization_level=1)
    engine_from_onnx(tmp_path / "m.onnx", tmp_path / "a.plan", s)
    assert cache.stat().st_size > 0
    manifest = engine_from_onnx(tmp_path / "m.onnx", tmp_path / "b.plan", s)  # loads the cache written above
    assert manifest["timing_cache"]["sha256"] == hashlib.sha256(cache.read_bytes()).hexdigest()
    runner = load_engine(tmp_path / "b.plan")
    assert runner.batch_range == (1, 4)
    for batch in (1, 3, 4):
        x = torch.randn(batch, *SHAPE)
        assert rel_error(runner(x.cuda()), model.double()(x.double())) <= 1e-3
    with pytest.raises(BatudeError, match="does not fit"):
        runner(torch.randn(5, *SHAPE, device="cuda"))


@needs_trt_gpu
def test_fp16_engine_from_fp16_onnx(tmp_path):
    model = export_two_conv(tmp_path / "m.onnx", dtype=torch.float16, batch=2)
    s = spec(precision=Precision.FP16, onnx_dtype="float16")
    manifest = engine_from_onnx(tmp_path / "m.onnx", tmp_path / "m.plan", s)
    version = tensorrt_version()
    assert manifest["build"]["strongly_typed"] == (version >= (10, 12, 0))
    assert manifest["build"]["builder_flags"] == ([] if version >= (10, 12, 0) else ["FP16"])
    x = torch.randn(2, *SHAPE).half()
    got = load_engine(tmp_path / "m.plan")(x.cuda())
    assert got.dtype == torch.float16
    assert rel_error(got, model.double()(x.double())) <= 1e-2


@needs_trt_gpu
def test_fp16_engine_from_fp32_onnx_follows_the_version_rule(tmp_path):
    model = export_two_conv(tmp_path / "m.onnx", batch=2)
    s = spec(precision=Precision.FP16)
    if tensorrt_version() >= (10, 12, 0):
        with pytest.raises(BatudeError, match="needs a float16 ONNX model"):
            engine_from_onnx(tmp_path / "m.onnx", tmp_path / "m.plan", s)
        assert not (tmp_path / "m.plan").exists()
    else:
        manifest = engine_from_onnx(tmp_path / "m.onnx", tmp_path / "m.plan", s)
        assert manifest["build"]["builder_flags"] == ["FP16"]
        x = torch.randn(2, *SHAPE)
        assert rel_error(load_engine(tmp_path / "m.plan")(x.cuda()), model.double()(x.double())) <= 1e-2


@needs_trt_gpu
def test_spec_that_does_not_match_the_onnx_model_is_refused(tmp_path):
    export_two_conv(tmp_path / "m.onnx", batch=2)
    with pytest.raises(BatudeError, match="onnx_dtype"):
        engine_from_onnx(tmp_path / "m.onnx", tmp_path / "m.plan", spec(precision="fp16", onnx_dtype="float16"))
    with pytest.raises(BatudeError, match="static batch of 2"):
        engine_from_onnx(tmp_path / "m.onnx", tmp_path / "m.plan", spec(batch=None, profile=(1, 2, 4)))
    assert not (tmp_path / "m.plan").exists()


@needs_trt_gpu
def test_load_engine_refuses_a_tampered_engine_or_manifest(tmp_path):
    export_two_conv(tmp_path / "m.onnx", batch=2)
    engine = tmp_path / "m.plan"
    engine_from_onnx(tmp_path / "m.onnx", engine, spec(), verify=False)
    good = engine.read_bytes()
    engine.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    with pytest.raises(BatudeError, match="sha256 differs"):
        load_engine(engine)
    engine.write_bytes(good)
    manifest = json.loads(manifest_path(engine).read_text())
    manifest["env"]["tensorrt"] = "9.9.9"
    manifest_path(engine).write_text(json.dumps(manifest))
    with pytest.raises(BatudeError, match="TensorRT version 9.9.9 built it"):
        load_engine(engine)
