"""Data-parallel runs: ``torchrun --nproc_per_node=2 -m batude compress`` (gloo, CPU) against one process.

The launched runs use ``--standalone`` (a free rendezvous port) and ``OMP_NUM_THREADS=1``.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from batude.data import make_loader
from batude.data.datasets import EpochSampler
from batude.errors import BatudeError
from batude.models.cifar_resnet import resnet20
from batude.rank.bcadl import BCADL, BCADLConfig
from batude.train import TrainConfig
from batude.train.distributed import World, all_reduce_sums, broadcast_tree, distributed_session, sync_state, sync_weights, wrap_ddp
from batude.train.loop import make_optimizer, train_one_epoch
from batude.train.runner import Run

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST Debian package (dataset-fashion-mnist) not installed")
needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo needed")
DATA = ["--data", "fashion-mnist", "--subset", "320", "--batch-size", "64", "--device", "cpu"]
# Rank multiples of 4: per-rank BatchNorm statistics (32 images instead of 64) nudge the weights,
# and on a grid of 1 that can move a near-tied rank by one step between 1 and 2 processes.
COMPRESS = ["--budget", "2.52x", "--epochs-admm", "2", "--epochs-ft", "1", "--multiple-of", "4"]
OUTPUTS = {"log.json", "model.pt", "plan.json", "report.json", "state.pt"}


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=cwd, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _ranks(out: Path) -> dict:
    return {l["name"]: l["ranks"] for l in json.loads((out / "plan.json").read_text())["layers"]}


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# -- sharding (no processes) ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [320, 333])
def test_shards_of_a_step_are_exactly_the_single_process_batch(n):
    data = torch.utils.data.TensorDataset(torch.arange(n), torch.zeros(n, dtype=torch.long))
    single = make_loader(data, 64, True, seed=3)
    shards = [make_loader(data, 64, True, seed=3, rank=r, world_size=2) for r in range(2)]
    for loader in (single, *shards):
        loader.set_epoch(1)
    steps = [list(single)] + [list(s) for s in shards]
    assert len(steps[0]) == len(steps[1]) == len(steps[2]) == n // 64
    for (x, _), (a, _), (b, _) in zip(*steps):
        assert len(a) == len(b) == 32 and not set(a.tolist()) & set(b.tolist())
        assert sorted(x.tolist()) == sorted(a.tolist() + b.tolist())


def test_evaluation_shards_cover_every_example_once():
    order = [list(EpochSampler(11, seed=0, shuffle=False, rank=r, world_size=3)) for r in range(3)]
    assert sorted(sum(order, [])) == list(range(11)) and [len(o) for o in order] == [4, 4, 3]
    even = [len(EpochSampler(11, seed=0, shuffle=True, rank=r, world_size=3, even=True)) for r in range(3)]
    assert even == [3, 3, 3]


def test_global_batch_must_divide_among_the_processes():
    data = torch.utils.data.TensorDataset(torch.arange(10), torch.zeros(10, dtype=torch.long))
    with pytest.raises(BatudeError, match="global batch.*--batch-size 64"):
        make_loader(data, 63, True, seed=0, rank=0, world_size=2)
    assert make_loader(data, 63, False, seed=0, rank=1, world_size=2).batch_size == 32  # evaluation: ceil


# -- collectives (2 gloo processes) --------------------------------------------------------------
# torchrun runs a two-line launcher that loads this file and calls _worker, so the worker is plain code.

_LAUNCHER = "import importlib.util, sys\n" \
    "spec = importlib.util.spec_from_file_location('ddp_worker', sys.argv[1])\n" \
    "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); module._worker(sys.argv[2])\n"


def _train_without_batchnorm(world: World) -> dict:
    """Two epochs of BC-ADL training (penalty, Z/U updates) of a BatchNorm-free net on sharded loaders."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    gen = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(128, 1, 8, 8, generator=gen), torch.randint(0, 10, (128,), generator=gen))
    loader = make_loader(data, 32, True, seed=0, rank=world.rank, world_size=world.size)
    cfg, cpu = TrainConfig(device="cpu", lr=0.05), torch.device("cpu")
    admm = BCADL(model, "2x", BCADLConfig(rho0=0.1, period=3), input_shape=(1, 1, 8, 8))
    sync_state(admm)

    def after_step():
        if admm.step():
            sync_state(admm)

    optimizer, scheduler = make_optimizer(model, cfg, cfg.lr, 2 * len(loader))
    trained = wrap_ddp(model, cpu)
    losses = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        losses.append(train_one_epoch(trained, loader, optimizer, scheduler, cfg, cpu, extra_loss=admm.penalty, after_step=after_step).loss)
    return {"weights": model.state_dict(), "ranks": [list(r) for r in admm.ranks], "updates": admm.updates, "losses": losses}


def _diverges_on_one_rank(world: World) -> bool:
    """A loss that is NaN on rank 1 only: every rank must stop (not wait in backward's all-reduce)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    loader = make_loader(data, 32, True, seed=0, rank=world.rank, world_size=world.size)
    cfg, cpu = TrainConfig(device="cpu", lr=0.01), torch.device("cpu")
    optimizer, scheduler = make_optimizer(model, cfg, cfg.lr, len(loader))
    bad = torch.tensor(float("nan") if world.rank == 1 else 0.0)
    try:
        train_one_epoch(wrap_ddp(model, cpu), loader, optimizer, scheduler, cfg, cpu, extra_loss=lambda: bad)
    except BatudeError as err:
        return "diverged" in str(err)
    return False


def _worker(out: str) -> None:
    out = Path(out)
    with distributed_session("cpu") as world:
        torch.save(_train_without_batchnorm(world), out / f"train{world.rank}.pt")
        torch.manual_seed(world.rank)  # every rank starts from different weights, so different Z/U/ranks
        model = resnet20(num_classes=10, in_channels=1)
        admm = BCADL(model, "3x", BCADLConfig(period=1), input_shape=(1, 1, 28, 28))
        admm.update()
        before = [list(r) for r in admm.ranks]
        sync_state(admm)
        torch.save({"before": before, **admm.state_dict()}, out / f"bcadl{world.rank}.pt")
        sync_weights(model)
        torch.save(model.state_dict(), out / f"model{world.rank}.pt")
        tree = broadcast_tree({"a": torch.arange(3) + world.rank, "b": [world.rank, (torch.ones(2) * world.rank,)]})
        run = Run(out / "run", "t", {})
        run.record({"rank": world.rank})
        result = {"size": world.size, "sums": all_reduce_sums([world.rank + 1, 1.5]),
                  "tree": [tree["a"].tolist(), tree["b"][0], tree["b"][1][0].tolist()],
                  "diverged": _diverges_on_one_rank(world)}
        (out / f"rank{world.rank}.json").write_text(json.dumps(result))


@needs_gloo
def test_ddp_training_equals_one_process_and_rank0_state_reaches_every_rank(tmp_path):
    script = tmp_path / "launch.py"
    script.write_text(_LAUNCHER)
    _run(_torchrun(str(script), __file__, str(tmp_path)), cwd=tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0 == r1 == {"size": 2, "sums": [3.0, 3.0], "tree": [[0, 1, 2], 0, [0.0, 0.0]], "diverged": True}

    # without BatchNorm, 2 processes x 16 examples train exactly like 1 process x 32 (penalty included)
    one, two, two_b = _train_without_batchnorm(World()), *(torch.load(tmp_path / f"train{r}.pt", weights_only=True) for r in range(2))
    assert two["updates"] == one["updates"] == 2 * 4 // 3 and two["ranks"] == two_b["ranks"] == one["ranks"]
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    for k, w in one["weights"].items():
        assert torch.equal(two["weights"][k], two_b["weights"][k]), k
        torch.testing.assert_close(two["weights"][k], w, rtol=1e-5, atol=1e-6)

    # ranks that disagree (different weights) all hold rank 0's BC-ADL state and weights after syncing
    a, b = (torch.load(tmp_path / f"bcadl{r}.pt", weights_only=True) for r in range(2))
    assert a["before"] != b["before"], "the ranks should start out different, or the test proves nothing"
    assert a["ranks"] == b["ranks"] and a["rho"] == b["rho"] and a["steps"] == b["steps"]
    for key in ("z", "u", "sigma"):
        assert all(torch.equal(x, y) for xs, ys in zip(a[key], b[key]) for x, y in zip(xs, ys)), key
    m0, m1 = (torch.load(tmp_path / f"model{r}.pt", weights_only=True) for r in range(2))
    assert all(torch.equal(m0[k], m1[k]) for k in m0)
    assert [e["rank"] for e in json.loads((tmp_path / "run" / "log.json").read_text())] == [0]  # rank 1 wrote nothing


# -- the CLI under torchrun ------------------------------------------------------------------------


def _copy_first_state(out: Path, dest: Path, stop: threading.Event) -> None:
    """Copy the run's first ``state.pt`` (written atomically) as soon as it appears."""
    while not stop.is_set():
        if (out / "state.pt").exists():
            dest.mkdir()
            shutil.copy(out / "state.pt", dest / "state.pt")
            return
        time.sleep(0.01)


@needs_data
@needs_gloo
def test_torchrun_train_and_compress_match_one_process_and_resume(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = _run(_torchrun("-m", "batude", "train", "--model", "resnet20", "--epochs", "1", *DATA, "--out", str(tmp_path / "dense")), cwd)
    assert proc.stdout.count("test accuracy") == 1 and {p.name for p in (tmp_path / "dense").iterdir()} == {"log.json", "model.pt", "state.pt"}
    dense = str(tmp_path / "dense" / "model.pt")
    _run([sys.executable, "-m", "batude", "compress", dense, *COMPRESS, *DATA, "--out", str(tmp_path / "one")], cwd)

    stop = threading.Event()
    watcher = threading.Thread(target=_copy_first_state, args=(tmp_path / "two", tmp_path / "cut", stop))
    watcher.start()
    try:
        proc = _run(_torchrun("-m", "batude", "compress", dense, *COMPRESS, *DATA, "--out", str(tmp_path / "two")), cwd)
    finally:
        stop.set()
        watcher.join()
    assert proc.stdout.count("accuracy: dense") == 1, proc.stdout  # only rank 0 reports
    assert {p.name for p in (tmp_path / "two").iterdir()} == OUTPUTS  # one set of outputs, no temporary files
    assert not any(cwd.iterdir())

    # the same global batch in 1 and 2 processes: the same ranks, and both meet the budget
    assert _ranks(tmp_path / "one") == _ranks(tmp_path / "two")
    reports = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two")]
    assert [r["processes"] for r in reports] == [1, 2]
    assert all(2.52 <= r["macs_reduction"] <= 2.52 * 1.01 for r in reports), [r["macs_reduction"] for r in reports]
    log = json.loads((tmp_path / "two" / "log.json").read_text())
    assert [(e["phase"], e["epoch"]) for e in log] == [("admm", 1), ("admm", 2), ("finetune", 1)]

    # resumed from the first epoch's state, the 2-process run ends exactly where it ended uninterrupted
    state = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    assert (state["phase"], state["epoch"]) != ("finetune", 1), "copied the final state: nothing left to resume"
    _run(_torchrun("-m", "batude", "compress", dense, *COMPRESS, *DATA, "--out", str(tmp_path / "cut"), "--resume"), cwd)
    assert _ranks(tmp_path / "cut") == _ranks(tmp_path / "two")
    ref, cut = _weights(tmp_path / "two" / "model.pt"), _weights(tmp_path / "cut" / "model.pt")
    assert ref.keys() == cut.keys() and all(torch.equal(ref[k], cut[k]) for k in ref)
