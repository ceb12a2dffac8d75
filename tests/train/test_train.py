"""Training harness and compress pipeline on small real Fashion-MNIST subsets (CPU)."""

import json
from pathlib import Path

import pytest
import torch

from batude.data import DataSpec, load_datasets, make_loader
from batude.errors import BatudeError
from batude.models import resnet20
from batude.nn import flop_counter_macs
from batude.rank.budget import Budget
from batude.train import CompressConfig, TrainConfig, compress, kd_loss, train_model

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST Debian package (dataset-fashion-mnist) not installed")
SHAPE = (1, 1, 28, 28)


@pytest.fixture(scope="module")
def loaders():
    train, test, _ = load_datasets(DataSpec("fashion-mnist", subset=640))
    return make_loader(train, 64, True, 0), make_loader(test, 256, False, 0)


def test_bad_device_is_a_clear_error():
    with pytest.raises(BatudeError, match="unknown device 'gpu'"):
        TrainConfig(device="gpu")


def _cfg(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 64, "lr": 0.05, "device": "cpu", **kw})


class _Interrupt(Exception):
    pass


def _interrupt_at(label_prefix):
    def progress(label, step, steps, loss):
        if label.startswith(label_prefix):
            raise _Interrupt(label)
    return progress


def _model(seed=0):
    torch.manual_seed(seed)
    return resnet20(in_channels=1)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_learns_and_logs(loaders, tmp_path):
    result = train_model(_model(), *loaders, _cfg(), tmp_path)
    assert [e["epoch"] for e in result.log] == [1, 2]
    assert result.log[-1]["train_loss"] < result.log[0]["train_loss"]
    assert result.accuracy > 30.0  # 10 classes: chance is 10%
    assert json.loads((tmp_path / "log.json").read_text()) == result.log
    assert (tmp_path / "state.pt").is_file()


def test_interrupted_training_resumes_to_identical_weights(loaders, tmp_path):
    torch.manual_seed(123)  # the global RNG drives augmentation: the runs must not depend on it
    reference = train_model(_model(), *loaders, _cfg(), tmp_path / "ref").model
    with pytest.raises(_Interrupt):
        train_model(_model(), *loaders, _cfg(), tmp_path / "cut", progress=_interrupt_at("train 2/"))
    assert [e["epoch"] for e in json.loads((tmp_path / "cut" / "log.json").read_text())] == [1]
    torch.manual_seed(999)
    resumed = train_model(_model(seed=5), *loaders, _cfg(), tmp_path / "cut", resume=True)
    assert [e["epoch"] for e in resumed.log] == [1, 2]
    assert _same_weights(reference, resumed.model)


def test_existing_run_needs_resume_and_same_options(loaders, tmp_path):
    train_model(_model(), *loaders, _cfg(epochs=1), tmp_path)
    with pytest.raises(BatudeError, match="--resume"):
        train_model(_model(), *loaders, _cfg(epochs=1), tmp_path)
    with pytest.raises(BatudeError, match="different options"):
        train_model(_model(), *loaders, _cfg(epochs=1, lr=0.01), tmp_path, resume=True)


def test_divergence_is_a_clear_error_without_partial_state(loaders, tmp_path):
    with pytest.raises(BatudeError, match=r"diverged: the loss is (nan|inf).*train 1/3.*lower learning rate"):
        train_model(_model(), *loaders, _cfg(epochs=3, lr=1e8, momentum=0.0, weight_decay=0.0), tmp_path)
    assert not (tmp_path / "state.pt").exists() and not (tmp_path / "log.json").exists()


def test_divergence_after_a_good_epoch_names_the_kept_state(loaders, tmp_path):
    with pytest.raises(_Interrupt):
        train_model(_model(), *loaders, _cfg(), tmp_path, progress=_interrupt_at("train 2/"))
    before = (tmp_path / "state.pt").read_bytes()
    model = _model()  # resumed, then a poisoned weight makes epoch 2 diverge

    def poison(label, step, steps, loss):
        if label.startswith("train 2/") and step == 1:
            with torch.no_grad():
                model.fc.weight.fill_(float("nan"))

    with pytest.raises(BatudeError, match=r"last good state \(train epoch 1\)"):
        train_model(model, *loaders, _cfg(), tmp_path, resume=True, progress=poison)
    assert (tmp_path / "state.pt").read_bytes() == before


def test_kd_loss():
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    assert float(kd_loss(logits, logits, 4.0)) == pytest.approx(0.0, abs=1e-7)
    t = torch.tensor([[0.0, 3.0, 0.0]])
    p, q = torch.softmax(t / 2, 1), torch.softmax(logits / 2, 1)
    assert float(kd_loss(logits, t, 2.0)) == pytest.approx(float((p * (p / q).log()).sum() * 4), rel=1e-5)


@pytest.fixture(scope="module")
def dense(loaders):
    return train_model(_model(), *loaders, _cfg(epochs=1)).model


@pytest.mark.parametrize("method", ["batude", "uniform", "energy", "vbmf"])
def test_compress_meets_budget_with_equal_epochs(loaders, dense, method):
    cfg = CompressConfig(method=method, epochs_admm=1, epochs_ft=1, train=_cfg())
    result = compress(_copy(dense), *loaders, "2.52x", cfg)
    macs = flop_counter_macs(result.model, SHAPE)
    limit = Budget.parse("2.52x").limit(result.plan.dense_macs)
    assert 0.99 * limit <= macs <= limit and macs == result.plan.macs
    assert sum(e["phase"] in ("admm", "finetune") for e in result.log) == 2  # same total epochs
    assert result.plan.method == method
    assert result.accuracy > 10.0


def test_compress_with_kd_and_params_budget(loaders, dense):
    cfg = CompressConfig(epochs_admm=1, epochs_ft=1, kd=True, train=_cfg())
    result = compress(_copy(dense), *loaders, "params:3x", cfg)
    assert result.plan.params <= result.plan.dense_params / 3


def test_compress_resumes_in_finetuning(loaders, dense, tmp_path):
    cfg = CompressConfig(epochs_admm=1, epochs_ft=2, train=_cfg())
    torch.manual_seed(7)
    reference = compress(_copy(dense), *loaders, "2.52x", cfg, tmp_path / "ref")
    with pytest.raises(_Interrupt):
        compress(_copy(dense), *loaders, "2.52x", cfg, tmp_path / "cut", progress=_interrupt_at("finetune 2/"))
    resumed = compress(_copy(dense), *loaders, "2.52x", cfg, tmp_path / "cut", resume=True)
    assert resumed.plan.to_dict() == reference.plan.to_dict()
    assert _same_weights(reference.model, resumed.model)


def test_compress_resumes_inside_bcadl(loaders, dense, tmp_path):
    cfg = CompressConfig(epochs_admm=2, epochs_ft=1, train=_cfg())
    reference = compress(_copy(dense), *loaders, "2.52x", cfg, tmp_path / "ref")
    with pytest.raises(_Interrupt):
        compress(_copy(dense), *loaders, "2.52x", cfg, tmp_path / "cut", progress=_interrupt_at("admm 2/"))
    resumed = compress(_copy(dense), *loaders, "2.52x", cfg, tmp_path / "cut", resume=True)
    assert resumed.plan.to_dict() == reference.plan.to_dict()
    assert _same_weights(reference.model, resumed.model)
    assert [e["phase"] for e in resumed.log] == ["admm", "admm", "finetune"]


def test_infeasible_budget_fails_before_training(loaders, dense):
    with pytest.raises(BatudeError, match="infeasible"):
        compress(_copy(dense), *loaders, "1000x", CompressConfig(train=_cfg()))


def _copy(model):
    import copy

    return copy.deepcopy(model)
