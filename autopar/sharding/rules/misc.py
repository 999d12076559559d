"""Sharding rules for iota, sort / top_k, cumulative ops and random numbers.

- iota: any split of the output.
- sort (all operands share one spec): the sort dim stays unsplit; top_k: the last dim stays unsplit.
- cumsum / cumprod / cummax / cummin / cumlogsumexp: the scanned dim stays unsplit.
- random_bits, threefry2x32, random_seed / random_wrap / random_unwrap / random_fold_in: any split of the
  leading (key-batch and output) dims. This relies on ``jax_threefry_partitionable`` (the default since
  jax 0.5), under which a sharded ``random_bits`` yields the same numbers as the unsharded one; with the
  flag off only the replicated strategy is offered. ``rng_bit_generator`` / ``rng_uniform`` are not
  partitionable that way and fall back to replicated.
"""

from __future__ import annotations

from autopar.sharding.strategy import (Rule, RuleContext, Slot, Strategy, elementwise_slots,
                                       enumerate_slot_strategies, replicated_strategy)

CUMULATIVE = ("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp")


def _iota_strategies(ctx: RuleContext) -> list[Strategy]:
    out = ctx.out_shapes[0]
    return enumerate_slot_strategies(ctx, [Slot(f"d{d}", (None,) * len(ctx.in_shapes), (d,))
                                           for d in range(len(out))])


def _sort_strategies(ctx: RuleContext) -> list[Strategy]:
    out = ctx.out_shapes[0]
    dim = ctx.params["dimension"] % max(len(out), 1)
    slots = elementwise_slots(out, ctx.in_shapes, n_outs=len(ctx.out_shapes), skip=(dim,))
    return enumerate_slot_strategies(ctx, slots)


def _top_k_strategies(ctx: RuleContext) -> list[Strategy]:
    shape = ctx.in_shapes[0]
    slots = [Slot(f"d{d}", (d,) + (None,) * (len(ctx.in_shapes) - 1), (d,) * len(ctx.out_shapes))
             for d in range(len(shape) - 1)]
    return enumerate_slot_strategies(ctx, slots)


def _cumulative_strategies(ctx: RuleContext) -> list[Strategy]:
    out = ctx.out_shapes[0]
    axis = ctx.params["axis"] % max(len(out), 1)
    return enumerate_slot_strategies(ctx, elementwise_slots(out, ctx.in_shapes, skip=(axis,)))


def _threefry_partitionable() -> bool:
    import jax

    return bool(getattr(jax.config, "jax_threefry_partitionable", False))


def _random_strategies(ctx: RuleContext) -> list[Strategy]:
    """Leading dims shared by every operand and output (keys broadcast over the rest) may be split."""
    if not _threefry_partitionable():
        return [replicated_strategy(ctx)]
    out = ctx.out_shapes[0]
    slots = []
    for d, n in enumerate(out):
        ins = tuple(d if d < len(s) and s[d] == n else None for s in ctx.in_shapes)
        outs = tuple(d if d < len(o) and o[d] == n else None for o in ctx.out_shapes)
        if None in outs:
            break
        slots.append(Slot(f"d{d}", ins, outs))
    return enumerate_slot_strategies(ctx, slots)


rules: dict[str, Rule] = {
    "iota": _iota_strategies,
    "sort": _sort_strategies,
    "top_k": _top_k_strategies,
    **{p: _cumulative_strategies for p in CUMULATIVE},
    **{p: _random_strategies for p in ("random_bits", "threefry2x32", "random_seed", "random_wrap",
                                       "random_unwrap", "random_fold_in")},
}
