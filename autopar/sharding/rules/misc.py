"""Sharding rules for iota, sort / top_k, cumulative ops, random numbers and optimization barriers.

- iota: any split of the output.
- sort (all operands share one spec): the sort dim stays unsplit; top_k: its ``axis`` (the last dim when
  the param is absent, as before jax 0.10) stays unsplit.
- cumsum / cumprod / cummax / cummin / cumlogsumexp: the scanned dim stays unsplit.
- random_bits, threefry2x32, random_seed / random_wrap / random_unwrap / random_fold_in: any split of the
  leading (key-batch and output) dims. This relies on ``jax_threefry_partitionable`` (the default since
  jax 0.5), under which a sharded ``random_bits`` yields the same numbers as the unsharded one; with the
  flag off only the replicated strategy is offered.
- optimization_barrier (identity on every operand; operand k leaves in the spec it arrived in): when all
  operands share one shape, any elementwise split of them all; otherwise the replicated strategy plus, per
  dim index and mesh-axis group, the split of that dim in every operand it divides.
- ``REPLICATED_BY_DESIGN`` (name -> reason): primitives whose only sound strategy is the replicated one.
  They have a rule (the replicated strategy, no warning), so the coverage test can tell them from
  primitives nobody has looked at, which fall back to replicated with a warning.
"""

from __future__ import annotations

from autopar.sharding.spec import ShardingSpec
from autopar.sharding.strategy import (Rule, RuleContext, Slot, Strategy, elementwise_slots,
                                       enumerate_slot_strategies, finalize, replicated_strategy)

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
    axis = ctx.params.get("axis", -1) % max(len(shape), 1)
    slots = [Slot(f"d{d}", (d,) + (None,) * (len(ctx.in_shapes) - 1), (d,) * len(ctx.out_shapes))
             for d in range(len(shape)) if d != axis]
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


def _optimization_barrier_strategies(ctx: RuleContext) -> list[Strategy]:
    shapes = ctx.in_shapes
    if shapes and all(s == shapes[0] for s in shapes):
        n = len(shapes)
        return enumerate_slot_strategies(ctx, [Slot(f"d{d}", (d,) * n, (d,) * n) for d in range(len(shapes[0]))])
    out = [replicated_strategy(ctx)]
    axes = ctx.split_axes()
    groups = [(a,) for a in axes] + ([axes] if len(axes) > 1 else [])
    for d in range(max((len(s) for s in shapes), default=0)):
        for g in groups:
            specs = []
            for s in shapes:
                spec = ShardingSpec.replicated(len(s))
                if d < len(s) and spec.with_dim(d, g).divides(s, ctx.mesh):
                    spec = spec.with_dim(d, g)
                specs.append(spec)
            if any(sp.axes() for sp in specs):
                ins = tuple(None if not s else sp for s, sp in zip(shapes, specs))
                out.append(Strategy(f"d{d}:{'+'.join(g)}", ins, tuple(specs), ctx.mesh.size(g)))
    return finalize(out)


REPLICATED_BY_DESIGN: dict[str, str] = {
    "rng_bit_generator": "its bits are a function of the whole output shape, so no device can generate "
                         "its shard alone (XLA's SPMD partitioner replicates it too); splitting would "
                         "not divide the work",
    "rng_uniform": "a stateful XLA RNG with no partitioned form: a split would draw different numbers",
    "pure_callback": "a host callback sees whole arrays: its operands must be gathered and its results "
                     "are produced whole",
    "io_callback": "a host callback sees whole arrays and may have side effects once per call",
    "debug_callback": "a host callback (jax.debug.print) sees whole arrays",
}


def _replicated_by_design(ctx: RuleContext) -> list[Strategy]:
    return [replicated_strategy(ctx)]


rules: dict[str, Rule] = {
    "iota": _iota_strategies,
    "sort": _sort_strategies,
    "top_k": _top_k_strategies,
    **{p: _cumulative_strategies for p in CUMULATIVE},
    **{p: _random_strategies for p in ("random_bits", "threefry2x32", "random_seed", "random_wrap",
                                       "random_unwrap", "random_fold_in")},
    "optimization_barrier": _optimization_barrier_strategies,
    **{p: _replicated_by_design for p in REPLICATED_BY_DESIGN},
}
