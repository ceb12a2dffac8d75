"""The analytic cost model must equal FlopCounterMode exactly (FLOPs = 2 * MACs), per layer and in total."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from batude.errors import BatudeError
from batude.models import resnet20
from batude.nn.profile import flop_counter_macs, profile_model
from batude.rank.plan import apply_plan_
from batude.rank.selectors import select_ranks

torchvision = pytest.importorskip("torchvision")

MODELS = [
    ("resnet18", (1, 3, 224, 224)),
    ("resnet50", (1, 3, 224, 224)),
    ("mobilenet_v2", (1, 3, 224, 224)),
    ("vgg11_bn", (1, 3, 224, 224)),
    ("regnet_x_400mf", (1, 3, 224, 224)),
    ("efficientnet_b0", (1, 3, 224, 224)),
    ("cifar_resnet20", (1, 1, 28, 28)),
]


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "cifar_resnet20":
        return resnet20(in_channels=1).eval()
    return torchvision.models.get_model(name, weights=None).eval()


def _per_module_flops(model: nn.Module, shape) -> tuple[int, dict[str, int]]:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(shape))
    root = type(model).__name__
    per = {k[len(root) + 1:]: sum(v.values()) for k, v in counter.get_flop_counts().items() if k.startswith(root + ".")}
    return counter.get_total_flops(), per


def _assert_exact(model: nn.Module, shape) -> None:
    profile = profile_model(model, shape)
    total, per_module = _per_module_flops(model, shape)
    assert 2 * profile.macs == total
    for layer in profile.layers:
        assert 2 * layer.macs == per_module[layer.name], layer.name
        module = model.get_submodule(layer.name)
        assert layer.params == sum(p.numel() for p in module.parameters()), layer.name


@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def model_and_shape(request):
    name, shape = request.param
    return _build(name), shape


def test_dense_cost_equals_flopcounter(model_and_shape):
    _assert_exact(*model_and_shape)


def test_decomposed_cost_equals_flopcounter(model_and_shape):
    model, shape = model_and_shape
    plan = select_ranks(model, "2x", "uniform", input_shape=shape)
    compressed = apply_plan_(copy.deepcopy(model), plan, init="empty")
    assert any(l.ranks is not None for l in profile_model(compressed, shape).layers)
    _assert_exact(compressed, shape)
    # the plan's prediction is the measured cost
    assert plan.macs == flop_counter_macs(compressed, shape)


def test_resnet50_is_4_09_gmacs():
    model = _build("resnet50")
    macs = profile_model(model, (1, 3, 224, 224)).macs
    assert macs == 4_089_184_256  # FlopCounterMode / 2, conv + fc
    assert round(macs / 1e9, 2) == 4.09


def test_batch_does_not_change_per_image_cost():
    model = _build("cifar_resnet20")
    one = profile_model(model, (1, 1, 28, 28)).macs
    assert profile_model(model, (4, 1, 28, 28)).macs == one
    assert flop_counter_macs(model, (4, 1, 28, 28)) == 4 * one


def test_strided_tucker_first_conv_runs_at_input_resolution():
    conv = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1))
    plan = select_ranks(conv, "3x", "uniform", input_shape=(1, 32, 16, 16))
    layer = plan.layer("0")
    r1, r2 = layer.ranks
    assert layer.macs_after == 16 * 16 * 32 * r2 + 8 * 8 * 9 * r2 * r1 + 8 * 8 * r1 * 64


def test_linear_on_sequences_counts_every_position():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    profile = profile_model(model, (1, 5, 16))
    assert profile.macs == 5 * (16 * 32 + 32 * 8)
    assert 2 * profile.macs == _per_module_flops(model, (1, 5, 16))[0]


def test_profile_restores_training_mode_and_rejects_bad_shapes():
    model = _build("cifar_resnet20").train()
    profile_model(model, (1, 1, 28, 28))
    assert model.training
    with pytest.raises(BatudeError, match="input shape"):
        profile_model(model, (1, 3, 28, 28))
    with pytest.raises(BatudeError, match="invalid"):
        profile_model(model, (0, 1, 28, 28))
