"""One device rule for training, latency tables and bench: ``batude._device.resolve_device``."""

import pytest
import torch

from batude._device import resolve_device
from batude.bench.backends import Backend, BackendUnavailable, _device_for
from batude.errors import BatudeError
from batude.train import TrainConfig


def test_cpu_defaults_and_unknown_devices():
    assert resolve_device(None) == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None, default="auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BatudeError, match="unknown device 'tpu'; use cpu, cuda or cuda:N"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="covers machines without a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_refused_everywhere_alike(device):
    with pytest.raises(BatudeError, match=f"device {device} requested but CUDA is not available here; use --device cpu"):
        resolve_device(device)
    with pytest.raises(BatudeError, match="CUDA is not available"):
        TrainConfig(device=device).resolved_device()
    with pytest.raises(BackendUnavailable, match="CUDA is not available"):
        _device_for(Backend.EAGER, device)  # before: only the exact string "cuda" was checked
    with pytest.raises(BackendUnavailable, match="needs a CUDA GPU"):
        _device_for(Backend.CUDA_GRAPH, device)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_index_is_kept_and_checked():
    last = torch.cuda.device_count() - 1
    assert resolve_device(f"cuda:{last}") == torch.device("cuda", last)
    before = torch.cuda.current_device()
    try:
        assert resolve_device(f"cuda:{last}", make_current=True).index == torch.cuda.current_device() == last
        # a bare "cuda" is whatever device is current (torch 2.11, the GPU image's, refuses set_device("cuda"))
        assert resolve_device("cuda", make_current=True) == torch.device("cuda") and torch.cuda.current_device() == last
    finally:
        torch.cuda.set_device(before)  # later tests in this process keep their device
    assert _device_for(Backend.EAGER, f"cuda:{last}") == torch.device("cuda", last)
    with pytest.raises(BatudeError, match="GPU\\(s\\); use cuda:0"):
        resolve_device(f"cuda:{last + 1}")
