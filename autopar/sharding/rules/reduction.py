"""Sharding rules for reductions: reduce_sum/max/min/prod/and/or/xor and argmax/argmin.

Slots: every operand dim; kept dims map to the output, reduced dims (``axes``) index no output. Splitting
a reduced dim leaves partial results resolved by an all-reduce of the matching kind (sum, max, ...; the
same cost; one all-reduce per split reduced dim, as XLA's SPMD partitioner emits them) or, for single-output
reductions, a reduce-scatter onto an output dim.
"""

from __future__ import annotations

from autopar.sharding.strategy import Rule, RuleContext, Slot, Strategy, enumerate_slot_strategies

REDUCE_OPS = {
    "reduce_sum": "sum", "reduce_max": "max", "reduce_min": "min", "reduce_prod": "prod",
    "reduce_and": "and", "reduce_or": "or", "reduce_xor": "xor", "argmax": "argmax", "argmin": "argmin",
}


def _reduction_strategies(ctx: RuleContext) -> list[Strategy]:
    axes = tuple(ctx.params["axes"])
    shape = ctx.in_shapes[0]
    kept = [d for d in range(len(shape)) if d not in axes]
    n_in, n_out = len(ctx.in_shapes), len(ctx.out_shapes)
    slots = []
    for d in range(len(shape)):
        ins = tuple(d if len(s) == len(shape) else None for s in ctx.in_shapes)
        out = (kept.index(d),) * n_out if d in kept else (None,) * n_out
        slots.append(Slot(f"d{d}" if d in kept else f"r{d}", ins[:n_in], out))
    op = REDUCE_OPS.get(ctx.op.primitive, "sum")
    return enumerate_slot_strategies(ctx, slots, reduce_op=op,
                                     reduce_scatter=op in ("sum", "max", "min", "prod"), all_reduce_per_slot=True)


rules: dict[str, Rule] = {p: _reduction_strategies for p in REDUCE_OPS}
