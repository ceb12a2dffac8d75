"""BC-ADL's penalty per training step: operator count and time, batude's form vs the per-unfolding definition.

The definition ``(rho/2) * sum_l sum_n ||W_l(n) - Z + U||^2`` costs a few operators per unfolding
in the forward and as many in the backward; batude computes the same value and gradient from
per-layer mean targets cached between Z/U updates (``BCADL.penalty``). On a GPU every operator is
a kernel launch, and a Fashion-MNIST ResNet-20 step is launch-bound, so the operator count is what
a GPU step pays. Counts are the aten operators the profiler records for one forward+backward of
the penalty alone (nested calls included, view-only operators excluded), on the CPU.

    python benchmarks/bcadl_penalty_ops.py --out benchmarks/results/cpu_bcadl_penalty_ops
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from batude.bench.env import environment
from batude.functional.tucker import unfold
from batude.models import resnet20
from batude.rank.bcadl import BCADL

_VIEWS = {"view", "reshape", "as_strided", "expand", "permute", "movedim", "t", "transpose", "unsqueeze", "squeeze",
          "flatten", "detach", "empty", "empty_like", "empty_strided", "alias", "select", "slice", "split", "narrow",
          "unbind", "_unsafe_view", "resolve_conj", "resolve_neg", "lift_fresh", "result_type"}


def by_definition(admm: BCADL) -> torch.Tensor:
    """The penalty term by term, as METHOD.md writes it (the reference)."""
    terms = [(unfold(w, n) - sp.z + sp.u).square().sum()
             for w, splits in zip(admm._weights(), admm.splits) for n, sp in enumerate(splits)]
    return 0.5 * admm.rho * torch.stack(terms).sum()


def _forward_backward(admm: BCADL, penalty) -> tuple[torch.Tensor, list[torch.Tensor]]:
    weights = admm._weights()
    for w in weights:
        w.grad = None
    value = penalty()
    value.backward()
    return value.detach(), [w.grad for w in weights]


def operator_count(admm: BCADL, penalty) -> int:
    _forward_backward(admm, penalty)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _forward_backward(admm, penalty)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::") and e.key[6:] not in _VIEWS)


def milliseconds(admm: BCADL, penalty, iters: int) -> float:
    """Mean CPU ms per forward+backward (not ``time_callable``: it runs under inference mode, which has no backward)."""
    for _ in range(5):
        _forward_backward(admm, penalty)
    start = time.perf_counter()
    for _ in range(iters):
        _forward_backward(admm, penalty)
    return (time.perf_counter() - start) / iters * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--iters", type=int, default=200)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    admm = BCADL(model, "2.5x", input_shape=(1, 1, 28, 28))
    with torch.no_grad():  # a mid-training state: non-zero duals (before any penalty call builds its cached targets)
        for sp in (sp for splits in admm.splits for sp in splits):
            sp.u.normal_(0, 0.01)
    (ref, ref_grads), (got, got_grads) = _forward_backward(admm, lambda: by_definition(admm)), _forward_backward(admm, admm.penalty)
    report = {
        "env": environment(), "model": "batude:resnet20 (1x28x28), 2.5x FLOPs budget",
        "unfoldings": sum(len(s) for s in admm.splits), "layers": len(admm.splits),
        "value_rel_diff": abs(float(got - ref)) / abs(float(ref)),
        "grad_max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(ref_grads, got_grads)),
        "ops_definition": operator_count(admm, lambda: by_definition(admm)), "ops_batude": operator_count(admm, admm.penalty),
        "ms_definition": milliseconds(admm, lambda: by_definition(admm), args.iters),
        "ms_batude": milliseconds(admm, admm.penalty, args.iters),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bcadl_penalty_ops.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['unfoldings']} unfoldings over {report['layers']} layers; value differs by {report['value_rel_diff']:.1e} "
          f"(relative), gradients by {report['grad_max_abs_diff']:.1e}\n"
          f"aten operators per penalty forward+backward: {report['ops_definition']} by definition, {report['ops_batude']} batude\n"
          f"CPU ms per penalty forward+backward: {report['ms_definition']:.3f} by definition, {report['ms_batude']:.3f} batude")
    return 0


if __name__ == "__main__":
    sys.exit(main())
