"""Rich tables of a Plan (and, when the traced Graph is at hand, of its ops): what the inspector prints.

Consumes: a ``Plan``, optionally the ``Graph`` it was planned from (for shapes and the most expensive ops) and
an ``AuditReport``. Produces: ``rich`` renderables; ``print_plan`` prints them all. Works for any number of
stages (one row per stage). Layer ranges come from ``plan.search["stage_layers"]`` or
``plan.method_options["stage_layers"]`` (``[[first, end), ...]``), else from the graph's layer marks.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from autopar.ir.printing import human_bytes, human_flops
from autopar.report.tables import partition_spec_text, stage_layers

__all__ = ["audit_table", "collectives_table", "ops_table", "overview_table", "params_table", "partition_spec_text",
           "print_plan", "stage_layers", "stages_table"]


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f} ms"


def _mesh_text(shape: Sequence[int], names: Sequence[str]) -> str:
    return " x ".join(f"{n}={s}" for n, s in zip(names, shape))


def _devices_text(devices: Sequence[int]) -> str:
    d = list(devices)
    if d == list(range(d[0], d[0] + len(d))):
        return f"{d[0]}-{d[-1]} ({len(d)})" if len(d) > 1 else str(d[0])
    return ",".join(map(str, d[:8])) + (f",... ({len(d)})" if len(d) > 8 else "")


def overview_table(plan: Any) -> Table:
    e = plan.estimate
    t = Table(title="Plan overview", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    c = plan.cluster or {}
    dev = c.get("device", {})
    t.add_row("method", f"{plan.method} {dict(plan.method_options)}")
    t.add_row("cluster", f"{c.get('name', '?')}: {c.get('nodes', '?')} node(s) x {c.get('devices_per_node', '?')} "
                         f"{dev.get('name', '?')}")
    t.add_row("mesh", _mesh_text(plan.mesh_shape, plan.axis_names) + f"  ({len(plan.stages)} stage(s))")
    busy = e.compute_time_s + e.comm_time_s
    share = e.comm_time_s / busy if busy > 0 else 0.0
    t.add_row("step time", _ms(e.step_time_s))
    # a pipeline's are device-time totals over stages and microbatches, not parts of its step time
    totals = " (device-time totals)" if "stage_layers" in (plan.method_options or {}) else ""
    t.add_row("compute / communication", f"{_ms(e.compute_time_s)} / {_ms(e.comm_time_s)} "
                                         f"({1 - share:.0%} / {share:.0%}){totals}")
    t.add_row("pipeline bubble", f"{e.bubble_fraction:.1%}")
    t.add_row("MFU", f"{e.mfu:.1%}")
    mem = dev.get("memory_bytes")
    t.add_row("peak memory per device", human_bytes(e.peak_memory_bytes)
              + (f" of {human_bytes(mem)} ({e.peak_memory_bytes / mem:.0%})" if mem else ""))
    t.add_row("flops per step", human_flops(e.flops))
    for key in ("num_microbatches", "schedule"):
        if key in (plan.method_options or {}) and plan.method_options[key] is not None:
            t.add_row(key.replace("_", " "), str(plan.method_options[key]))
    s = plan.search or {}
    if "search_time_s" in s:
        t.add_row("search", _search_text(s))
    return t


def _search_text(s: dict[str, Any]) -> str:
    """What the search did: the stage search's layer ILPs, a fixed layout's stage ILPs, or the mesh search."""
    head = f"{s['search_time_s']:.2f} s, solver {s.get('solver', '?')}"
    if s.get("stage_dp"):
        log = s["stage_dp"]
        return (f"{head}; stage search over {len(log)} microbatch count(s) "
                f"({', '.join(str(e.get('num_microbatches')) for e in log)}), "
                f"{sum(e.get('layer_ilps', 0) for e in log)} layer ILPs")
    if "stages" in s and "meshes" not in s:
        return f"{head}; {len(s['stages'])} stage ILP(s)"
    ilp = s.get("ilp", {})
    return (f"{head}; {len(s.get('meshes', []))} mesh(es), ILP {ilp.get('variables', '?')} variables "
            f"({ilp.get('status', '?')})")


def stages_table(plan: Any, graph: Any = None) -> Table:
    t = Table(title="Stages", title_justify="left")
    for col in ("stage", "layers", "devices", "logical mesh", "time", "compute", "comm", "memory / device"):
        t.add_column(col, justify="right" if col in ("time", "compute", "comm", "memory / device") else "left")
    for stage, layers in zip(plan.stages, stage_layers(plan, graph)):
        e = stage.estimate
        t.add_row(stage.name, layers, _devices_text(stage.devices), _mesh_text(stage.mesh_shape, stage.axis_names),
                  _ms(e.step_time_s), _ms(e.compute_time_s), _ms(e.comm_time_s), human_bytes(e.peak_memory_bytes))
    return t


def params_table(plan: Any, graph: Any = None, limit: int = 20) -> Table:
    """Inputs of every stage, largest first when shapes are known (from the graph), else in order."""
    shapes: dict[str, tuple[tuple[int, ...], int]] = {}
    if graph is not None:
        for t_ in graph.input_tensors():
            shapes[t_.name] = (tuple(t_.shape), t_.nbytes)
    rows = []
    for stage in plan.stages:
        for name, spec in stage.input_specs:
            shape, nbytes = shapes.get(name, (None, -1))
            rows.append((stage.name, name, shape, nbytes, spec))
    if shapes:
        rows.sort(key=lambda r: -r[3])
    multi = len(plan.stages) > 1
    t = Table(title=f"Inputs (parameters, optimizer state, batch): {len(rows)}"
              + (f", largest {limit} shown" if len(rows) > limit else ""), title_justify="left")
    if multi:
        t.add_column("stage")
    t.add_column("path")
    t.add_column("shape")
    t.add_column("size", justify="right")
    t.add_column("PartitionSpec")
    for stage, name, shape, nbytes, spec in rows[:limit]:
        cells = [name, ("x".join(map(str, shape)) or "scalar") if shape is not None else "?",
                 human_bytes(nbytes) if nbytes >= 0 else "?", partition_spec_text(spec)]
        t.add_row(*([stage] if multi else []), *cells)
    return t


def ops_table(plan: Any, graph: Any, limit: int = 10) -> Table:
    """The ops with the most flops, with the spec the plan pins on their first output (if it pins one)."""
    from autopar.ir.flops import op_flops

    pinned: dict[int, tuple[str, Any]] = {}
    for stage in plan.stages:
        for op_id, specs in stage.op_specs:
            pinned[int(op_id)] = (stage.name, specs[0] if specs else None)
    total = graph.flops() or 1.0
    ops = sorted(((op_flops(graph, op), op) for op in graph.ops), key=lambda x: -x[0])[:limit]
    t = Table(title=f"Most expensive ops (of {len(graph.ops)})", title_justify="left")
    for col in ("op", "primitive", "section", "layer", "output", "output spec", "flops", "share"):
        t.add_column(col, justify="right" if col in ("op", "flops", "share") else "left")
    for f, op in ops:
        out = graph.tensors[op.outputs[0]] if op.outputs else None
        stage_spec = pinned.get(op.id)
        spec = partition_spec_text(stage_spec[1]) if stage_spec and stage_spec[1] is not None else "(left to XLA)"
        t.add_row(str(op.id), op.primitive, op.section.value, "-" if op.layer is None else str(op.layer),
                  "x".join(map(str, out.shape)) if out is not None else "-", spec, human_flops(f), f"{f / total:.1%}")
    return t


def collectives_table(plan: Any) -> Table:
    multi = len(plan.stages) > 1
    per = "per stage: one microbatch's forward and backward plus the update" if multi else "per step"
    t = Table(title=f"Collectives (per device, {per})", title_justify="left")
    if multi:
        t.add_column("stage")
    for col in ("kind", "count", "bytes", "share"):
        t.add_column(col, justify="left" if col == "kind" else "right")
    sources = [(s.name, s.estimate) for s in plan.stages] if multi else [("", plan.estimate)]
    for name, e in sources:
        total = sum(e.comm_bytes.values()) or 1.0
        for kind, b in sorted(e.comm_bytes.items(), key=lambda kv: -kv[1]):
            t.add_row(*([name] if multi else []), kind, str(e.collective_counts.get(kind, 0)), human_bytes(b),
                      f"{b / total:.0%}")
    if not any(e.comm_bytes for _, e in sources):
        t.add_row(*([""] if multi else []), "(none)", "0", "0 B", "-")
    return t


def _ratio_text(r: float, tolerance: float) -> str:
    if math.isinf(r):
        return "[red]inf[/red]"
    ok = 1 - tolerance <= r <= 1 + tolerance
    return f"[{'green' if ok else 'red'}]{r:.3f}[/]"


def audit_table(report: Any, tolerance: float = 0.1) -> Table:
    """Predicted vs compiled, side by side, with ratios (predicted / compiled)."""
    t = Table(title=f"Audit: predicted vs compiled (tolerance {tolerance:.0%})", title_justify="left")
    for col in ("quantity", "predicted", "compiled", "ratio"):
        t.add_column(col, justify="left" if col == "quantity" else "right")
    p, c = report.predicted, report.compiled
    ratios = report.ratios()
    t.add_row("peak memory / device", human_bytes(p.peak_memory_bytes), human_bytes(c.peak_memory_bytes),
              _ratio_text(ratios["peak_memory_bytes"], tolerance))
    for kind in sorted(set(p.comm_bytes) | set(c.comm_bytes)):
        t.add_row(f"{kind} bytes / device", human_bytes(p.comm_bytes.get(kind, 0)),
                  human_bytes(c.comm_bytes.get(kind, 0)), _ratio_text(ratios[f"comm_bytes[{kind}]"], tolerance))
    for kind in sorted(set(p.collective_counts) | set(c.collective_counts)):
        t.add_row(f"{kind} count", str(p.collective_counts.get(kind, 0)), str(c.collective_counts.get(kind, 0)),
                  "(info)")
    t.add_row("flops (all devices)", human_flops(p.flops), human_flops(c.flops), "(info)")
    for key, r in ratios.items():
        if "/" in key:
            t.add_row(key, "", "", _ratio_text(r, tolerance))
    rewritten = [s for s in report.stages if s.planned is not None and s.planned != s.predicted]
    if rewritten:
        t.caption = (f"prediction as {rewritten[0].platform} lowers it: the plan's reduce-scatters counted as the "
                     "all-reduces XLA:CPU emits for them (2x the wire bytes)")
    return t


def make_console(quiet_colors: bool = False) -> Console:
    """stdout console; plain text 140 columns wide when stdout is not a terminal."""
    import sys

    tty = sys.stdout.isatty()
    return Console(width=None if tty else 140, no_color=quiet_colors or not tty, soft_wrap=False,
                   highlight=False)


def print_plan(console: Console, plan: Any, graph: Any = None, *, params: int = 20, ops: int = 10) -> None:
    console.print(overview_table(plan))
    console.print(stages_table(plan, graph))
    console.print(params_table(plan, graph, limit=params))
    if graph is not None and ops > 0:
        console.print(ops_table(plan, graph, limit=ops))
    console.print(collectives_table(plan))
