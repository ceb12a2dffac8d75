"""Latency reports: speedup pairing (compressed vs dense, same backend/batch/dtype), a table, a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from batude._io import atomic_path
from batude.errors import BatudeError

__all__ = ["add_speedups", "latency_table", "plot_speedup", "profile_tables", "plot_profiles", "plot_roofline"]


def _key(r: dict) -> tuple:
    return r["backend"], r["batch"], r["dtype"]


def add_speedups(results: list[dict], dense_label: str = "dense") -> list[dict]:
    """Add ``speedup`` (dense median / this median) to every available result with a dense partner."""
    dense = {_key(r): r for r in results if r["model"] == dense_label and r.get("available")}
    for r in results:
        partner = dense.get(_key(r))
        if r.get("available") and partner is not None:
            r["speedup"] = partner["median_ms"] / r["median_ms"]
    return results


def latency_table(results: Sequence[dict]) -> str:
    """Markdown table: model, FLOPs reduction, backend, batch, dtype, median/p90 ms, CV, throughput, speedup, and the
    roofline floor (ms, and the share of it the median reached) where the rows have one."""
    floors = any(r.get("roofline") for r in results)
    head = "| model | FLOPs reduction | backend | batch | dtype | median ms | p90 ms | CV | images/s | speedup vs dense |"
    lines = [head + (" floor ms (share) |" if floors else ""), "|---" * (11 if floors else 10) + "|"]
    for r in results:
        red = f"{r['flops_reduction']:.2f}x" if r.get("flops_reduction") else "-"
        if not r.get("available"):
            lines.append(f"| {r['model']} | {red} | {r['backend']} | {r['batch']} | {r['dtype']} | unavailable: {r['reason']} | | | | |"
                         + (" |" if floors else ""))
            continue
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        floor = ""
        if floors:
            rl = r.get("roofline")
            floor = f" {rl['floor_ms']:.3f} ({100 * rl['floor_share']:.0f}%) |" if rl else " - |"
        lines.append(f"| {r['model']} | {red} | {r['backend']} | {r['batch']} | {r['dtype']} | {r['median_ms']:.3f} | "
                     f"{r['p90_ms']:.3f} | {100 * r['cv']:.1f}% | {r['throughput']:.1f} | {speed} |" + floor)
    return "\n".join(lines)


def _short(name: str, width: int = 72) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."


def _category_lines(rows: Sequence[dict]) -> list[str]:
    """Rows: one per category (the heaviest first), a cell per model: ms per call and share of its busy time."""
    by_model = [{c["category"]: c for c in r["profile"]["categories"]} for r in rows]
    order = sorted({g for cats in by_model for g in cats}, key=lambda g: -max(cats.get(g, {}).get("ms", 0.0) for cats in by_model))
    lines = []
    for g in order:
        cells = [f"{cats[g]['ms']:.3f} ({100 * cats[g]['share']:.0f}%)" if g in cats else "-" for cats in by_model]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return lines


def profile_tables(results: Sequence[dict], top: int = 5) -> str:
    """Where the time goes, per (backend, batch, dtype): the profiled models' categories side by side
    (ms per call, share of the busy time), their busy and measured time, the GPU's idle share, and
    each model's ``top`` names; then the rows whose profiling failed."""
    out: list[str] = []
    for key in dict.fromkeys(_key(r) for r in results if r.get("profile")):
        rows = [r for r in results if _key(r) == key and r.get("profile")]
        backend, batch, dtype = key
        if not any(r["profile"]["events"] for r in rows):
            why = "it runs outside PyTorch's profiler" if backend == "onnxruntime" else "see the log"
            out.append(f"\nwhere the time goes: {backend}, batch {batch}: nothing recorded ({why})")
            continue
        kernels = rows[0]["profile"]["level"] == "kernels"
        what = "GPU kernel time" if kernels else "CPU time of top-level operators"
        out += [f"\nwhere the time goes: {backend}, batch {batch}, {dtype} ({what}, ms per call)",
                "| category | " + " | ".join(r["model"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
        out += _category_lines(rows)
        out.append("| **sum** | " + " | ".join(f"{r['profile']['busy_ms']:.3f}" for r in rows) + " |")
        out.append("| measured median | " + " | ".join(f"{r['median_ms']:.3f}" for r in rows) + " |")
        if kernels:
            idle = [r["profile"]["idle_share"] for r in rows]
            out.append("| GPU idle share | " + " | ".join("-" if i is None else f"{100 * i:.0f}%" for i in idle) + " |")
        for r in rows:
            names = r["profile"]["top"][:top]
            listed = "; ".join(f"{_short(t['name'])} {t['ms']:.3f} x{t['launches']:g}" for t in names) or "nothing recorded"
            out.append(f"{r['model']}, top {len(names)} (ms per call, calls per call): {listed}")
    failed = [r for r in results if r.get("profile_error")]
    out += [f"{r['model']} {r['backend']} b{r['batch']}: not profiled ({r['profile_error']})" for r in failed]
    return "\n".join(out)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BatudeError("plots need matplotlib: pip install matplotlib (or batude[dev])") from None
    return plt


def _save(fig, path: str | Path) -> None:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def plot_profiles(results: Sequence[dict], path: str | Path) -> bool:
    """Stacked bars of each profiled row's time per category (ms per call), one bar per model, grouped by
    (backend, batch); the measured median as a tick. Returns False (no file) when no row recorded anything."""
    rows = [r for r in results if r.get("profile") and r["profile"]["events"]]
    if not rows:
        return False
    plt = _pyplot()
    groups = sorted({g for r in rows for g in (c["category"] for c in r["profile"]["categories"])})
    colors = dict(zip(groups, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    labels = [f"{r['model']} | {r['backend']} b{r['batch']}" for r in rows]
    for i, r in enumerate(rows):
        left = 0.0
        for c in sorted(r["profile"]["categories"], key=lambda c: groups.index(c["category"])):
            ax.barh(i, c["ms"], left=left, color=colors[c["category"]], label=c["category"])
            left += c["ms"]
        ax.plot([r["median_ms"]] * 2, [i - 0.4, i + 0.4], color="black", linewidth=1.5)
    handles = {h.get_label(): h for h in ax.get_legend_handles_labels()[0]}
    ax.legend([handles[g] for g in groups if g in handles], [g for g in groups if g in handles], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    level = "GPU kernel time" if rows[0]["profile"]["level"] == "kernels" else "CPU time of top-level operators"
    ax.set_xlabel(f"ms per call ({level}; black tick: measured median)")
    ax.set_title("Where the time goes")
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_speedup(results: Sequence[dict], path: str | Path, title: str = "Measured speedup vs FLOPs reduction") -> None:
    """Scatter of measured speedup against FLOPs reduction per (backend, batch), with the ideal y = x line."""
    plt = _pyplot()
    points = [r for r in results if "speedup" in r and r.get("flops_reduction")]
    fig, ax = plt.subplots(figsize=(6, 4))
    top = max([r["flops_reduction"] for r in points] + [1.0]) * 1.05
    ax.plot([1, top], [1, top], linestyle="--", color="gray", label="ideal (speedup = FLOPs reduction)")
    ax.axhline(1.0, color="black", linewidth=0.5)
    for backend, batch in sorted({(r["backend"], r["batch"]) for r in points}):
        sel = sorted((r["flops_reduction"], r["speedup"]) for r in points if (r["backend"], r["batch"]) == (backend, batch))
        ax.plot([p[0] for p in sel], [p[1] for p in sel], marker="o", label=f"{backend}, batch {batch}")
    ax.set_xlabel("FLOPs reduction (x, FlopCounterMode)")
    ax.set_ylabel("measured speedup vs dense (x)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_roofline(rows: Sequence[dict], ceilings: dict, path: str | Path, title: str = "Roofline") -> bool:
    """Achieved TFLOP/s against arithmetic intensity for every row with a ``roofline`` (coloured by ``variant``, one
    marker per ``batch``) under the device's roofs (``ceilings``: :meth:`batude.bench.roofline.Ceilings.to_dict`).
    Returns False (no file) when no row has a roofline."""
    rows = [r for r in rows if r.get("roofline")]
    if not rows:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r["roofline"]["intensity"] for r in rows]
    lo, hi = min(xs + [ceilings["ridge_flop_per_byte"]]) / 2, max(xs + [ceilings["ridge_flop_per_byte"]]) * 2
    grid = [lo * (hi / lo) ** (i / 100) for i in range(101)]
    ax.plot(grid, [min(ceilings["tflops"], ceilings["gbps"] * x / 1e3) for x in grid], color="black", linewidth=1,
            label=f"roof: {ceilings['tflops']:.4g} TFLOP/s, {ceilings['gbps']:.4g} GB/s")
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    palette, shapes = plt.get_cmap("tab20").colors, "os^vDP<>*X"
    markers = {b: shapes[i % len(shapes)] for i, b in enumerate(sorted({r["batch"] for r in rows}))}
    colors = {v: palette[i % len(palette)] for i, v in enumerate(variants)}
    for r in rows:
        ax.scatter(r["roofline"]["intensity"], r["roofline"]["achieved_tflops"], color=colors[r["variant"]],
                   marker=markers[r["batch"]], s=28)
    for v in variants:
        ax.scatter([], [], color=colors[v], marker="o", label=v)
    for b, m in markers.items():
        ax.scatter([], [], color="gray", marker=m, label=f"batch {b}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte moved, at least)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    _save(fig, path)
    return True
