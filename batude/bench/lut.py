"""Latency lookup tables: measured per-layer latency on a rank grid, for latency-aware rank choice.

``LatencyTable.build`` times, for every eligible layer of a dense model at its real input shape,
the dense layer and each exact form of its factorisation (Tucker-2: chain, merge_first,
merge_last; 1x1/Linear: the two-layer product) on a grid of aligned ranks, plus the rest of the
model (whole dense latency minus its eligible layers). Whole models are timed as deployed, with
BatchNorm folded (:func:`deployed_model`). ``predict`` interpolates bilinearly between
grid points (clamped at the grid's ends). A table is keyed by device, torch version, dtype, batch
and backend, and refuses to be used elsewhere. ``validate`` compares its prediction for a plan
with the measured latency of the factorised model.

Backends: ``eager`` (modules called from Python), ``cuda-graph`` (each module captured once and
replayed) and ``triton``: CUDA graphs, plus each factorised 1x1/kxk conv on batude's fused Triton
kernel (:mod:`batude.kernels`, ``impl="triton"``) as one more variant, so that rank selection may
choose the kernel layer by layer. Grid points the kernel cannot run (padded ranks above 512) are
``null`` and never chosen. A kernel table times layers alone: the ReLU/residual-add epilogue
fusion of ``bench --backend triton`` (``fuse_resnet_``) is a further saving it does not predict.
On the CPU a ``triton`` table can only be built under ``TRITON_INTERPRET=1`` (tests; interpreted
timings mean nothing).

With CUDA graphs each layer's sample is ``LAYER_CALLS`` back-to-back replays (per call: what the
layer costs inside the graphed model, after the layer before it), and the whole model one replay
from an idle GPU (what a request sees, as ``batude bench`` measures it); the rest of the model
(``other_ms``) then holds the model's one launch. Timed one replay each, ResNet-18's 3x3 convs at
batch 1 summed to more than the whole graphed model on an H200, leaving 2-22 µs for the stem,
pooling, adds and activations. A table records ``layer_calls`` (1 in tables built before).
"""

from __future__ import annotations

import bisect
import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from batude._device import resolve_device
from batude._io import write_text_atomic
from batude.bench.backends import Backend, torch_runner
from batude.bench.env import environment
from batude.bench.layers import layer_input_shapes
from batude.bench.timing import noise_summarised, time_callable
from batude.errors import BatudeError
from batude.export.lower import Variant, apply_variants, lower, variant_module
from batude.functional.cost import LayerKind, max_ranks
from batude.nn.decompose import Init, decompose_module
from batude.rank.plan import RankPlan, apply_plan_
from batude.rank.latency import predict_layers
from batude.rank.problem import RankProblem, SelectorConfig, rank_grid

__all__ = ["LAYER_CALLS", "LatencyTable", "calls_per_layer_sample", "deployed_model", "table_key"]

log = logging.getLogger(__name__)

FORMAT, VERSION = "batude-latency-table", 1
LAYER_CALLS = 10  # back-to-back replays per sample of one layer's CUDA graph (module docs)
_TUCKER_VARIANTS = (Variant.CHAIN, Variant.MERGE_FIRST, Variant.MERGE_LAST)


def table_key(device: torch.device, dtype: torch.dtype, batch: int, backend: str = "eager") -> dict[str, Any]:
    env = environment()
    where = env.get("gpu") if device.type == "cuda" else env.get("cpu")
    return {"device": device.type, "hardware": where, "torch": env["torch"], "dtype": str(dtype).replace("torch.", ""),
            "batch": int(batch), "backend": backend}


def _grid(full: int, points: int, multiple_of: int) -> list[int]:
    allowed = rank_grid(full, 1, multiple_of)
    if len(allowed) <= points:
        return list(allowed)
    picks = {allowed[round(i * (len(allowed) - 1) / (points - 1))] for i in range(points)}
    return sorted(picks)


def _interp(grid: Sequence[int], value: float) -> tuple[int, int, float]:
    """Indices (lo, hi) and weight of ``value`` on ``grid`` (clamped)."""
    if value <= grid[0]:
        return 0, 0, 0.0
    if value >= grid[-1]:
        return len(grid) - 1, len(grid) - 1, 0.0
    hi = bisect.bisect_left(grid, value)
    lo = hi - 1
    return lo, hi, (value - grid[lo]) / (grid[hi] - grid[lo])


@dataclass
class LayerTable:
    name: str
    kind: str
    dense_ms: float
    grids: list[list[int]]  # one grid per mode
    ms: dict[str, list]  # variant -> latencies: [r1][r2] for Tucker-2, [r] for low-rank

    def predict(self, ranks: Sequence[int], variant: str) -> float:
        """Interpolated ms of ``variant`` at ``ranks``; ``inf`` where a grid point it needs was not measurable."""
        table = self.ms[variant]
        if len(self.grids) == 1:
            lo, hi, w = _interp(self.grids[0], ranks[0])
            corners = [(1 - w, table[lo]), (w, table[hi])]
        else:
            (a0, a1, wa), (b0, b1, wb) = _interp(self.grids[0], ranks[0]), _interp(self.grids[1], ranks[1])
            corners = [((1 - wa) * (1 - wb), table[a0][b0]), ((1 - wa) * wb, table[a0][b1]),
                       (wa * (1 - wb), table[a1][b0]), (wa * wb, table[a1][b1])]
        if any(ms is None for weight, ms in corners):
            return float("inf")
        return sum(weight * ms for weight, ms in corners)

    def best(self, ranks: Sequence[int]) -> tuple[str, float]:
        """Fastest form at ``ranks`` (a factorised variant, or ``dense``)."""
        options = {v: self.predict(ranks, v) for v in self.ms}
        options["dense"] = self.dense_ms
        name = min(options, key=options.get)
        return name, options[name]


@dataclass
class LatencyTable:
    key: dict[str, Any]
    input_shape: list[int]
    model_ms: float  # whole dense model
    other_ms: float  # model_ms minus the eligible layers' dense latencies
    layers: dict[str, LayerTable] = field(default_factory=dict)
    layer_calls: int = 1  # calls per timing sample of each layer (module docs)

    @classmethod
    def build(cls, model: nn.Module, input_shape: Sequence[int], batch: int = 1, dtype: torch.dtype = torch.float32,
              device: str = "cpu", points: int = 4, multiple_of: int = 8, iters: int = 20, warmup: int = 3,
              backend: str = "eager", progress: Callable[[int, int, str], None] | None = None) -> "LatencyTable":
        """Measure a table for ``model`` (dense) at per-image ``input_shape`` (C, H, W).

        ``backend``: ``eager`` (each module called from Python) or ``cuda-graph`` (each module
        captured once and replayed: no launch overhead from Python, what a served model pays).
        ``progress(i, n, name)`` is called before each of the ``n`` layers is timed.
        """
        if backend not in ("eager", "cuda-graph", "triton"):
            raise BatudeError(f"latency tables are measured with the eager, cuda-graph or triton backend, not '{backend}'")
        if backend == "cuda-graph" and torch.device(device).type != "cuda":
            raise BatudeError("a cuda-graph latency table needs --device cuda; use --backend eager on the CPU")
        if backend == "triton":
            _check_kernels(torch.device(device))
        if points < 2 or multiple_of < 1:
            raise BatudeError(f"a rank grid needs points >= 2 and multiple_of >= 1 (got {points}, {multiple_of}); "
                              "pass e.g. --points 4 --multiple-of 8")
        dev = resolve_device(device, make_current=True)
        if dtype == torch.float16 and dev.type == "cpu":
            raise BatudeError("fp16 on the CPU is not a meaningful latency target (as for `batude bench`); "
                              "build the table with --dtype fp32 or on a GPU")
        model = copy.deepcopy(model).eval().to(dev, dtype)  # the caller's model keeps its device and dtype
        with noise_summarised("latency table"):  # hundreds of tiny timings: one warning, not one per cell
            return cls._build(model, input_shape, batch, dtype, dev, points, multiple_of, iters, warmup, backend, progress)

    @classmethod
    def _build(cls, model, input_shape, batch, dtype, dev, points, multiple_of, iters, warmup, backend, progress) -> "LatencyTable":
        problem = RankProblem.from_model(model, (1, *input_shape), config=SelectorConfig(multiple_of=1))
        inputs = layer_input_shapes(model, (1, *input_shape), [c.name for c in problem.candidates])
        runner = _runner_backend(backend, dev)
        layer_calls = calls_per_layer_sample(runner)

        def time(module: nn.Module, x: torch.Tensor, label: str, calls: int = layer_calls) -> float:
            if dev.type == "cuda" and x.dim() == 4:  # as batude.bench measures models on a GPU
                module, x = module.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                run = torch_runner(module, x, runner)
            return time_callable(run, iters=iters, warmup=warmup, device=dev, batch=batch, label=label, calls=calls).median_ms

        x = torch.randn((batch, *input_shape), device=dev, dtype=dtype)
        model_ms = time(deployed_model(model, (1, *input_shape)), x, "model", calls=1)
        layers = {}
        for i, cand in enumerate(problem.candidates):
            if progress is not None:
                progress(i, len(problem.candidates), cand.name)
            xi = torch.randn((batch, *inputs[cand.name]), device=dev, dtype=dtype)
            dense_ms = time(cand.module, xi, cand.name)
            grids = [_grid(full, points, multiple_of) for full in max_ranks(cand.layer.kind, cand.layer.geometry)]
            layers[cand.name] = LayerTable(cand.name, cand.layer.kind.value, dense_ms, grids,
                                           _measure_grid(cand, grids, xi, time, kernels=backend == "triton"))
        other = model_ms - sum(t.dense_ms for t in layers.values())
        if other < 0:  # per-layer timings add up to more than the whole model (caches, launch overlap)
            log.warning("the eligible layers timed alone take %.3f ms more than the whole model; "
                        "counting the rest of the model as 0 ms", -other)
            other = 0.0
        return cls(table_key(dev, dtype, batch, backend), list(input_shape), model_ms, other, layers, layer_calls)

    # -- batude.rank.latency.LatencyModel: what rank selection reads --------------------------------
    def layer_names(self) -> list[str]:
        return list(self.layers)

    def dense_ms(self, name: str) -> float:
        return self._layer(name).dense_ms

    def factorised_ms(self, name: str, ranks: Sequence[int]) -> tuple[str, float]:
        """Fastest exact factorised variant of ``name`` at ``ranks`` (interpolated) and its ms."""
        table = self._layer(name)
        options = {v: table.predict(ranks, v) for v in table.ms}
        best = min(options, key=options.get)
        return best, options[best]

    def grid(self, name: str) -> list[list[int]]:
        return [list(g) for g in self._layer(name).grids]

    def _layer(self, name: str) -> "LayerTable":
        table = self.layers.get(name)
        if table is None:
            raise BatudeError(f"the latency table has no layer '{name}'; it was built for another model, "
                              "build one for this model with `batude lut build`")
        return table

    @property
    def timed_with(self) -> str:
        """The backend the cells were timed with (a ``triton`` table: CUDA graphs; eager under the CPU interpreter)."""
        return _runner_backend(self.key.get("backend", "eager"), torch.device(self.key["device"])).value

    def check(self, device: str, dtype: torch.dtype, batch: int, backend: str = "eager") -> None:
        """Refuse to be used on another device, torch, dtype, batch or backend, or timed another way."""
        here = table_key(torch.device(device), dtype, batch, backend)
        diff = [f"{k}: table {self.key.get(k)!r}, here {v!r}" for k, v in here.items() if self.key.get(k) != v]
        if diff:
            raise BatudeError(f"latency table was measured elsewhere ({'; '.join(diff)}); build one here with `batude lut build`")
        calls = calls_per_layer_sample(_runner_backend(backend, torch.device(device)))
        if self.layer_calls != calls:  # e.g. a CUDA-graph table built before layers were timed back to back
            raise BatudeError(f"latency table timed each layer {self.layer_calls} call(s) per sample, tables are timed with "
                              f"{calls} here (module docs); build it again with `batude lut build`")

    def predict(self, plan: RankPlan) -> tuple[float, dict[str, str]]:
        """Predicted model latency (ms) for ``plan``, each factorised layer in its fastest exact variant.

        Layers the plan keeps dense, and table layers the plan does not list (skipped or filtered
        out), count at their dense latency. Returns the total and the variant per factorised layer.

        Raises:
            BatudeError: a plan layer is not in the table, or is another kind of layer or has ranks
                beyond the table's (a plan for another model).
        """
        for layer in plan.layers:
            table = self._layer(layer.name)
            if layer.ranks is not None and (layer.kind.value != table.kind or len(layer.ranks) != len(table.grids)
                                            or any(r > g[-1] for r, g in zip(layer.ranks, table.grids))):
                raise BatudeError(f"the plan's layer '{layer.name}' ({layer.kind.value}, ranks {list(layer.ranks)}) does not match "
                                  f"the table's ({table.kind}, full ranks {[g[-1] for g in table.grids]}): the plan is for "
                                  "another model; make the plan for the table's model, or build one for this model with `batude lut build`")
        return predict_layers(self, plan.layers)

    def summary(self, plan: RankPlan | None = None) -> dict[str, Any]:
        """Where the dense model's time goes, and with ``plan`` what the table predicts against a FLOPs-proportional bound.

        ``eligible_ms``: the factorisable layers' dense time; the rest (``other_ms``: stem, pooling,
        activations, adds) no rank choice can shrink. ``flops_bound_ms``: the model's time if every
        layer the plan factorises ran at its dense speed per FLOP (dense ms x MACs after / before):
        an Amdahl bound for the FLOPs cut, which per-layer kernels would have to reach. Offline: no device.
        """
        eligible = sum(t.dense_ms for t in self.layers.values())
        out: dict[str, Any] = {"key": self.key, "input_shape": self.input_shape, "model_ms": self.model_ms,
                               "layer_calls": self.layer_calls, "other_ms": self.other_ms, "eligible_ms": eligible,
                               "eligible_share": eligible / self.model_ms}
        if plan is not None:
            predicted, variants = self.predict(plan)
            planned = {l.name: l for l in plan.layers if l.ranks is not None}
            bound = self.other_ms + sum(t.dense_ms * (planned[n].macs_after / planned[n].macs_before if n in planned else 1.0)
                                        for n, t in self.layers.items())
            out.update(plan_macs_reduction=plan.macs_reduction, predicted_ms=predicted, predicted_speedup=self.model_ms / predicted,
                       flops_bound_ms=bound, flops_bound_speedup=self.model_ms / bound, variants=variants)
        return out

    def validate(self, model: nn.Module, plan: RankPlan, iters: int = 20, warmup: int = 3) -> dict[str, float]:
        """Predicted vs measured latency of ``model`` factorised by ``plan``, each layer in the table's fastest variant."""
        dev = torch.device(self.key["device"])
        dtype = getattr(torch, self.key["dtype"])
        predicted, forms = self.predict(plan)
        tucker = {l.name for l in plan.layers if l.ranks is not None and l.kind is LayerKind.TUCKER2}
        forms = {n: v for n, v in forms.items() if n in tucker or v == Variant.TRITON.value}
        backend = self.key.get("backend", "eager")
        compressed = deployed_model(model, (1, *self.input_shape), plan, forms, plain=backend == "triton").to(dev, dtype)
        x = torch.randn((self.key["batch"], *self.input_shape), device=dev, dtype=dtype)
        if dev.type == "cuda":
            compressed, x = compressed.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            run = torch_runner(compressed, x, _runner_backend(backend, dev))
        measured = time_callable(run, iters=iters, warmup=warmup, device=dev).median_ms
        return {"predicted_ms": predicted, "measured_ms": measured, "error": abs(predicted - measured) / measured}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "key": self.key, "input_shape": self.input_shape,
                "model_ms": self.model_ms, "other_ms": self.other_ms, "layer_calls": self.layer_calls,
                "layers": {n: vars(t) for n, t in self.layers.items()}}

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BatudeError(f"cannot read latency table {path} ({type(err).__name__}); rebuild it with `batude lut build`") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
            raise BatudeError(f"{path} is not a batude latency table of version {VERSION}; rebuild it with `batude lut build`")
        try:
            if not isinstance(d["key"], dict):
                raise TypeError("'key' is not an object")
            layers = {str(n): LayerTable(**t) for n, t in d["layers"].items()}
            return cls(d["key"], list(d["input_shape"]), float(d["model_ms"]), float(d["other_ms"]), layers,
                       int(d.get("layer_calls", 1)))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise BatudeError(f"latency table {path} is malformed ({type(err).__name__}: {err}); "
                              "rebuild it with `batude lut build`") from None


def _check_kernels(dev: torch.device) -> None:
    """Refuse a ``triton`` table where batude's kernels cannot run, saying what to do instead."""
    from batude.nn.tucker_conv import ensure_kernels_importable

    ensure_kernels_importable()
    from batude.kernels._runtime import interpreting, triton_unavailable_reason

    reason = triton_unavailable_reason()
    if reason:
        raise BatudeError(f"a triton latency table needs batude's kernels: {reason}")
    if dev.type != "cuda" and not interpreting():
        raise BatudeError("a triton latency table needs --device cuda (the kernels run on the CPU only under "
                          "TRITON_INTERPRET=1, whose timings mean nothing); use --backend eager on the CPU")


def deployed_model(dense: nn.Module, input_shape: Sequence[int], plan: RankPlan | None = None,
                   variants: dict[str, str] | None = None, plain: bool = False) -> nn.Module:
    """``dense`` as batude deploys it, for timing: BatchNorm folded into the convs (fx, as :func:`lower`
    does), then factorised by ``plan`` (structure only, weights uninitialised) and each named layer
    rebuilt as its variant (:func:`apply_variants`; ``plain``: chain layers as plain convs, so that
    only ``triton`` layers run on the kernels). Folding before factorising keeps kernel layers intact,
    so every backend times the same BatchNorm-free model. A model fx cannot trace keeps its BatchNorm,
    with a warning.
    """
    try:
        model = lower(dense, input_shape, {})[0]
    except BatudeError as err:
        log.warning("timing the model with its BatchNorm unfolded: %s", err)
        model = copy.deepcopy(dense).eval()
    if plan is not None:
        model = apply_plan_(model, plan, init=Init.EMPTY).eval()
    return apply_variants(model, variants or {}, plain=plain).eval()


def calls_per_layer_sample(runner: Backend) -> int:
    """Calls per timing sample of one layer: back to back where layers are replayed CUDA graphs (module docs)."""
    return LAYER_CALLS if runner is Backend.CUDA_GRAPH else 1


def _runner_backend(backend: str, dev: torch.device) -> Backend:
    """How a table's modules are run: ``triton`` tables replay CUDA graphs (eagerly under the CPU interpreter)."""
    if backend == "triton":
        return Backend.CUDA_GRAPH if dev.type == "cuda" else Backend.EAGER
    return Backend(backend)


def _on_kernel(layer: nn.Module) -> nn.Module | None:
    """``layer`` on the Triton kernel, or None where the kernel cannot run it (the grid point stays null)."""
    try:
        return variant_module(layer, Variant.TRITON)
    except BatudeError as err:
        log.debug("no kernel timing for %s: %s", getattr(layer, "name", layer), err)
        return None


def _measure_grid(cand, grids: list[list[int]], x: torch.Tensor, time, kernels: bool = False) -> dict[str, list]:
    """Latencies of every form on the grid; ``kernels`` adds the ``triton`` form (None where it cannot run)."""
    kind = LayerKind(cand.layer.kind)
    if kind is not LayerKind.TUCKER2:
        forms = ("chain", "triton") if kernels and kind is LayerKind.LOWRANK_CONV else ("chain",)
        rows: dict[str, list] = {f: [] for f in forms}
        for r in grids[0]:
            layer = decompose_module(cand.module, kind, (r,), name=cand.name, init=Init.EMPTY).eval().to(x.device, x.dtype)
            rows["chain"].append(time(layer, x, f"{cand.name} r{r}"))
            if "triton" in rows:
                kernel = _on_kernel(layer)
                rows["triton"].append(None if kernel is None else time(kernel, x, f"{cand.name} triton r{r}"))
        return rows
    variants = _TUCKER_VARIANTS + ((Variant.TRITON,) if kernels else ())
    tables: dict[str, list] = {v.value: [] for v in variants}
    for r1 in grids[0]:
        rows = {v.value: [] for v in variants}
        for r2 in grids[1]:
            layer = decompose_module(cand.module, kind, (r1, r2), name=cand.name, init=Init.EMPTY).eval().to(x.device, x.dtype)
            for v in variants:
                module = _on_kernel(layer) if v is Variant.TRITON else variant_module(layer, v).eval()
                rows[v.value].append(None if module is None else time(module, x, f"{cand.name} {v.value} {r1},{r2}"))
        for v in variants:
            tables[v.value].append(rows[v.value])
    return tables
