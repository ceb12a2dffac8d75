"""Whole-model coverage: common CNNs compressed 2x with the uniform selector, then exported to ONNX.

Per model (random init; BatchNorm statistics calibrated on random inputs after factorising, so
that outputs depend on the input): the plan meets the budget from below within 1% by the cost model and by FlopCounterMode
on the factorised model; layers batude cannot factorise (grouped/depthwise convs) stay dense and
are named with a reason; the factorised model exports to ONNX and onnxruntime matches PyTorch
(relative L2 error <= 1e-4, checked inside ``onnx_from_module``). ImageNet models run at 64x64.
"""

import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torchvision = pytest.importorskip("torchvision")

from batude.cli import main  # noqa: E402
from batude.export.onnx_export import onnx_from_module  # noqa: E402
from batude.models.registry import ArchRef  # noqa: E402
from batude.nn.profile import flop_counter_macs  # noqa: E402
from batude.rank.filter import LayerFilter  # noqa: E402
from batude.rank.plan import apply_plan_  # noqa: E402
from batude.rank.problem import SelectorConfig  # noqa: E402
from batude.rank.selectors import select_ranks  # noqa: E402

IMAGENET, CIFAR = (1, 3, 64, 64), (1, 3, 32, 32)
# (architecture reference, input shape, layer filter, TorchScript exporter?)
# vgg11_bn: its 25088x4096 classifier would take most of the file's time to factorise (float64
# SVD), so it stays dense by name; and at 64x64 its AdaptiveAvgPool2d(7) gets a 2x2 map, which the
# TorchScript exporter refuses (output size not a factor of the input size), so it takes dynamo.
MODELS = [
    ("torchvision:resnet18", IMAGENET, None, True),
    ("torchvision:resnet50", IMAGENET, None, True),
    ("torchvision:mobilenet_v2", IMAGENET, None, True),
    ("torchvision:vgg11_bn", IMAGENET, LayerFilter(exclude=("classifier.*",)), False),
    ("torchvision:regnet_x_400mf", IMAGENET, None, True),
    ("torchvision:efficientnet_b0", IMAGENET, None, True),
    ("batude:resnet20", CIFAR, None, True),
    ("batude:resnet32", CIFAR, None, True),
    ("batude:resnet56", CIFAR, None, True),
]


@torch.no_grad()
def _calibrate_batchnorm(model: nn.Module, shape: tuple[int, ...], batches: int = 2) -> None:
    """Exact BatchNorm running statistics over ``batches`` random batches (random-init nets otherwise
    give near-constant eval outputs, which would make the ONNX comparison meaningless)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    gen = torch.Generator().manual_seed(1)
    for _ in range(batches):
        model(torch.randn((8, *shape[1:]), generator=gen))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def _grouped_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}


@pytest.mark.parametrize("ref, shape, layer_filter, torchscript", MODELS, ids=[m[0].split(":")[1] for m in MODELS])
def test_compress_2x_and_export_to_onnx(tmp_path, ref, shape, layer_filter, torchscript):
    torch.manual_seed(0)
    model = ArchRef(ref).build().eval()
    grouped = _grouped_convs(model)

    plan = select_ranks(model, "2x", "uniform", input_shape=shape, config=SelectorConfig(layer_filter=layer_filter))
    assert plan.dense_macs == flop_counter_macs(model, shape)
    assert plan.dense_macs / 2 * 0.99 <= plan.macs <= plan.dense_macs / 2, plan.macs_reduction
    for name, conv in grouped.items():
        assert f"groups={conv.groups} is not factorisable" in plan.skipped[name]
    assert sum(l.decomposed for l in plan.layers) > 0

    apply_plan_(model, plan)
    assert flop_counter_macs(model, shape) == plan.macs  # the factorised model costs what the plan says
    assert _grouped_convs(model).keys() == grouped.keys()  # left dense, in place
    assert all(type(m) is nn.Conv2d for m in _grouped_convs(model).values())

    # Truncating random (flat-spectrum) weights shrinks activations layer after layer; with the dense
    # model's statistics a deep net (EfficientNet-B0) then outputs nearly the same logits for every
    # input. Calibrating after factorising, as one would before fine-tuning, restores the spread.
    _calibrate_batchnorm(model, shape)
    report = onnx_from_module(model, (2, *shape[1:]), tmp_path / "model.onnx", dynamo=not torchscript)
    assert report.rel_error <= 1e-4 and report.exporter == ("torchscript" if torchscript else "dynamo")
    assert report.output_spread > 1e-2, "outputs barely depend on the input: the numeric check is weak"


def test_plan_cli_names_the_layers_it_leaves_dense(tmp_path, capsys):
    depthwise = _grouped_convs(torchvision.models.mobilenet_v2(weights=None))
    assert len(depthwise) == 17
    rc = main(["plan", "torchvision:mobilenet_v2", "--input", "1,3,64,64", "--budget", "2x", "--out", str(tmp_path / "p.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "left dense (18 layers not eligible for factorisation):" in out
    for name, conv in depthwise.items():
        assert f"  {name}: Conv2d with groups={conv.groups} is not factorisable\n" in out
    assert "  features.0.0: 3 input channels < min_in_channels=16\n" in out
