"""Sharding rules for shape changes: broadcast_in_dim, reshape, transpose, squeeze, expand_dims.

- broadcast_in_dim: an output dim mapped from a full-size operand dim shares its split; new (or size-1
  broadcast) dims may be split in the output alone.
- reshape: dims are grouped where products of sizes match ((B, S, H*D) <-> (B, S, H, D) groups H*D with
  (H, D)); a group may be split only on its major-most dim on both sides, by axes dividing both (the head
  split); size-1 dims are never split. A non-None ``dimensions`` (``lax.reshape(x, sizes, dimensions)``:
  transpose by ``dimensions``, then reshape) groups the permuted operand dims; a group's major-most dim
  is then operand dim ``dimensions[i]``.
- transpose: the output permutes the operand's spec. squeeze / expand_dims: drop / add unsplit dims.
"""

from __future__ import annotations

from typing import Sequence

from autopar.sharding.strategy import (Rule, RuleContext, Slot, Strategy, enumerate_slot_strategies,
                                       replicated_strategy)


def _broadcast_in_dim_strategies(ctx: RuleContext) -> list[Strategy]:
    operand, out = ctx.in_shapes[0], ctx.out_shapes[0]
    bdims = tuple(ctx.params["broadcast_dimensions"])
    extra = (None,) * (len(ctx.in_shapes) - 1)
    slots = []
    for d, n in enumerate(out):
        src = bdims.index(d) if d in bdims else None
        if src is not None and operand[src] != n:
            src = None  # a size-1 dim broadcast up: the operand stays unsplit there
        slots.append(Slot(f"d{d}", (src,) + extra, (d,)))
    return enumerate_slot_strategies(ctx, slots)


def reshape_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Minimal groups of dims of ``a`` and ``b`` with equal size products (size-1 dims skipped)."""
    if 0 in a or 0 in b:
        return None
    groups = []
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i] == 1:
            i += 1
            continue
        if b[j] == 1:
            j += 1
            continue
        gi, gj, pa, pb = [i], [j], a[i], b[j]
        while pa != pb:
            if pa < pb:
                i += 1
                if i >= len(a):
                    return None
                gi.append(i)
                pa *= a[i]
            else:
                j += 1
                if j >= len(b):
                    return None
                gj.append(j)
                pb *= b[j]
        groups.append((gi, gj))
        i += 1
        j += 1
    return groups


def _reshape_strategies(ctx: RuleContext) -> list[Strategy]:
    a, b = ctx.in_shapes[0], ctx.out_shapes[0]
    perm = ctx.params.get("dimensions")
    perm = tuple(range(len(a))) if perm is None else tuple(perm)
    if sorted(perm) != list(range(len(a))):
        return [replicated_strategy(ctx)]
    groups = reshape_groups([a[p] for p in perm], b)
    if groups is None:
        return [replicated_strategy(ctx)]
    extra = (None,) * (len(ctx.in_shapes) - 1)
    slots = [Slot(f"g{k}", (perm[gi[0]],) + extra, (gj[0],)) for k, (gi, gj) in enumerate(groups)]
    # A split must divide the major-most dim on both sides: check it on both shapes (enumerate checks
    # in and out specs for divisibility, which is exactly that).
    return enumerate_slot_strategies(ctx, slots)


def _transpose_strategies(ctx: RuleContext) -> list[Strategy]:
    perm = tuple(ctx.params["permutation"])
    slots = [Slot(f"d{d}", (perm[d],), (d,)) for d in range(len(perm))]
    return enumerate_slot_strategies(ctx, slots)


def _map_kept(ctx: RuleContext, removed_in: Sequence[int], added_out: Sequence[int]) -> list[Strategy]:
    kept_in = [d for d in range(len(ctx.in_shapes[0])) if d not in removed_in]
    kept_out = [d for d in range(len(ctx.out_shapes[0])) if d not in added_out]
    if len(kept_in) != len(kept_out):
        return [replicated_strategy(ctx)]
    slots = [Slot(f"d{o}", (i,), (o,)) for i, o in zip(kept_in, kept_out)]
    return enumerate_slot_strategies(ctx, slots)


def _norm(dims: Sequence[int], rank: int) -> list[int]:
    return [d % rank for d in dims] if rank else []


def _squeeze_strategies(ctx: RuleContext) -> list[Strategy]:
    return _map_kept(ctx, _norm(ctx.params["dimensions"], len(ctx.in_shapes[0])), ())


def _expand_dims_strategies(ctx: RuleContext) -> list[Strategy]:
    return _map_kept(ctx, (), _norm(ctx.params["dimensions"], len(ctx.out_shapes[0])))


rules: dict[str, Rule] = {
    "broadcast_in_dim": _broadcast_in_dim_strategies,
    "reshape": _reshape_strategies,
    "transpose": _transpose_strategies,
    "squeeze": _squeeze_strategies,
    "expand_dims": _expand_dims_strategies,
}
