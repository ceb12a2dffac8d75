"""The ``batude`` / ``batude-export`` command lines, mostly in-process through ``batude.cli.main``.

Costs are cross-checked against ``torch.utils.flop_counter.FlopCounterMode`` (``flop_counter_macs``)
on the models the commands write, never against batude's own cost model alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from batude import ArchRef, RankPlan, apply_plan_, load, load_checkpoint, load_model
from batude._version import __version__
from batude.cli import export_main, main
from batude.nn.profile import flop_counter_macs

VENV_BIN = Path(sys.executable).parent


def run_cli(capsys, argv, entry=main):
    """``(exit code, stdout, stderr)``; usage errors return 2 too (main never raises SystemExit)."""
    rc = entry([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_error_line(rc, err, prefix="batude: error:"):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()  # progress output uses \r, which splitlines also splits on
    errors = [line for line in lines if re.match(r"batude(-export)?( \w+)?: error:", line)]
    assert len(errors) == 1, err
    assert errors[0].startswith(prefix), err
    assert lines[-1] == errors[0], err
    return errors[0]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------------ inspect


@pytest.fixture(scope="module")
def resnet50_counter_macs():
    return flop_counter_macs(load_model("torchvision:resnet50").model, (1, 3, 224, 224))


def test_inspect_resnet50(capsys, tmp_path, resnet50_counter_macs):
    rc, out, err = run_cli(capsys, ["inspect", "torchvision:resnet50", "--input", "1,3,224,224", "--json", tmp_path / "r50.json"])
    assert rc == 0, err

    total = re.search(r"^input \[1, 3, 224, 224\]: ([\d.]+)GMAC = ([\d.]+)GFLOP per image", out, re.M)
    assert total, out
    assert round(float(total.group(1)), 2) == 4.09
    assert float(total.group(2)) == pytest.approx(2 * float(total.group(1)), rel=1e-3)
    assert float(total.group(1)) * 1e9 == pytest.approx(resnet50_counter_macs, rel=5e-4)
    assert "dense equivalent" not in out  # nothing is factorised
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["layer", "kind"] and set(lines[1]) == {"-"}
    rows = lines[2:lines.index("")]
    assert len(rows) == 54  # 53 convs (incl. 4 downsamples) + fc
    assert rows[0].split()[:3] == ["conv1", "tucker2", "64x3x7x7"] and rows[-1].split()[0] == "fc"

    report = json.loads((tmp_path / "r50.json").read_text())
    assert report["macs"] == resnet50_counter_macs
    assert report["flops"] == 2 * report["macs"]
    assert report["input_shape"] == [1, 3, 224, 224]
    assert len(report["layers"]) == 54
    assert sum(l["macs"] for l in report["layers"]) == report["macs"]


def test_inspect_of_a_factorised_checkpoint_uses_its_input_shape(capsys, tmp_path):
    torch.manual_seed(0)
    rc, _, err = run_cli(capsys, ["plan", "batude:resnet20", "--input", "1,3,28,28", "--budget", "2x", "--out", tmp_path / "p.json"])
    assert rc == 0, err
    rc, _, err = run_cli(capsys, ["apply", "batude:resnet20", "--plan", tmp_path / "p.json", "--out", tmp_path / "m.pt"])
    assert rc == 0, err
    rc, out, err = run_cli(capsys, ["inspect", tmp_path / "m.pt", "--json", tmp_path / "i.json"])
    assert rc == 0, err
    assert "input [1, 3, 28, 28]:" in out
    assert "dense equivalent" in out
    report = json.loads((tmp_path / "i.json").read_text())
    assert report["macs"] == flop_counter_macs(load(tmp_path / "m.pt"), (1, 3, 28, 28))
    assert any(l["ranks"] for l in report["layers"])


# ------------------------------------------------------------------------------ plan + apply (2.52x)


@pytest.fixture(scope="module")
def r18_plan(tmp_path_factory):
    """``batude plan`` on torchvision:resnet18 at 2.52x (run once): (exit code, plan path)."""
    plan = tmp_path_factory.mktemp("r18") / "p.json"
    torch.manual_seed(0)
    rc = main(["plan", "torchvision:resnet18", "--method", "uniform", "--budget", "2.52x", "--out", str(plan)])
    return rc, plan


@pytest.fixture(scope="module")
def r18_applied(r18_plan):
    """``batude apply`` of that plan (run once): (exit code, plan path, checkpoint path)."""
    _, plan = r18_plan
    model = plan.parent / "m.pt"
    torch.manual_seed(0)
    rc = main(["apply", "torchvision:resnet18", "--plan", str(plan), "--out", str(model)])
    return rc, plan, model


def test_plan_json_records_method_budget_and_arch(r18_plan):
    rc_plan, plan = r18_plan
    assert rc_plan == 0
    data = json.loads(plan.read_text())
    assert data["format"] == "batude-rank-plan"
    assert data["method"] == "uniform"
    assert data["arch"] == "torchvision:resnet18"
    assert data["budget"] == {"metric": "macs", "kind": "ratio", "value": 2.52, "text": "2.52x"}
    assert data["input_shape"] == [1, 3, 224, 224]
    assert 2.52 <= data["totals"]["macs_reduction"] <= 2.52 * 1.01
    assert RankPlan.load(plan).macs == data["totals"]["macs"]


@pytest.mark.slow
def test_applied_model_meets_the_budget_by_flop_counter(r18_applied):
    rc_apply, plan_path, model_path = r18_applied
    assert rc_apply == 0
    compressed = load(model_path)
    dense = load_model("torchvision:resnet18").model
    shape = (1, 3, 224, 224)
    dense_macs, compressed_macs = flop_counter_macs(dense, shape), flop_counter_macs(compressed, shape)
    reduction = dense_macs / compressed_macs
    assert reduction >= 2.52  # never above the budget
    assert reduction <= 2.52 * 1.01  # and within 1% of it
    assert compressed_macs == RankPlan.load(plan_path).macs

    ckpt = load_checkpoint(model_path)
    assert ckpt.plan == RankPlan.load(plan_path)
    assert ckpt.arch == ArchRef("torchvision:resnet18")
    assert ckpt.metadata["input_shape"] == list(shape)


# ------------------------------------------------------------------------------- energy / vbmf x 8


@pytest.mark.parametrize("method", ["energy", "vbmf"])
def test_plan_with_multiple_of_8(capsys, tmp_path, method):
    torch.manual_seed(0)
    rc, out, err = run_cli(capsys, ["plan", "batude:resnet20", "--input", "1,3,32,32", "--method", method,
                                    "--budget", "2x", "--multiple-of", "8", "--out", tmp_path / "p.json"])
    assert rc == 0, err
    assert f"{method} plan for budget 2x" in out
    plan = RankPlan.load(tmp_path / "p.json")
    assert plan.method == method and plan.options["multiple_of"] == 8

    decomposed = [l for l in plan.layers if l.ranks is not None]
    assert decomposed
    for layer in decomposed:
        g = layer.geometry
        fulls = (g.out_channels, g.in_channels) if len(layer.ranks) == 2 else (min(g.out_channels, g.in_channels),)
        for rank, full in zip(layer.ranks, fulls):
            assert rank % 8 == 0 or rank == full, (layer.name, layer.ranks, fulls)

    # budget met, measured independently on the factorised structure
    model = ArchRef("batude:resnet20").build()
    dense_macs = flop_counter_macs(model, (1, 3, 32, 32))
    apply_plan_(model, plan, init="empty")
    compressed_macs = flop_counter_macs(model, (1, 3, 32, 32))
    assert compressed_macs == plan.macs
    assert dense_macs / compressed_macs >= 2.0


# ---------------------------------------------------------------------------------------- errors


def _error_case(case: str, tmp_path: Path, r18_plan: Path) -> tuple[list, str, str]:
    """(argv, prefix of the error line, text the error must contain) for one failure mode."""
    out = tmp_path / "out.json"
    if case == "budget-unparsable":
        return ["plan", "torchvision:resnet18", "--budget", "lots", "--out", out], "batude plan: error:", "does not parse"
    if case == "budget-1x":
        return ["plan", "torchvision:resnet18", "--budget", "1x", "--out", out], "batude plan: error:", "no compression"
    if case == "budget-infeasible":
        return ["plan", "torchvision:resnet18", "--budget", "1000x", "--out", out], "batude: error:", "infeasible"
    if case == "unknown-model":
        return ["inspect", "torchvision:nope", "--json", out], "batude: error:", "'nope'"
    if case == "missing-checkpoint":
        return ["inspect", tmp_path / "missing.pt", "--json", out], "batude: error:", "not found"
    if case == "input-not-integers":
        return ["inspect", "torchvision:resnet18", "--input", "1,3,x", "--json", out], "batude inspect: error:", "'1,3,x'"
    if case == "input-wrong-channels":
        return ["inspect", "torchvision:resnet18", "--input", "1,1,64,64", "--json", out], "batude: error:", "does not run on input shape"
    if case == "plan-not-json":
        (tmp_path / "plan.json").write_text("this is { not json")
        return (["apply", "torchvision:resnet18", "--plan", tmp_path / "plan.json", "--out", tmp_path / "m.pt"],
                "batude: error:", "not valid JSON")
    if case == "plan-missing":
        return (["apply", "torchvision:resnet18", "--plan", tmp_path / "nope.json", "--out", tmp_path / "m.pt"],
                "batude: error:", "not found")
    if case == "plan-for-another-arch":
        shutil.copy(r18_plan, tmp_path / "plan.json")
        return (["apply", "torchvision:vgg11_bn", "--plan", tmp_path / "plan.json", "--out", tmp_path / "m.pt"],
                "batude: error:", "made for torchvision:resnet18")
    if case == "plan-out-missing-dir":
        return (["plan", "torchvision:resnet18", "--budget", "2x", "--out", tmp_path / "nodir" / "p.json"],
                "batude: error:", "does not exist")
    if case == "apply-out-missing-dir":
        torch.manual_seed(0)
        assert main(["plan", "batude:resnet20", "--budget", "2x", "--out", str(tmp_path / "plan.json")]) == 0
        return (["apply", "batude:resnet20", "--plan", tmp_path / "plan.json", "--out", tmp_path / "nodir" / "m.pt"],
                "batude: error:", "does not exist")
    if case == "include-matches-nothing":
        return (["plan", "torchvision:resnet18", "--budget", "2x", "--include", "nomatch*", "--out", out],
                "batude: error:", "no layer is eligible")
    raise AssertionError(case)


ERROR_CASES = [
    "budget-unparsable", "budget-1x", "budget-infeasible", "unknown-model", "missing-checkpoint",
    "input-not-integers", "input-wrong-channels", "plan-not-json", "plan-missing", "plan-for-another-arch",
    "plan-out-missing-dir", "apply-out-missing-dir", "include-matches-nothing",
]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_error_is_one_line_and_exit_code_2(capsys, tmp_path, r18_plan, case):
    argv, prefix, needle = _error_case(case, tmp_path, r18_plan[1])
    capsys.readouterr()
    before = _files(tmp_path)

    rc, out, err = run_cli(capsys, argv)

    line = assert_one_error_line(rc, err, prefix)
    assert needle in line
    assert out == ""
    assert _files(tmp_path) == before  # no output file, no temporary left behind


def test_argparse_errors_are_one_line_pointing_to_help(capsys, tmp_path):
    rc, _, err = run_cli(capsys, ["plan", "torchvision:resnet18", "--budget", "1x", "--out", tmp_path / "p.json"])
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("batude plan: error:") and "--help" in err
    assert list(tmp_path.iterdir()) == []


def test_export_of_an_unknown_model_is_one_line_in_process(capsys, tmp_path):
    rc, out, err = run_cli(capsys, ["torchvision:nope", "--out", tmp_path / "x"], entry=export_main)
    line = assert_one_error_line(rc, err, "batude-export: error:")
    assert "unknown torchvision classifier" in line and not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------- console scripts


def _script(name: str) -> str:
    path = shutil.which(name, path=str(VENV_BIN) + os.pathsep + os.environ.get("PATH", ""))
    assert path, f"console script {name} is not installed in {VENV_BIN}"
    return path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


@pytest.mark.parametrize("name, needles", [
    ("batude", [r"^\s+inspect\s", r"^\s+plan\s", r"^\s+apply\s", r"^\s+demo\s"]),
    ("batude-export", [r"--dynamic-batch MIN:OPT:MAX", r"--trt\b"]),
], ids=["batude", "batude-export"])
def test_console_script_help(tmp_path, name, needles):
    proc = _run([_script(name), "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {name}")
    for needle in needles:
        assert re.search(needle, proc.stdout, re.M), (needle, proc.stdout)
    assert proc.stderr == ""


def test_console_script_export_error_exits_2(tmp_path):
    proc = _run([_script("batude-export"), "missing.pt"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("batude-export: error: checkpoint missing.pt not found")
    assert list(tmp_path.iterdir()) == []  # no export_out folder


def test_python_m_batude_version(tmp_path):
    proc = _run([sys.executable, "-m", "batude", "--version"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"batude {__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__)


# -------------------------------------------------------------------------------------------- demo


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed")
def saved_ok(out):
    report = json.loads((out / "report.json").read_text())
    return report["checks"]["onnx_matches_pytorch"] and report["export"]["onnx"]["dynamic_batch"]


def test_demo_pipeline_on_a_tiny_schedule(tmp_path):
    from batude.demo import DemoSchedule, run_demo

    out, lines = tmp_path / "demo", []
    report = run_demo(out, "2.52x", DemoSchedule(subset=600, dense_epochs=1, epochs_admm=1, epochs_ft=1),
                      device="cpu", emit=lines.append)
    assert sorted(p.name for p in out.iterdir()) == ["batude.pt", "dense.pt", "export", "plan.json", "report.json", "uniform.pt"]
    assert (out / "export" / "model.onnx").is_file() and saved_ok(out)
    saved = json.loads((out / "report.json").read_text())
    assert saved["checks"]["passed"] is True and all(saved["checks"].values())
    assert saved == json.loads(json.dumps(report))
    for method in ("batude", "uniform"):
        result = report["methods"][method]
        assert 2.52 <= result["macs_reduction"] <= 2.52 * 1.01
        assert flop_counter_macs(load(out / f"{method}.pt"), (1, 1, 28, 28)) == result["macs"]
    assert json.loads((out / "plan.json").read_text())["method"] == "batude"
    assert lines[0].startswith("schedule (custom)") and lines[-1].startswith("checks passed")


def test_demo_command_is_wired(capsys):
    assert main(["demo", "--help"]) == 0
    assert "--full" in capsys.readouterr().out


def test_progress_bar_in_a_log_file_prints_whole_lines_not_redraws(capsys):
    from batude.cli._common import ProgressBar

    bar = ProgressBar()  # pytest's captured stderr is not a terminal, like a log file or CI
    for step in range(1, 201):
        bar("train 1/1", step, 200, 0.25)
    bar("export", 1, 1, note="done")
    assert capsys.readouterr().err.splitlines() == [
        "train 1/1        [########################] 200/200 loss 0.2500", "export           [########################] 1/1 done"]
