"""``batude train`` / ``batude compress`` end to end on a small real Fashion-MNIST subset."""

import json
from pathlib import Path

import pytest

from batude import load_checkpoint
from batude.cli import main
from batude.nn import flop_counter_macs

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST Debian package (dataset-fashion-mnist) not installed")
SMALL = ["--data", "fashion-mnist", "--subset", "320", "--batch-size", "64", "--device", "cpu"]


def _one_error_line(capsys, rc):
    err = capsys.readouterr().err
    lines = [l for l in err.replace("\r", "\n").splitlines() if "error:" in l]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("dense")
    assert main(["train", "--model", "resnet20", "--epochs", "1", "--out", str(out), *SMALL]) == 0
    return out / "model.pt"


@needs_data
def test_train_writes_a_loadable_checkpoint_and_log(dense_ckpt):
    ckpt = load_checkpoint(dense_ckpt)
    assert ckpt.arch.ref == "batude:resnet20" and ckpt.arch.kwargs == {"num_classes": 10, "in_channels": 1}
    assert ckpt.input_shape == (1, 1, 28, 28) and 0 <= ckpt.metadata["test_accuracy"] <= 100
    log = json.loads((dense_ckpt.parent / "log.json").read_text())
    assert [e["epoch"] for e in log] == [1]


@needs_data
@pytest.mark.parametrize("method", ["batude", "vbmf"])
def test_compress_cli_writes_checkpoint_plan_and_report(dense_ckpt, tmp_path, capsys, method):
    out = tmp_path / "c"
    rc = main(["compress", str(dense_ckpt), "--method", method, "--budget", "2.52x", "--epochs-admm", "1",
               "--epochs-ft", "1", "--multiple-of", "4", "--out", str(out), *SMALL])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == method and 2.52 <= report["macs_reduction"] <= 2.52 * 1.01
    assert set(report["accuracy"]) == {"dense", "decomposed_before_finetune", "final", "drop"}
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt.plan is not None and ckpt.plan.method == method
    assert flop_counter_macs(ckpt.model, (1, 1, 28, 28)) == report["macs"]
    assert json.loads((out / "plan.json").read_text())["layers"] == ckpt.plan.to_dict()["layers"]
    for layer in ckpt.plan.layers:
        full = (layer.geometry.out_channels, layer.geometry.in_channels) if layer.kind.value == "tucker2" else (
            min(layer.geometry.out_channels, layer.geometry.in_channels),)
        assert layer.ranks is None or all(r % 4 == 0 or r == f for r, f in zip(layer.ranks, full))
    assert "accuracy: dense" in capsys.readouterr().out


@needs_data
def test_compress_refuses_compressed_input_and_infeasible_budgets(dense_ckpt, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compress", str(dense_ckpt), "--method", "uniform", "--budget", "2x", "--epochs-admm", "0",
                 "--epochs-ft", "0", "--out", str(out), *SMALL]) == 0
    capsys.readouterr()
    rc = main(["compress", str(out / "model.pt"), "--budget", "2x", "--out", str(tmp_path / "d"), *SMALL])
    assert "already compressed" in _one_error_line(capsys, rc)
    rc = main(["compress", str(dense_ckpt), "--budget", "1000x", "--out", str(tmp_path / "e"), *SMALL])
    assert "infeasible" in _one_error_line(capsys, rc)
    assert not (tmp_path / "e").exists()


def test_missing_dataset_says_how_to_install(tmp_path, capsys):
    rc = main(["train", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1", "--out", str(tmp_path / "o")])
    assert "apt-get install dataset-fashion-mnist" in _one_error_line(capsys, rc)


@needs_data
def test_torchvision_model_on_grey_images_is_refused(tmp_path, capsys):
    rc = main(["train", "--model", "torchvision:resnet18", "--epochs", "1", "--out", str(tmp_path / "o"), *SMALL])
    assert "3-channel" in _one_error_line(capsys, rc)
