"""Matplotlib pictures of a Plan, as PNG bytes: pipeline Gantt chart, per-stage time and memory bars,
sharding maps of the largest tensors.

Consumes: a Plan (and the traced Graph for tensor shapes). Produces: PNG bytes (``Figure`` + Agg canvas
directly: no pyplot, no global backend switch). Works for any number of stages.
Sharding map: a tensor drawn as a 2-D grid (dimension 0 down, dimension 1 across; a vector is one row;
dimensions past the second are folded into the title), cut into the blocks its spec makes; each block
is coloured by the lowest device holding it and labelled with the devices holding it.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

from autopar.report.schedule import pipeline_schedule
from autopar.report.tables import partition_spec_text

__all__ = ["block_devices", "gantt_png", "largest_inputs", "sharding_map_png", "stage_bars_png"]


def _figure(w: float, h: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def gantt_png(plan: Any) -> bytes:
    slots = pipeline_schedule(plan)
    n = len(plan.stages)
    fig = _figure(9, 0.6 + 0.55 * n)
    ax = fig.add_subplot(1, 1, 1)
    colors = {"F": "#4c78a8", "B": "#f58518"}
    for s in slots:
        ax.barh(s.stage, (s.end - s.start) * 1e3, left=s.start * 1e3, height=0.7, color=colors[s.kind],
                edgecolor="white", linewidth=0.5)
        if (s.end - s.start) * 1e3 > 0.04 * max(x.end for x in slots) * 1e3:
            ax.text((s.start + s.end) / 2 * 1e3, s.stage, f"{s.kind}{s.microbatch}", ha="center", va="center",
                    fontsize=7, color="white")
    ax.set_yticks(range(n), [st.name for st in plan.stages])
    ax.invert_yaxis()
    ax.set_xlabel("predicted time (ms)")
    bubble = plan.estimate.bubble_fraction
    ax.set_title(f"Predicted pipeline schedule (F forward, B backward; bubble {bubble:.1%})", fontsize=10)
    return _png(fig)


def stage_bars_png(plan: Any) -> bytes:
    names = [s.name for s in plan.stages]
    x = range(len(names))
    fig = _figure(9, 3.2)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    comp = [s.estimate.compute_time_s * 1e3 for s in plan.stages]
    comm = [s.estimate.comm_time_s * 1e3 for s in plan.stages]
    ax1.bar(x, comp, color="#4c78a8", label="compute")
    ax1.bar(x, comm, bottom=comp, color="#e45756", label="communication")
    ax1.set_xticks(list(x), names)
    ax1.set_ylabel("ms per step")
    ax1.set_title("Time per stage", fontsize=10)
    ax1.legend(fontsize=8)
    mem_bytes = [s.estimate.peak_memory_bytes for s in plan.stages]
    cap = (plan.cluster or {}).get("device", {}).get("memory_bytes")
    show_cap = bool(cap) and max(mem_bytes) > 0.05 * cap
    top = max(mem_bytes + ([cap] if show_cap else []))
    unit, scale = next((u, f) for u, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))
                       if top >= f or f == 1)
    ax2.bar(x, [m / scale for m in mem_bytes], color="#54a24b")
    if show_cap:
        ax2.axhline(cap / scale, color="black", linestyle="--", linewidth=1, label="device memory")
        ax2.legend(fontsize=8)
    ax2.set_xticks(list(x), names)
    ax2.set_ylabel(f"{unit} per device")
    ax2.set_title("Peak memory per device", fontsize=10)
    return _png(fig)


def largest_inputs(plan: Any, graph: Any, k: int = 4) -> list[tuple[str, tuple[int, ...], Any, Any]]:
    """(path, shape, spec, stage) of the ``k`` largest inputs over all stages (needs the graph's shapes)."""
    shapes = {t.name: (tuple(t.shape), t.nbytes) for t in graph.input_tensors()}
    rows = [(shapes[n][1], n, shapes[n][0], spec, st) for st in plan.stages for n, spec in st.input_specs
            if n in shapes and len(shapes[n][0]) >= 1]
    rows.sort(key=lambda r: -r[0])
    return [(n, shape, spec, st) for _, n, shape, spec, st in rows[:k]]


def block_devices(spec: Sequence[Sequence[str]], mesh_shape: Sequence[int], axis_names: Sequence[str],
                  devices: Sequence[int]) -> dict[tuple[int, ...], list[int]]:
    """Block index (one per tensor dimension) -> the devices holding that block."""
    size = dict(zip(axis_names, mesh_shape))
    out: dict[tuple[int, ...], list[int]] = {}
    for k, dev in enumerate(devices):
        coord, rest = {}, k
        for name, s in reversed(list(zip(axis_names, mesh_shape))):
            coord[name], rest = rest % s, rest // s
        idx = []
        for axes in spec:
            i = 0
            for a in axes:
                i = i * size[a] + coord[a]
            idx.append(i)
        out.setdefault(tuple(idx), []).append(dev)
    return out


def sharding_map_png(items: Sequence[tuple[str, tuple[int, ...], Any, Any]]) -> bytes:
    """Side-by-side sharding maps of ``items`` = (path, shape, spec, stage)."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    cols = max(1, min(len(items), 2))
    rows = max(1, math.ceil(len(items) / cols))
    fig = _figure(4.6 * cols, 3.6 * rows)
    cmap = colormaps["tab20"]
    for i, (name, shape, spec, stage) in enumerate(items):
        ax = fig.add_subplot(rows, cols, i + 1)
        blocks = block_devices(spec, stage.mesh_shape, stage.axis_names, stage.devices)
        size = dict(zip(stage.axis_names, stage.mesh_shape))
        splits = [math.prod(size[a] for a in axes) for axes in spec]
        nr, nc = (splits[0], splits[1]) if len(shape) >= 2 else (1, splits[0])
        cells: dict[tuple[int, int], list[int]] = {}
        for idx, devs in blocks.items():
            key = (idx[0], idx[1]) if len(shape) >= 2 else (0, idx[0])
            cells.setdefault(key, []).extend(devs)
        h_total, w_total = (shape[0], shape[1]) if len(shape) >= 2 else (1, shape[0])
        aspect = max(0.15, min(1.0, h_total / w_total)) if w_total else 1.0
        for (r, c), devs in cells.items():
            devs = sorted(set(devs))
            ax.add_patch(Rectangle((c / nc, (nr - 1 - r) / nr * aspect), 1 / nc, aspect / nr,
                                   facecolor=cmap(devs[0] % 20), edgecolor="black", linewidth=0.6))
            if nr * nc <= 64:
                label = (f"all {len(devs)} devices" if len(devs) == len(stage.devices) and len(devs) > 1
                         else ",".join(map(str, devs[:4])) + ("..." if len(devs) > 4 else ""))
                ax.text((c + 0.5) / nc, (nr - 0.5 - r) / nr * aspect, label, ha="center", va="center", fontsize=6)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, aspect)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        extra = f" (+dims {shape[2:]})" if len(shape) > 2 else ""
        ax.set_title(f"{name}\n{'x'.join(map(str, shape))}{extra}  {partition_spec_text(spec)}", fontsize=8)
    return _png(fig)
