"""Resident blocks and warps per SM of a compiled kernel, from its registers, shared memory and warps (no GPU)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from batude.nn.tucker_conv import ensure_kernels_importable

ensure_kernels_importable()

from batude.kernels.aot import occupancy  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("registers, shared, warps, blocks, limiter", [
    (128, 20 * 1024, 4, 4, "registers"),       # 128 x 32 = 4096 registers a warp: 65536 / (4096 x 4)
    (129, 0, 4, 3, "registers"),               # 129 x 32 = 4128, allocated as 4352 per warp
    (32, 100 * 1024, 4, 2, "shared memory"),   # (100 KB + 1 KB reserved) x 2 fit 228 KB
    (16, 0, 16, 4, "warps"),                   # 64 warps an SM
    (16, 0, 1, 32, "blocks"),                  # 32 blocks an SM
    (200, 0, 2, 4, "registers"),               # 6400 a warp: 2 warps in each quarter's 16K registers, 8 an SM
    (128, 50 * 1024, 4, 4, "registers+shared memory"),  # both bind at 4 blocks: a tie names both
], ids=["registers", "register-rounding", "shared", "warps", "blocks", "register-partitions", "tie"])
def test_resident_blocks_on_an_h100_and_what_limits_them(registers, shared, warps, blocks, limiter):
    occ = occupancy(registers, shared, warps, arch=90)
    assert occ == {"blocks_per_sm": blocks, "warps_per_sm": blocks * warps, "limiter": limiter}


def test_other_architectures_and_unknowns():
    assert occupancy(32, 0, 4, arch=86)["warps_per_sm"] == 48  # GA10x: 48 resident warps an SM
    assert occupancy(32, 60 * 1024, 4, arch=80)["blocks_per_sm"] == 2  # A100: 164 KB an SM
    assert occupancy(None, 0, 4) is None and occupancy(32, 0, 4, arch=75) is None


def test_an_earlier_sweep_is_summarised_again_with_occupancy(tmp_path):
    """``kernels_aot.py --from-json`` on the committed sm_90 sweep: every compiled record gets its occupancy."""
    sweep = ROOT / "benchmarks" / "results" / "kernels_aot_sm90_s14" / "kernels_aot.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernels_aot.py"), "--from-json", str(sweep),
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "| tucker2 | fp16 | 394 | 0 |" in proc.stdout
    report = json.loads((tmp_path / "kernels_aot.json").read_text())
    assert all(r["occupancy"]["warps_per_sm"] >= r["num_warps"] for r in report["records"])
    fp16 = next(r for r in report["summary"] if (r["kernel"], r["dtype"]) == ("tucker2", "fp16"))
    assert fp16["min_warps_per_sm"] <= fp16["median_warps_per_sm"] and sum(fp16["limiters"].values()) == 394
    # the kernels that split a tile's work over programs get rows of their own, subsets of their kernel's row
    splits = {r["kernel"]: r for r in report["summary"] if r["dtype"] == "fp16" and "> 1)" in r["kernel"]}
    assert set(splits) == {"tucker2 (SPLIT_K > 1)", "tucker2 (SPLIT_N > 1)"}  # before the low-rank kernel's SPLIT_S
    assert all(0 < r["compiled"] < fp16["compiled"] for r in splits.values())
    expect = sum(r["config"].get("SPLIT_N", 1) > 1 for r in report["records"]
                 if r["kind"] == "tucker2" and r["origin"]["dtype"] == "fp16")
    assert splits["tucker2 (SPLIT_N > 1)"]["compiled"] == expect
