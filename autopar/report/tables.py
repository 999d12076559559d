"""Plain data rows of a Plan for the HTML report (the CLI renders the same facts with rich).

Consumes: a Plan, optionally its Graph and an AuditReport. Produces: ``(header, rows)`` pairs of strings and
``partition_spec_text``. No HTML here; ``autopar.report.html`` escapes and lays out.
"""

from __future__ import annotations

from typing import Any, Sequence

from autopar.ir.printing import human_bytes, human_flops

__all__ = ["audit_rows", "collective_rows", "overview_rows", "param_rows", "partition_spec_text", "stage_layers",
           "stage_rows"]

Rows = tuple[list[str], list[list[str]]]


def partition_spec_text(spec: Sequence[Sequence[str]]) -> str:
    """``P('x', None)`` style text of a plan spec (``[["x"], []]``); ``P()`` for a scalar."""
    parts = []
    for axes in spec:
        if not axes:
            parts.append("None")
        elif len(axes) == 1:
            parts.append(repr(axes[0]))
        else:
            parts.append("(" + ", ".join(repr(a) for a in axes) + ")")
    return "P(" + ", ".join(parts) + ")"


def stage_layers(plan: Any, graph: Any = None) -> list[str]:
    """Per stage, its layer range as text (``"0-3"``), ``"all"`` or ``"?"``."""
    ranges = (plan.search or {}).get("stage_layers") or (plan.method_options or {}).get("stage_layers")
    if ranges and len(ranges) == len(plan.stages):
        return [f"{a}-{b - 1}" if b - a > 1 else str(a) for a, b in ranges]
    if len(plan.stages) == 1:
        if graph is not None:
            layers = sorted({op.layer for op in graph.ops if op.layer is not None})
            if layers:
                return [f"all ({layers[0]}-{layers[-1]})"]
        return ["all"]
    return ["?"] * len(plan.stages)


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f} ms"


def overview_rows(plan: Any) -> Rows:
    e = plan.estimate
    c = plan.cluster or {}
    rows = [
        ["method", f"{plan.method} {dict(plan.method_options)}"],
        ["cluster", f"{c.get('name', '?')}: {c.get('nodes', '?')} node(s) x {c.get('devices_per_node', '?')} "
                    f"{c.get('device', {}).get('name', '?')}"],
        ["mesh", " x ".join(f"{n}={s}" for n, s in zip(plan.axis_names, plan.mesh_shape))],
        ["stages", str(len(plan.stages))],
        ["step time", _ms(e.step_time_s)],
        ["compute / communication", f"{_ms(e.compute_time_s)} / {_ms(e.comm_time_s)}"],
        ["pipeline bubble", f"{e.bubble_fraction:.1%}"],
        ["MFU", f"{e.mfu:.1%}"],
        ["peak memory per device", human_bytes(e.peak_memory_bytes)],
        ["flops per step", human_flops(e.flops)],
    ]
    if "search_time_s" in (plan.search or {}):
        rows.append(["search time", f"{plan.search['search_time_s']:.2f} s"])
    return ["", ""], rows


def stage_rows(plan: Any, layers: Sequence[str]) -> Rows:
    rows = []
    for st, lay in zip(plan.stages, layers):
        e = st.estimate
        rows.append([st.name, lay, f"{st.devices[0]}-{st.devices[-1]} ({len(st.devices)})",
                     " x ".join(f"{n}={s}" for n, s in zip(st.axis_names, st.mesh_shape)), _ms(e.step_time_s),
                     _ms(e.compute_time_s), _ms(e.comm_time_s), human_bytes(e.peak_memory_bytes)])
    return ["stage", "layers", "devices", "logical mesh", "time", "compute", "comm", "memory / device"], rows


def param_rows(plan: Any, graph: Any = None, limit: int = 30) -> Rows:
    shapes = {t.name: (tuple(t.shape), t.nbytes) for t in graph.input_tensors()} if graph is not None else {}
    rows = []
    for st in plan.stages:
        for name, spec in st.input_specs:
            shape, nbytes = shapes.get(name, (None, -1))
            rows.append((nbytes, [st.name, name, ("x".join(map(str, shape)) or "scalar") if shape is not None else "?",
                                  human_bytes(nbytes) if nbytes >= 0 else "?", partition_spec_text(spec)]))
    if shapes:
        rows.sort(key=lambda r: -r[0])
    return ["stage", "path", "shape", "size", "PartitionSpec"], [r for _, r in rows[:limit]]


def collective_rows(plan: Any) -> Rows:
    rows = []
    for st in plan.stages:
        e = st.estimate
        for kind, b in sorted(e.comm_bytes.items(), key=lambda kv: -kv[1]):
            rows.append([st.name, kind, str(e.collective_counts.get(kind, 0)), human_bytes(b)])
    return ["stage", "kind", "count", "bytes / device"], rows


def audit_rows(report: Any) -> Rows:
    p, c, r = report.predicted, report.compiled, report.ratios()
    rows = [["peak memory / device", human_bytes(p.peak_memory_bytes), human_bytes(c.peak_memory_bytes),
             f"{r['peak_memory_bytes']:.3f}"]]
    for kind in sorted(set(p.comm_bytes) | set(c.comm_bytes)):
        rows.append([f"{kind} bytes / device", human_bytes(p.comm_bytes.get(kind, 0)),
                     human_bytes(c.comm_bytes.get(kind, 0)), f"{r[f'comm_bytes[{kind}]']:.3f}"])
    for kind in sorted(set(p.collective_counts) | set(c.collective_counts)):
        rows.append([f"{kind} count", str(p.collective_counts.get(kind, 0)), str(c.collective_counts.get(kind, 0)),
                     ""])
    rows.append(["flops (all devices)", human_flops(p.flops), human_flops(c.flops), ""])
    return ["quantity", "predicted", "compiled", "ratio"], rows
