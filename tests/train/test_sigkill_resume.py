"""Killed with SIGKILL mid-run, ``batude train`` / ``batude compress --resume`` end exactly where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST Debian package (dataset-fashion-mnist) not installed"),
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals"),
]
DATA = ["--data", "fashion-mnist", "--subset", "640", "--batch-size", "64", "--device", "cpu"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "batude", *args]


def _run(args: list[str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _kill_after_first_epoch(args: list[str], out: Path) -> None:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            log = out / "log.json"
            if log.exists() and json.loads(log.read_text() or "[]"):
                time.sleep(0.3)  # the state file follows the log entry
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run finished before it could be killed; make it longer"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_killed_and_resumed_matches_uninterrupted(tmp_path):
    train = ["train", "--model", "resnet20", "--epochs", "2", *DATA]
    _run(_cli(*train, "--out", str(tmp_path / "ref")))
    _kill_after_first_epoch(_cli(*train, "--out", str(tmp_path / "cut")), tmp_path / "cut")
    assert not (tmp_path / "cut" / "model.pt").exists()
    _run(_cli(*train, "--out", str(tmp_path / "cut"), "--resume"))
    assert _same(_weights(tmp_path / "ref" / "model.pt"), _weights(tmp_path / "cut" / "model.pt"))
    assert [e["epoch"] for e in json.loads((tmp_path / "cut" / "log.json").read_text())] == [1, 2]


def test_compress_killed_and_resumed_matches_uninterrupted(tmp_path):
    _run(_cli("train", "--model", "resnet20", "--epochs", "1", *DATA, "--out", str(tmp_path / "dense")))
    dense = str(tmp_path / "dense" / "model.pt")
    comp = ["compress", dense, "--budget", "2.52x", "--epochs-admm", "2", "--epochs-ft", "1", *DATA]  # killed in BC-ADL
    _run(_cli(*comp, "--out", str(tmp_path / "ref")))
    _kill_after_first_epoch(_cli(*comp, "--out", str(tmp_path / "cut")), tmp_path / "cut")
    _run(_cli(*comp, "--out", str(tmp_path / "cut"), "--resume"))
    assert json.loads((tmp_path / "ref" / "plan.json").read_text()) == json.loads((tmp_path / "cut" / "plan.json").read_text())
    assert _same(_weights(tmp_path / "ref" / "model.pt"), _weights(tmp_path / "cut" / "model.pt"))
