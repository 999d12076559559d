"""Sharding rules for indexing: slice, dynamic_slice, dynamic_update_slice, concatenate, pad, rev, split,
gather, scatter and scatter-add (and the other scatter combiners).

Windowed ops keep every dim they touch (sliced, padded, concatenated, reversed, indexed) unsplit and share
one spec on the rest. gather: batch dims of the indices and full-size window dims of the operand map to
the output; splitting the operand on the single indexed, collapsed dim (an embedding's vocabulary) makes
each device look up only its rows: a partial sum resolved by an all-reduce (Megatron's vocab-parallel
embedding) or a reduce-scatter. scatter: full-size window dims are shared by operand, updates and output;
splitting the operand and output on the single indexed dim applies each device's updates locally; for
scatter-add, splitting the scatter (batch) dims of indices and updates leaves partial sums (the
data-parallel embedding gradient).
"""

from __future__ import annotations

from typing import Sequence

from autopar.sharding.strategy import (Rule, RuleContext, Slot, Strategy,
                                       enumerate_slot_strategies, replicated_strategy)


def _untouched(ctx: RuleContext, touched: Sequence[int], operands: Sequence[int]) -> list[Strategy]:
    """Elementwise slots over the output dims not in ``touched``, for the listed operand positions."""
    out = ctx.out_shapes[0]
    n = len(ctx.in_shapes)
    slots = []
    for d in range(len(out)):
        if d in touched:
            continue
        ins = tuple(d if k in operands and len(ctx.in_shapes[k]) == len(out) else None for k in range(n))
        slots.append(Slot(f"d{d}", ins, (d,) * len(ctx.out_shapes)))
    return enumerate_slot_strategies(ctx, slots)


def _slice_strategies(ctx: RuleContext) -> list[Strategy]:
    shape, out = ctx.in_shapes[0], ctx.out_shapes[0]
    touched = [d for d in range(len(shape)) if shape[d] != out[d]]
    if ctx.params.get("strides") is not None:
        touched += [d for d, s in enumerate(ctx.params["strides"]) if s != 1]
    return _untouched(ctx, touched, (0,))


def _dynamic_slice_strategies(ctx: RuleContext) -> list[Strategy]:
    shape, out = ctx.in_shapes[0], ctx.out_shapes[0]
    return _untouched(ctx, [d for d in range(len(shape)) if shape[d] != out[d]], (0,))


def _dynamic_update_slice_strategies(ctx: RuleContext) -> list[Strategy]:
    shape, upd = ctx.in_shapes[0], ctx.in_shapes[1]
    return _untouched(ctx, [d for d in range(len(shape)) if shape[d] != upd[d]], (0, 1))


def _concatenate_strategies(ctx: RuleContext) -> list[Strategy]:
    return _untouched(ctx, [ctx.params["dimension"]], tuple(range(len(ctx.in_shapes))))


def _pad_strategies(ctx: RuleContext) -> list[Strategy]:
    cfg = ctx.params["padding_config"]
    return _untouched(ctx, [d for d, p in enumerate(cfg) if tuple(p) != (0, 0, 0)], (0,))


def _rev_strategies(ctx: RuleContext) -> list[Strategy]:
    return _untouched(ctx, list(ctx.params["dimensions"]), (0,))


def _split_strategies(ctx: RuleContext) -> list[Strategy]:
    axis = ctx.params["axis"]
    shape = ctx.in_shapes[0]
    slots = [Slot(f"d{d}", (d,), (d,) * len(ctx.out_shapes)) for d in range(len(shape)) if d != axis]
    return enumerate_slot_strategies(ctx, slots)


def _gather_strategies(ctx: RuleContext) -> list[Strategy]:
    dn = ctx.params["dimension_numbers"]
    sizes = tuple(ctx.params["slice_sizes"])
    operand, indices = ctx.in_shapes[0], ctx.in_shapes[1]
    out = ctx.out_shapes[0]
    offset = tuple(dn.offset_dims)
    collapsed = tuple(dn.collapsed_slice_dims)
    op_batch = tuple(getattr(dn, "operand_batching_dims", ()))
    idx_batch = tuple(getattr(dn, "start_indices_batching_dims", ()))
    extra = (None,) * (len(ctx.in_shapes) - 2)
    slots: list[Slot] = []
    # Offset (window) dims: operand dims not collapsed / batching, in order, map to offset_dims.
    window = [d for d in range(len(operand)) if d not in collapsed and d not in op_batch]
    for d, o in zip(window, offset):
        if sizes[d] == operand[d] and d not in dn.start_index_map:
            slots.append(Slot(f"w{d}", (d, None) + extra, (o,)))
    # Batch dims: indices dims except the trailing index vector, in order, map to non-offset out dims.
    out_batch = [d for d in range(len(out)) if d not in offset]
    for k, (i, o) in enumerate(zip(range(len(indices) - 1), out_batch)):
        op_dim = op_batch[idx_batch.index(i)] if i in idx_batch else None
        slots.append(Slot(f"b{k}", (op_dim, i) + extra, (o,)))
    # Vocabulary split: the single indexed dim, collapsed, looked up locally -> partial sums.
    if len(dn.start_index_map) == 1 and dn.start_index_map[0] in collapsed:
        v = dn.start_index_map[0]
        slots.append(Slot("vocab", (v, None) + extra, (None,)))
    return enumerate_slot_strategies(ctx, slots)


def _scatter_strategies(ctx: RuleContext) -> list[Strategy]:
    dn = ctx.params["dimension_numbers"]
    operand, indices, updates = ctx.in_shapes[0], ctx.in_shapes[1], ctx.in_shapes[2]
    if len(ctx.in_shapes) != 3 or len(ctx.out_shapes) != 1:
        return [replicated_strategy(ctx)]
    uwd = tuple(dn.update_window_dims)
    inserted = tuple(dn.inserted_window_dims)
    op_batch = tuple(getattr(dn, "operand_batching_dims", ()))
    if op_batch:
        return [replicated_strategy(ctx)]
    slots: list[Slot] = []
    window = [d for d in range(len(operand)) if d not in inserted]
    for d, u in zip(window, uwd):
        if updates[u] == operand[d] and d not in dn.scatter_dims_to_operand_dims:
            slots.append(Slot(f"w{d}", (d, None, u), (d,)))
    sdo = tuple(dn.scatter_dims_to_operand_dims)
    if len(sdo) == 1 and sdo[0] in inserted:
        slots.append(Slot("vocab", (sdo[0], None, None), (sdo[0],)))
    if ctx.op.primitive in ("scatter-add", "scatter_add"):
        scatter_dims = [d for d in range(len(updates)) if d not in uwd]
        for k, (i, u) in enumerate(zip(range(len(indices) - 1), scatter_dims)):
            slots.append(Slot(f"b{k}", (None, i, u), (None,)))
    return enumerate_slot_strategies(ctx, slots)


rules: dict[str, Rule] = {
    "slice": _slice_strategies,
    "dynamic_slice": _dynamic_slice_strategies,
    "dynamic_update_slice": _dynamic_update_slice_strategies,
    "concatenate": _concatenate_strategies,
    "pad": _pad_strategies,
    "rev": _rev_strategies,
    "split": _split_strategies,
    "gather": _gather_strategies,
    **{p: _scatter_strategies for p in ("scatter", "scatter-add", "scatter_add", "scatter-mul",
                                        "scatter_mul", "scatter-min", "scatter_min", "scatter-max",
                                        "scatter_max")},
}


