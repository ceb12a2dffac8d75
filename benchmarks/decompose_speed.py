"""Tucker-2 decomposition time: batude's HOSVD (Gram eigenvectors) vs tensorly's ``partial_tucker`` HOSVD.

Every kxk conv of a torchvision model (random weights) is decomposed at half its channel ranks by
both, in the same process, float64 as batude computes; reports the seconds each takes and the
largest relative difference between their reconstructions.

    OMP_NUM_THREADS=1 python benchmarks/decompose_speed.py --models resnet18,resnet50 --out /tmp/dec
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from batude.bench.env import environment
from batude.functional.tucker import tensorly_tucker2, tucker2_decompose, tucker2_reconstruct


def measure(model_name: str) -> dict:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)
             and m.groups == 1 and m.in_channels > 3]
    ours_s = theirs_s = 0.0
    worst = 0.0
    for _, conv in convs:
        w = conv.weight.detach().to(torch.float64)
        ranks = (max(1, w.shape[0] // 2), max(1, w.shape[1] // 2))
        t = time.perf_counter()
        ours = tucker2_reconstruct(*tucker2_decompose(w, ranks))
        ours_s += time.perf_counter() - t
        t = time.perf_counter()
        theirs = tucker2_reconstruct(*tensorly_tucker2(w, ranks, 0))
        theirs_s += time.perf_counter() - t
        worst = max(worst, float((ours - theirs).norm() / theirs.norm()))
    return {"model": model_name, "layers": len(convs), "batude_s": round(ours_s, 2), "tensorly_s": round(theirs_s, 2),
            "speedup": round(theirs_s / ours_s, 1), "max_rel_difference": worst}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,resnet50")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    rows = [measure(m) for m in a.models.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decompose_speed.json").write_text(json.dumps({"env": environment(), "threads": torch.get_num_threads(),
                                                          "rows": rows}, indent=1) + "\n")
    print("| model | kxk convs | batude HOSVD s | tensorly HOSVD s | speed-up | max relative difference |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['layers']} | {r['batude_s']} | {r['tensorly_s']} | {r['speedup']}x | {r['max_rel_difference']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
