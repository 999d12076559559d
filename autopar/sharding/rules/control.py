"""Sharding rules for structured control flow: scan, while, cond (first version).

One sharding holds for the whole loop: a carry enters and leaves with the same spec. Candidates are the
replicated strategy plus, for each mesh axis (size > 1) and for all of them together, the strategy that
splits the *batch dim* of every value that divides: dim 0 of carries, while/cond operands and cond
outputs; dim 1 of scanned inputs (xs) and stacked outputs (ys), whose dim 0 is the loop dim. Loop
constants (weights closed over by the body) stay replicated. The body is planned with these boundary
specs by the problem builder. A richer enumeration (per-carry choices, model-parallel splits of the body)
is future work.
"""

from __future__ import annotations

from typing import Sequence

from autopar.sharding.spec import ShardingSpec
from autopar.sharding.strategy import Rule, RuleContext, Strategy, finalize, replicated_strategy


def _split(shape: tuple[int, ...], dim: int | None, axes: tuple[str, ...], ctx: RuleContext) -> ShardingSpec:
    spec = ShardingSpec.replicated(len(shape))
    if dim is not None and dim < len(shape):
        cand = spec.with_dim(dim, axes)
        if cand.divides(shape, ctx.mesh):
            return cand
    return spec


def _loop_strategies(ctx: RuleContext, in_dims: Sequence[int | None],
                     out_dims: Sequence[int | None]) -> list[Strategy]:
    """Replicated, then one batch-dim split per mesh-axis group (``*_dims``: the dim split per value)."""
    out = [replicated_strategy(ctx)]
    axes = ctx.split_axes()
    groups = [(a,) for a in axes] + ([axes] if len(axes) > 1 else [])
    for g in groups:
        ins = tuple(None if not s else _split(s, d, g, ctx) for s, d in zip(ctx.in_shapes, in_dims))
        outs = tuple(_split(s, d, g, ctx) for s, d in zip(ctx.out_shapes, out_dims))
        if all(s is None or not s.axes() for s in ins + outs):
            continue
        out.append(Strategy(f"batch:{'+'.join(g)}", ins, outs, ctx.mesh.size(g)))
    return finalize(_consistent(ctx, out))


def _consistent(ctx: RuleContext, strategies: list[Strategy]) -> list[Strategy]:
    """Keep strategies whose carries enter and leave with one spec (dropped otherwise)."""
    pairs = _carry_pairs(ctx)
    return [s for s in strategies if all(s.in_specs[i] in (None, s.out_specs[o]) for i, o in pairs)]


def _carry_pairs(ctx: RuleContext) -> list[tuple[int, int]]:
    p, name = ctx.params, ctx.op.primitive
    if name == "scan":
        nc, ncarry = p["num_consts"], p["num_carry"]
        return [(nc + k, k) for k in range(ncarry)]
    if name == "while":
        nc = p["cond_nconsts"] + p["body_nconsts"]
        return [(nc + k, k) for k in range(len(ctx.out_shapes))]
    return []


def _scan_strategies(ctx: RuleContext) -> list[Strategy]:
    nc, ncarry = ctx.params["num_consts"], ctx.params["num_carry"]
    n_in, n_out = len(ctx.in_shapes), len(ctx.out_shapes)
    in_dims = [None] * nc + [0] * ncarry + [1] * (n_in - nc - ncarry)
    out_dims = [0] * ncarry + [1] * (n_out - ncarry)
    return _loop_strategies(ctx, in_dims, out_dims)


def _while_strategies(ctx: RuleContext) -> list[Strategy]:
    nc = ctx.params["cond_nconsts"] + ctx.params["body_nconsts"]
    in_dims = [None] * nc + [0] * (len(ctx.in_shapes) - nc)
    return _loop_strategies(ctx, in_dims, [0] * len(ctx.out_shapes))


def _cond_strategies(ctx: RuleContext) -> list[Strategy]:
    in_dims = [None] + [0] * (len(ctx.in_shapes) - 1)
    return _loop_strategies(ctx, in_dims, [0] * len(ctx.out_shapes))


rules: dict[str, Rule] = {"scan": _scan_strategies, "while": _while_strategies, "cond": _cond_strategies}
