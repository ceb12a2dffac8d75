"""``batude-export`` end to end: checkpoint in, verified ONNX + report + Triton repo out; one-line errors."""

import importlib.util
import json
import random

import pytest
import torch

import batude
from batude import runtime
from batude.cli import export_main
from batude.models import resnet20
from batude.rank import select_ranks

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def compressed_ckpt(tmp_path_factory, compressed_resnet20):
    model, plan = compressed_resnet20
    path = tmp_path_factory.mktemp("ckpt") / "compressed.pt"
    batude.save(path, model, plan=plan, arch="batude:resnet20", arch_kwargs={"in_channels": 1},
                metadata={"input_shape": [1, 1, 28, 28]})
    return path, model


def _one_error(capsys, rc):
    err = capsys.readouterr().err
    lines = [l for l in err.replace("\r", "\n").splitlines() if l.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("batude-export: error:") and "Traceback" not in err, err
    return lines[0]


def test_export_compressed_checkpoint_with_triton_repo(compressed_ckpt, tmp_path, capsys):
    path, model = compressed_ckpt
    out, repo = tmp_path / "out", tmp_path / "repo"
    assert export_main([str(path), "--out", str(out), "--batch", "1,8", "--triton-repo", str(repo)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["onnx"]["rel_error"] <= 1e-4 and report["onnx"]["dynamic_batch"] is True
    assert 2.52 <= report["plan"]["macs_reduction"] <= 2.52 * 1.01
    assert set(report["variants"]) == {l.name for l in batude.load_checkpoint(path).plan.layers if l.ranks and l.kind.value == "tucker2"}
    assert (repo / "batude_model" / "1" / "model.onnx").is_file()
    batude.export.triton.validate_config((repo / "batude_model" / "config.pbtxt").read_text())
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
    got = runtime.load(out / "model.onnx")(x)
    assert float((got - ref).norm() / ref.norm()) <= 1e-4
    assert "exported" in capsys.readouterr().out


def test_plan_applied_on_the_spot(tmp_path, capsys):
    torch.manual_seed(0)
    plan = select_ranks(resnet20(), "2x", "uniform", input_shape=(1, 3, 32, 32)).with_arch("batude:resnet20")
    plan.save(tmp_path / "p.json")
    out = tmp_path / "out"
    assert export_main(["batude:resnet20", "--plan", str(tmp_path / "p.json"), "--out", str(out), "--legacy-exporter"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["onnx"]["exporter"] == "torchscript" and report["plan"]["method"] == "uniform"
    assert report["plan"]["dense_macs"] == plan.dense_macs and report["plan"]["macs_reduction"] >= 2.0
    # exported at another input size than the plan's: the reduction is still counted at one shape
    big = tmp_path / "big"
    assert export_main(["batude:resnet20", "--plan", str(tmp_path / "p.json"), "--out", str(big), "--legacy-exporter",
                        "--input-shape", "3,64,64"]) == 0
    report = json.loads((big / "report.json").read_text())
    assert report["plan"]["dense_macs"] > 3.5 * plan.dense_macs
    assert report["plan"]["macs_reduction"] == pytest.approx(plan.macs_reduction, rel=0.05)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed: this covers machines without it")
def test_trt_without_tensorrt_keeps_the_verified_onnx(compressed_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    rc = export_main([str(compressed_ckpt[0]), "--out", str(out), "--trt"])
    line = _one_error(capsys, rc)
    assert "TensorRT" in line and "model.onnx" in line and line.count("verified ONNX") == 1
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.json"]


def _bad(kind, tmp_path, ckpt):
    if kind == "missing-file":
        return [str(tmp_path / "nope.pt")], "not found"
    if kind == "wrong-format":
        bad = tmp_path / "bad.pt"
        bad.write_bytes(random.Random(0).randbytes(512))
        return [str(bad)], "not a readable checkpoint"
    if kind == "unknown-arch":
        return ["torchvision:resnet1000"], "unknown torchvision classifier"
    if kind == "wrong-input-shape":
        return [str(ckpt), "--input-shape", "3,28,28"], "does not run on input shape"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    return [str(ckpt), "--out", str(blocker / "sub")], "cannot create output folder"


@pytest.mark.parametrize("kind", ["missing-file", "wrong-format", "unknown-arch", "wrong-input-shape", "unwritable-out"])
def test_bad_inputs_are_one_line_errors_without_partial_files(kind, compressed_ckpt, tmp_path, capsys):
    args, needle = _bad(kind, tmp_path, compressed_ckpt[0])
    out = tmp_path / "out"
    rc = export_main(args if kind == "unwritable-out" else [*args, "--out", str(out)])
    assert needle in _one_error(capsys, rc)
    assert not out.exists()
