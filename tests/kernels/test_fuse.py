"""Block-epilogue fusion: a fused (factorised) ResNet computes what the eager model computes."""

import copy

import pytest
import torch

from batude.errors import BatudeError
from batude.models import CifarResNet
from batude.rank import apply_plan_, select_ranks
from kernel_cases import gpu, interp, interp_too, nhwc, rel_err


def _random_bn_(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def _tiny_resnet(compress: bool = True):
    torch.manual_seed(0)
    model = _random_bn_(CifarResNet(depth=8, in_channels=3, width=16)).eval()
    if compress:
        apply_plan_(model, select_ranks(model, "2x", "uniform", input_shape=(1, 3, 8, 8)))
    return model


def _structure(model):
    from batude.kernels.resnet_fuse import FusedBlock, FusedConv

    blocks = [m for m in model.modules() if isinstance(m, FusedBlock)]
    kinds = [u.kind for m in model.modules() if isinstance(m, FusedConv) for u in [m]]
    return len(blocks), kinds


@interp_too
def test_fused_model_structure_and_reference_path():
    """The rewrite itself, and its output: through the PyTorch references in the main process, through the kernels
    in the interpreter subprocess."""
    from batude.kernels import fuse_resnet_

    model = _tiny_resnet()
    fused = fuse_resnet_(copy.deepcopy(model))
    n_blocks, kinds = _structure(fused)
    assert n_blocks == 3
    assert kinds.count("tucker2") == 6 and kinds.count("lowrank") == 2 and kinds.count("dense") == 1  # + the stem
    assert isinstance(fused.bn1, torch.nn.Identity)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert rel_err(fused(nhwc(x)), model(x)) < 1e-5
        dense = fuse_resnet_(copy.deepcopy(_tiny_resnet(compress=False)))
        assert _structure(dense)[1] == ["dense"] * 9
        assert rel_err(dense(x), _tiny_resnet(compress=False)(x)) < 1e-5


def test_fuse_refuses_training_mode_and_unknown_models():
    from batude.kernels import fuse_resnet_

    with pytest.raises(BatudeError, match="eval"):
        fuse_resnet_(_tiny_resnet().train())
    with pytest.raises(BatudeError, match="no torchvision/batude ResNet blocks"):
        fuse_resnet_(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)).eval())


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_interpreter_fused_resnet_matches_eager(dtype, monkeypatch):
    from batude.kernels import _ops, fuse_resnet_

    model = _tiny_resnet()
    fused = fuse_resnet_(copy.deepcopy(model)).to(dtype)
    monkeypatch.setattr(_ops, "tucker2_conv_reference", lambda *a: pytest.fail("the CPU op should run the interpreter"))
    monkeypatch.setattr(_ops, "lowrank_chain_reference", lambda *a: pytest.fail("the CPU op should run the interpreter"))
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        out = fused(nhwc(x.to(dtype)))
        ref = model(x)
    assert rel_err(out, ref) <= (1e-5 if dtype == torch.float32 else 2e-2)


@gpu
@pytest.mark.parametrize("batch", [1, 4])
def test_gpu_fused_resnet18_at_2_52x_matches_eager(batch):
    torchvision = pytest.importorskip("torchvision")
    from batude.kernels import fuse_resnet_

    torch.manual_seed(0)
    model = _random_bn_(torchvision.models.resnet18()).eval()
    apply_plan_(model, select_ranks(model, "2.52x", "uniform", input_shape=(1, 3, 224, 224)))
    model = model.cuda().to(memory_format=torch.channels_last)
    fused = fuse_resnet_(copy.deepcopy(model)).half()
    x = nhwc(torch.randn(batch, 3, 224, 224, device="cuda"))
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = model(x)
    with torch.no_grad():
        out = fused(x.half())
    assert rel_err(out, ref) <= 3e-2  # fp16 through 20 layers vs an fp32 reference


@interp_too
def test_fused_model_traces_whole_under_torch_compile():
    """The custom ops' fake implementations let dynamo capture the fused model in one graph."""
    from batude.kernels import fuse_resnet_

    model = _tiny_resnet()
    fused = fuse_resnet_(copy.deepcopy(model))
    x = nhwc(torch.randn(2, 3, 8, 8))
    with torch.no_grad():
        compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
        assert rel_err(compiled(x), model(x)) < 1e-4


def test_bottleneck_blocks_are_fused(monkeypatch):
    """torchvision Bottleneck (3 convs + projection): the rewrite, checked through the ops' reference path."""
    torchvision = pytest.importorskip("torchvision")
    from batude.kernels import _ops, fuse_resnet_

    monkeypatch.setattr(_ops, "cpu_kernels_requested", lambda: False)  # structure, not kernels (those are tested above)
    torch.manual_seed(0)
    model = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10)
    model = _random_bn_(model).eval()
    apply_plan_(model, select_ranks(model, "2x", "uniform", input_shape=(1, 3, 32, 32)), init="empty")
    fused = fuse_resnet_(copy.deepcopy(model))
    n_blocks, kinds = _structure(fused)
    assert n_blocks == 4 and len(kinds) == 4 * 4 + 1  # 3 units + projection per block, + the stem
    assert kinds.count("tucker2") == 4 and kinds.count("lowrank") == 12
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(fused(nhwc(x)), model(x)) < 1e-4
