"""Sharding rule for ``dot_general``.

Slots: each batch dim, each lhs free dim, each rhs free dim, each contracting dim. Every assignment of mesh
axes to those dims is a strategy (Megatron column split = rhs free dim; row split = contracting dim).
A split contracting dim leaves partial sums, resolved by an all-reduce or a reduce-scatter onto one output
dim (both offered). Output dims: batch, then lhs free, then rhs free, as XLA/JAX order them.
"""

from __future__ import annotations

from autopar.sharding.strategy import Rule, RuleContext, Slot, Strategy, enumerate_slot_strategies


def _dot_general_strategies(ctx: RuleContext) -> list[Strategy]:
    (lc, rc), (lb, rb) = ctx.params["dimension_numbers"]
    lhs, rhs = ctx.in_shapes[:2]
    extra = (None,) * (len(ctx.in_shapes) - 2)
    lfree = [d for d in range(len(lhs)) if d not in lc and d not in lb]
    rfree = [d for d in range(len(rhs)) if d not in rc and d not in rb]
    slots = [Slot(f"b{i}", (l, r) + extra, (i,)) for i, (l, r) in enumerate(zip(lb, rb))]
    slots += [Slot(f"m{i}", (l, None) + extra, (len(lb) + i,)) for i, l in enumerate(lfree)]
    slots += [Slot(f"n{i}", (None, r) + extra, (len(lb) + len(lfree) + i,)) for i, r in enumerate(rfree)]
    slots += [Slot(f"k{i}", (l, r) + extra, (None,)) for i, (l, r) in enumerate(zip(lc, rc))]
    return enumerate_slot_strategies(ctx, slots)


rules: dict[str, Rule] = {"dot_general": _dot_general_strategies}
