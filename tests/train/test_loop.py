"""train_one_epoch's bookkeeping: numbers read back one step late must still be exact and in order."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

from batude.data import make_loader
from batude.errors import BatudeError, Diverged
from batude.train import TrainConfig, evaluate, train_model, train_one_epoch
from batude.train.loop import make_optimizer

CPU = torch.device("cpu")


def _setup(lr=0.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    data = torch.utils.data.TensorDataset(torch.randn(40, 1, 4, 4), torch.randint(0, 5, (40,)))
    loader = make_loader(data, 8, False, seed=0)
    cfg = TrainConfig(device="cpu", lr=0.1, momentum=0.0, weight_decay=0.0, label_smoothing=0.0)
    return model, loader, cfg, make_optimizer(model, cfg, lr, len(loader))


def test_progress_and_totals_match_each_step():
    model, loader, cfg, (opt, sched) = _setup(lr=0.0)  # lr 0: the weights stay, so each step's loss is known
    with torch.no_grad():
        per_step = [float(F.cross_entropy(model(x), y)) + 0.25 for x, y in loader]
    seen = []
    stats = train_one_epoch(model, loader, opt, sched, cfg, CPU, extra_loss=lambda: torch.tensor(0.25),
                            progress=lambda label, step, steps, loss: seen.append((step, steps, loss)))
    assert [(s, n) for s, n, _ in seen] == [(k, 5) for k in range(1, 6)]
    for k, (_, _, running) in enumerate(seen, 1):
        assert running == pytest.approx(sum(per_step[:k]) / k, rel=1e-6)
    assert stats.loss == pytest.approx(sum(per_step) / 5, rel=1e-6) and stats.steps == 5
    assert stats.accuracy == pytest.approx(evaluate(model, loader, CPU, cfg)[1])


def test_a_nan_loss_names_its_own_step_and_reports_none_after_it():
    model, loader, cfg, (opt, sched) = _setup(lr=0.1)
    calls, seen = [], []

    def extra():
        calls.append(1)
        return torch.tensor(float("nan") if len(calls) == 3 else 0.0)

    with pytest.raises(Diverged, match=r"the loss is nan .* at step 3/5$"):
        train_one_epoch(model, loader, opt, sched, cfg, CPU, extra_loss=extra,
                        progress=lambda label, step, steps, loss: seen.append(step))
    assert seen == [1, 2] and len(calls) == 4  # read back one step late: step 4 ran before step 3's check


def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))


def test_compiled_training_matches_eager_and_saves_the_plain_model(tmp_path):
    data = torch.utils.data.TensorDataset(torch.randn(48, 1, 4, 4), torch.randint(0, 5, (48,)))
    runs, graphs = {}, {}
    for mode in (None, "default"):  # inductor on the CPU: C++ instead of Triton, the same mechanism
        cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, device="cpu", compile=mode)
        loader = make_loader(data, 8, True, seed=0)
        counters.clear()
        runs[mode] = train_model(_conv_net(), loader, make_loader(data, 16, False, seed=0), cfg, tmp_path / str(mode))
        graphs[mode] = counters["stats"]["unique_graphs"]
    assert graphs[None] == 0 and graphs["default"] > 0  # the option reaches the training phase
    eager, comp = runs[None], runs["default"]
    assert comp.model.state_dict().keys() == eager.model.state_dict().keys()  # no torch.compile wrapper saved
    for k, v in eager.model.state_dict().items():
        assert torch.allclose(comp.model.state_dict()[k].float(), v.float(), atol=1e-4), k
    assert [e["train_loss"] for e in comp.log] == pytest.approx([e["train_loss"] for e in eager.log], rel=1e-4)
    assert comp.model.state_dict().keys() == torch.load(tmp_path / "default" / "state.pt", weights_only=True)["model"].keys()


def test_unknown_compile_mode_is_a_clear_error():
    with pytest.raises(BatudeError, match="compile must be one of default, reduce-overhead"):
        TrainConfig(compile="fast")


class _Stop(Exception):
    pass


def test_resume_may_switch_compile_and_read_states_saved_before_the_option(tmp_path):
    data = torch.utils.data.TensorDataset(torch.randn(32, 1, 4, 4), torch.randint(0, 5, (32,)))
    loaders = make_loader(data, 8, True, seed=0), make_loader(data, 16, False, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, device="cpu")
    whole = train_model(_conv_net(), *loaders, cfg, tmp_path / "whole")

    def stop_in_epoch_2(label, step, steps, loss):
        if label == "train 2/2":
            raise _Stop

    with pytest.raises(_Stop):
        train_model(_conv_net(), *loaders, cfg, tmp_path / "cut", progress=stop_in_epoch_2)
    state = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    del state["config"]["train"]["compile"]  # as a state written before the option existed
    torch.save(state, tmp_path / "cut" / "state.pt")
    with pytest.raises(BatudeError, match="different options"):  # what a run computes must still match
        train_model(_conv_net(), *loaders, TrainConfig(**{**cfg.to_dict(), "lr": 0.01}), tmp_path / "cut", resume=True)
    resumed = train_model(_conv_net(), *loaders, TrainConfig(**{**cfg.to_dict(), "compile": "default"}), tmp_path / "cut", resume=True)
    assert [e["epoch"] for e in resumed.log] == [1, 2]
    for k, v in whole.model.state_dict().items():
        assert torch.allclose(resumed.model.state_dict()[k].float(), v.float(), atol=1e-4), k
