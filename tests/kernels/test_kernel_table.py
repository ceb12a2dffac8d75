"""A latency table measured with the kernels (``backend="triton"``), end to end, under the interpreter.

The timings are the interpreter's (meaningless as latency); what is checked is that the kernel
variant is really run and recorded on every grid point it supports, that plans and validation run
kernel layers, and that a kernel table refuses to be used for another backend. On a GPU the same
path is ``batude lut build --backend triton`` (``benchmarks/gpu_suite.sh``).
"""

import pytest
import torch
from torch import nn

from kernel_cases import interp


class TwoConvs(nn.Module):
    """A 3x3 conv (Tucker-2 candidate) and a 1x1 conv (low-rank pair candidate), 16 channels at 6x6."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.proj = nn.Conv2d(16, 32, 1)

    def forward(self, x):
        return self.proj(torch.relu(self.bn(self.conv(x))))


@interp
def test_a_kernel_table_times_the_kernel_on_every_grid_point_and_plans_use_it(tmp_path):
    from batude.bench.lut import LatencyTable
    from batude.errors import BatudeError
    from batude.rank import select_ranks

    torch.manual_seed(0)
    model = TwoConvs().eval()
    lut = LatencyTable.build(model, (16, 6, 6), batch=1, points=2, multiple_of=8, iters=1, warmup=0, backend="triton")
    assert lut.key["backend"] == "triton" and set(lut.layers) == {"conv", "proj"}
    conv, proj = lut.layers["conv"], lut.layers["proj"]
    assert set(conv.ms) == {"chain", "merge_first", "merge_last", "triton"} and set(proj.ms) == {"chain", "triton"}
    assert conv.grids == [[8, 16], [8, 16]] and proj.grids == [[8, 16]]
    assert all(ms is not None and ms > 0 for row in conv.ms["triton"] for ms in row)
    assert all(ms is not None and ms > 0 for ms in proj.ms["triton"])

    path = tmp_path / "lut.json"
    lut.save(path)
    loaded = LatencyTable.load(path)
    assert loaded.layers["conv"].ms["triton"] == conv.ms["triton"]
    with pytest.raises(BatudeError, match="backend: table 'triton', here 'cuda-graph'"):
        loaded.check("cpu", torch.float32, 1, "cuda-graph")

    # make the kernel the fastest form everywhere (interpreted timings say nothing): plans then record it
    for t in loaded.layers.values():
        t.ms["triton"] = [[1e-6] * len(row) for row in t.ms["triton"]] if t.kind == "tucker2" else [1e-6] * len(t.ms["triton"])
    # 2.2x: both layers must be factorised (at 2x the 3x3 at its minimum ranks alone meets the budget)
    plan = select_ranks(model, "2.2x", "uniform", input_shape=(1, 16, 6, 6), latency=loaded)
    assert plan.latency["variants"] == {"conv": "triton", "proj": "triton"}
    assert plan.variants == {"conv": "triton", "proj": "triton"}
    result = loaded.validate(model, plan, iters=1, warmup=0)
    assert result["measured_ms"] > 0 and result["predicted_ms"] > 0
