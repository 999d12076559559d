"""Readable text for a Graph: sizes, sections, layers, the heaviest ops."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from autopar.ir.flops import op_flops
from autopar.ir.graph import Role, Section

if TYPE_CHECKING:
    from autopar.ir.graph import Graph


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def human_flops(n: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} FLOP"


def graph_summary(g: "Graph", top: int = 10) -> str:
    roles = Counter(g.tensors[t].role for t in g.inputs)
    param_bytes = sum(g.tensors[t].nbytes for t in g.inputs if g.tensors[t].role is Role.PARAMETER)
    batch_bytes = sum(g.tensors[t].nbytes for t in g.inputs if g.tensors[t].role is Role.BATCH)
    sections = Counter(op.section for op in g.ops)
    layers = sorted({op.layer for op in g.ops if op.layer is not None})
    lines = [
        f"Graph: {len(g.ops)} ops ({g.num_ops()} with structured bodies), {len(g.tensors)} tensors",
        f"  inputs: {roles.get(Role.PARAMETER, 0)} parameter ({human_bytes(param_bytes)}), "
        f"{roles.get(Role.BATCH, 0)} batch ({human_bytes(batch_bytes)}); outputs: {len(g.outputs)}",
        "  sections: " + ", ".join(f"{s.value} {sections.get(s, 0)}" for s in Section),
        f"  layers marked: {len(layers)}; remat regions: {g.annotations.get('remat_regions', 0)}",
        f"  flops: {human_flops(g.flops())}",
    ]
    by_prim: Counter[str] = Counter()
    flops_by_prim: dict[str, float] = {}
    for op in g.ops:
        by_prim[op.primitive] += 1
        flops_by_prim[op.primitive] = flops_by_prim.get(op.primitive, 0.0) + op_flops(g, op)
    lines.append("  primitives (count, flops):")
    for prim, n in by_prim.most_common(top):
        lines.append(f"    {prim:<24} {n:>7}  {human_flops(flops_by_prim[prim])}")
    if len(by_prim) > top:
        lines.append(f"    ... {len(by_prim) - top} more primitive kinds")
    return "\n".join(lines)
