"""ONNX export of compressed models: onnxruntime numerics, Conv-only structure, both exporters, batch modes."""

import pytest
import torch
from torch import nn

from batude.errors import BatudeError
from batude.export.lower import lower
from batude.export.onnx_export import onnx_from_module
from batude.models import resnet20
from batude.nn import TuckerConv2d
from batude.rank import apply_plan_, select_ranks

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
torchvision = pytest.importorskip("torchvision")


def _calibrated(model, shape):
    """Random-init torchvision models output ~constants in eval mode; real BN statistics fix that."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, *shape[1:]))
    return model.eval()


def _compressed(model, budget, shape):
    model.eval()
    apply_plan_(model, select_ranks(model, budget, "uniform", input_shape=shape), init="empty")
    return _calibrated(model, shape)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_resnet20_both_exporters_both_batch_modes(tmp_path, dynamo, dynamic):
    torch.manual_seed(0)
    model = _compressed(resnet20(in_channels=1), "2.52x", (1, 1, 28, 28))
    gm, _ = lower(model, (1, 1, 28, 28), "chain")
    report = onnx_from_module(gm, (2, 1, 28, 28), tmp_path / "m.onnx", dynamo=dynamo, dynamic_batch=dynamic)
    assert report.rel_error <= 1e-4 and report.tolerance == 1e-4 and report.output_spread > 1e-3
    n_tucker = sum(isinstance(m, TuckerConv2d) for m in model.modules())
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert report.op_counts["Conv"] == n_conv and n_conv > 3 * n_tucker - 1  # every chain is 3 plain Convs
    assert "MatMul" not in report.op_counts and report.op_counts.get("Gemm", 0) <= 1
    assert "BatchNormalization" not in report.op_counts  # folded
    assert report.checked_batches == ([2, 4] if dynamic else [2])


@pytest.mark.parametrize(
    "name,budget,dynamo,dynamic",
    [("resnet18", "2.52x", True, False), ("resnet18", "2.52x", False, True),
     ("resnet50", "2.97x", False, False), ("mobilenet_v2", "2x", True, True)],
    ids=["resnet18-dynamo-static", "resnet18-torchscript-dynamic", "resnet50-torchscript-static", "mobilenet_v2-dynamo-dynamic"],
)
def test_torchvision_models(tmp_path, name, budget, dynamo, dynamic):
    torch.manual_seed(0)
    model = _compressed(torchvision.models.get_model(name), budget, (1, 3, 224, 224))
    gm, variants = lower(model, (1, 3, 224, 224), "min-flops")
    report = onnx_from_module(gm, (2, 3, 224, 224), tmp_path / "m.onnx", dynamo=dynamo, dynamic_batch=dynamic)
    assert report.rel_error <= 1e-4
    if name != "mobilenet_v2":  # random-init MobileNetV2 saturates its ReLU6s: a near-constant output
        assert report.output_spread > 1e-3  # the comparison is meaningful: outputs vary with the input
    assert report.op_counts["Conv"] == sum(isinstance(m, nn.Conv2d) for m in gm.modules())
    if name == "mobilenet_v2":  # depthwise convs stay dense: still grouped Convs in the graph
        assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in gm.modules())


def test_fp16_export_is_checked_with_the_stated_tolerance(tmp_path):
    torch.manual_seed(0)
    gm, _ = lower(_compressed(resnet20(in_channels=1), "2x", (1, 1, 28, 28)), (1, 1, 28, 28))
    report = onnx_from_module(gm, (2, 1, 28, 28), tmp_path / "h.onnx", fp16=True)
    assert report.dtype == "float16" and report.tolerance == 1e-2 and report.rel_error <= 1e-2


def test_failed_export_leaves_no_file(tmp_path):
    class Bad(nn.Module):
        def forward(self, x):
            return torch.linalg.svd(x)[0]  # not exportable to ONNX

    with pytest.raises(BatudeError, match="ONNX export"):
        onnx_from_module(Bad(), (1, 4, 4), tmp_path / "bad.onnx", dynamo=False)
    assert list(tmp_path.iterdir()) == []


def test_output_spread_is_measured_across_samples_even_at_a_static_batch_of_one(tmp_path, caplog):
    torch.manual_seed(0)
    gm, _ = lower(_compressed(resnet20(in_channels=1), "2x", (1, 1, 28, 28)), (1, 1, 28, 28))
    with caplog.at_level("WARNING", logger="batude.export.onnx_export"):
        report = onnx_from_module(gm, (1, 1, 28, 28), tmp_path / "b1.onnx", dynamo=False)
    assert report.checked_batches == [1] and report.output_spread > 1e-3
    assert "barely depends on its input" not in caplog.text


def test_an_output_that_ignores_the_input_is_warned_about(tmp_path, caplog):
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            nn.init.zeros_(self.conv.weight)
            nn.init.ones_(self.conv.bias)

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    with caplog.at_level("WARNING", logger="batude.export.onnx_export"):
        report = onnx_from_module(Constant(), (2, 1, 8, 8), tmp_path / "c.onnx", dynamo=False)
    assert report.output_spread < 1e-6 and "barely depends on its input" in caplog.text
