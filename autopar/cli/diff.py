"""``autopar diff A.json B.json``: what changed between two plans and the predicted cost delta.

Consumes: two plan files. Produces: a table of changed settings (method, mesh, cluster, stages, per-stage
meshes and devices, the inputs whose sharding changed, counts of changed output and intermediate specs) and
a table of the estimate of each with B - A and B / A; ``--json FILE`` the same as data (``plan_diff``).
Stages are compared by position. Refuses: missing files, unsupported schema versions (exit status 1).
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "compare two saved plans: what changed and the predicted cost delta"

# estimate field -> how to print a value of it
ESTIMATE_FIELDS: dict[str, str] = {"step_time_s": "ms", "compute_time_s": "ms", "comm_time_s": "ms",
                                   "bubble_fraction": "pct", "mfu": "pct", "peak_memory_bytes": "bytes",
                                   "flops": "flops"}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("diff", help=HELP, description=HELP + ".")
    p.add_argument("a", help="plan A (JSON)")
    p.add_argument("b", help="plan B (JSON)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the differences as JSON")
    p.add_argument("--max-inputs", type=int, default=20, metavar="N", help="changed inputs to list (default 20)")
    return p


def plan_diff(a: Any, b: Any) -> dict[str, Any]:
    """``{"changes": [[what, A, B], ...], "inputs": [[stage, path, A spec, B spec], ...], "cost": {...}}``."""
    from autopar.report.tables import partition_spec_text as pst

    changes: list[list[str]] = []

    def note(what: str, x: Any, y: Any) -> None:
        if x != y:
            changes.append([what, str(x), str(y)])

    note("method", a.method, b.method)
    note("method options", dict(a.method_options), dict(b.method_options))
    note("mesh", a.mesh_shape, b.mesh_shape)
    note("cluster", (a.cluster.get("name"), a.cluster.get("nodes")), (b.cluster.get("name"), b.cluster.get("nodes")))
    note("graph fingerprint (program)", a.graph_fingerprint, b.graph_fingerprint)
    note("stages", len(a.stages), len(b.stages))
    inputs: list[list[str]] = []
    for sa, sb in zip(a.stages, b.stages):
        note(f"{sa.name} mesh", dict(zip(sa.axis_names, sa.mesh_shape)), dict(zip(sb.axis_names, sb.mesh_shape)))
        note(f"{sa.name} devices", list(sa.devices), list(sb.devices))
        specs_b = dict(sb.input_specs)
        for name, spec in sa.input_specs:
            if name in specs_b and specs_b[name] != spec:
                inputs.append([sa.name, name, pst(spec), pst(specs_b[name])])
        only = sorted(set(specs_b) ^ {n for n, _ in sa.input_specs})
        if only:
            changes.append([f"{sa.name} inputs only in one plan", str(len(only)), ", ".join(only[:3])])
        outs = sum(x != y for x, y in zip(sa.output_specs, sb.output_specs))
        if outs:
            changes.append([f"{sa.name} output specs changed", str(outs), f"of {len(sa.output_specs)}"])
        ops_a, ops_b = dict(sa.op_specs), dict(sb.op_specs)
        ops = sum(ops_a.get(k) != ops_b.get(k) for k in set(ops_a) | set(ops_b))
        if ops:
            changes.append([f"{sa.name} pinned intermediate specs changed", str(ops),
                            f"of {len(set(ops_a) | set(ops_b))}"])
    if inputs:
        changes.append(["inputs resharded", str(len(inputs)), ""])
    ea, eb = a.estimate, b.estimate
    cost = {f: [getattr(ea, f), getattr(eb, f)] for f in ESTIMATE_FIELDS}
    for kind in sorted(set(ea.comm_bytes) | set(eb.comm_bytes)):
        cost[f"comm_bytes[{kind}]"] = [ea.comm_bytes.get(kind, 0.0), eb.comm_bytes.get(kind, 0.0)]
    return {"changes": changes, "inputs": inputs, "cost": cost}


def _fmt(unit: str, v: float) -> str:
    from autopar.ir.printing import human_bytes, human_flops

    table = {"ms": lambda x: f"{x * 1e3:.3f} ms", "pct": lambda x: f"{x:.1%}", "bytes": human_bytes,
             "flops": human_flops}
    return table.get(unit, lambda x: f"{x:.4g}")(v)


def run(args: argparse.Namespace) -> int:
    import json

    from rich.table import Table

    from autopar.cli.render import make_console
    from autopar.plan import Plan

    a, b = Plan.load(args.a), Plan.load(args.b)
    d = plan_diff(a, b)
    console = make_console()
    t = Table(title=f"What changed ({args.a} -> {args.b})", title_justify="left")
    for col in ("what", "A", "B"):
        t.add_column(col)
    for row in d["changes"] or [["(nothing: same settings and shardings)", "", ""]]:
        t.add_row(*row)
    console.print(t)
    if d["inputs"]:
        t = Table(title="Inputs whose sharding changed", title_justify="left")
        for col in ("stage", "path", "A", "B"):
            t.add_column(col)
        for row in d["inputs"][:args.max_inputs]:
            t.add_row(*row)
        if len(d["inputs"]) > args.max_inputs:
            t.add_row("", f"... {len(d['inputs']) - args.max_inputs} more", "", "")
        console.print(t)
    t = Table(title="Predicted cost", title_justify="left")
    for col in ("quantity", "A", "B", "B - A", "B / A"):
        t.add_column(col, justify="left" if col == "quantity" else "right")
    for key, (va, vb) in d["cost"].items():
        unit = ESTIMATE_FIELDS.get(key, "bytes")
        delta = vb - va
        sign = "+" if delta > 0 else ("-" if delta < 0 else "")
        t.add_row(key, _fmt(unit, va), _fmt(unit, vb), sign + _fmt(unit, abs(delta)),
                  f"{vb / va:.3f}" if va else ("1.000" if vb == va else "inf"))
    console.print(t)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(d, f, indent=1)
        console.print(f"wrote {args.json}")
    return 0
