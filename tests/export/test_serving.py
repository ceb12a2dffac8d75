"""Triton repository configs parse into the real ModelConfig; batude.runtime reproduces PyTorch."""

import pytest
import torch

from batude import runtime
from batude.errors import BatudeError
from batude.export.lower import lower
from batude.export.onnx_export import onnx_from_module
from batude.export.triton import TensorSpec, config_pbtxt, validate_config, write_triton_model

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, compressed_resnet20):
    model, _ = compressed_resnet20
    gm, _ = lower(model, (1, 1, 28, 28))
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    onnx_from_module(gm, (4, 1, 28, 28), path, dynamic_batch=True)
    return model, path


def test_dynamic_batch_config_parses_into_model_config(exported, tmp_path):
    _, path = exported
    folder = write_triton_model(tmp_path / "repo", "fmnist", path, [TensorSpec("input", "float32", (1, 28, 28))],
                                [TensorSpec("output", "float32", (10,))], max_batch_size=64)
    config = validate_config((folder / "config.pbtxt").read_text())
    assert config.name == "fmnist" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    assert list(config.input[0].dims) == [1, 28, 28] and config.input[0].data_type == 11  # TYPE_FP32
    assert list(config.output[0].dims) == [10] and config.HasField("dynamic_batching")
    assert (folder / "1" / "model.onnx").read_bytes() == path.read_bytes()


def test_static_and_tensorrt_configs():
    text = config_pbtxt("m_trt", "x/model.plan", [TensorSpec("input", "float16", (1, 3, 224, 224))],
                        [TensorSpec("output", "float16", (1, 1000))], max_batch_size=0)
    config = validate_config(text)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert config.input[0].data_type == 10  # TYPE_FP16


@pytest.mark.parametrize("bad", ["bad name!", "model.bin"], ids=["name", "suffix"])
def test_config_errors(bad):
    name, file = (bad, "m.onnx") if bad == "bad name!" else ("m", bad)
    with pytest.raises(BatudeError):
        config_pbtxt(name, file, [TensorSpec("input", "float32", (3,))], [TensorSpec("output", "float32", (2,))], 1)
    with pytest.raises(BatudeError, match="dtype"):
        TensorSpec("x", "float64", (1,))


def test_runtime_load_reproduces_pytorch(exported):
    model, path = exported
    run = runtime.load(path)
    assert run.providers[-1] == "CPUExecutionProvider"
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
    out = run(x)
    assert out.shape == ref.shape and float((out - ref).norm() / ref.norm()) <= 1e-4


def test_runtime_errors(exported, tmp_path):
    _, path = exported
    with pytest.raises(BatudeError, match="not found"):
        runtime.load(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(BatudeError, match="not a loadable ONNX"):
        runtime.load(tmp_path / "junk.onnx")
    with pytest.raises(BatudeError, match="unknown model format"):
        runtime.load(_touch(tmp_path / "m.tflite"))
    with pytest.raises(BatudeError, match="dims"):
        runtime.load(path)(torch.zeros(1, 28, 28))


def _touch(p):
    p.write_bytes(b"x")
    return p
