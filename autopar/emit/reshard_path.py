"""The layouts a resharded value passes through, so the emitted program reshards the way the plan costed.

Consumes: the source and destination ``ShardingSpec`` of a value, its shape and dtype, a ``LogicalMesh``.
Produces: ``reshard_layouts``: the layout after each collective of ``autopar.sharding.reshard.reshard_steps``
(the plan's cost of the reshard), ending with the destination. The emitter pins each one in turn.

Why: XLA's SPMD partitioner turns one layout into another in one move only for simple cases (one all-gather,
one all-to-all). Asked for a change that needs several (``RRS[x,y] -> S[x]RR``: all-gather over ``y``, then
an all-to-all over ``x``), it replicates the whole value ("involuntary full rematerialization"): one
all-gather over every axis, more bytes and more memory than planned. Pinned step by step, it runs exactly the
collectives ``reshard_steps`` lists (two all-gathers of ``S[x,y] -> S[x] -> R`` stay two).
Refuses nothing: a change with partial sums (resolved inside the op that makes them), or one whose replay does
not end at the destination, gives just ``(dst,)``, the single pin the emitter used before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from autopar.sharding.reshard import reshard_steps
from autopar.sharding.spec import ShardingSpec

if TYPE_CHECKING:
    from autopar.sharding.mesh import LogicalMesh

__all__ = ["reshard_layouts"]


def _is_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    return len(a) <= len(b) and b[:len(a)] == a


def reshard_layouts(src: ShardingSpec, dst: ShardingSpec, shape: Sequence[int], dtype: Any,
                    mesh: "LogicalMesh") -> tuple[ShardingSpec, ...]:
    """The layout after each collective of ``reshard_steps(src, dst, ...)``, the last being ``dst``; ``(dst,)``
    when the change takes at most one collective (XLA does that one itself) or involves partial sums."""
    if src.partial or dst.partial:
        return (dst,)
    steps = reshard_steps(src, dst, shape, dtype, mesh)
    if len(steps) < 2:
        return (dst,)
    dims = [tuple(d) for d in src.dims]
    want = [tuple(d) for d in dst.dims]

    def needed_next(i: int) -> str | None:
        if _is_prefix(dims[i], want[i]) and len(dims[i]) < len(want[i]):
            return want[i][len(dims[i])]
        return None

    def slice_free() -> None:
        # the local slices reshard_steps takes before each collective: a wanted split by an unused axis
        changed = True
        while changed:
            changed = False
            used = {a for d in dims for a in d}
            for i in range(len(dims)):
                while (a := needed_next(i)) is not None and a not in used:
                    dims[i] = dims[i] + (a,)
                    used.add(a)
                    changed = True

    layouts: list[ShardingSpec] = []
    for step in steps:
        slice_free()
        if step.kind not in ("all-gather", "all-to-all") or len(step.axes) != 1:
            return (dst,)
        a = step.axes[0]
        holders = [i for i, d in enumerate(dims) if d and d[-1] == a and not _is_prefix(d, want[i])]
        if len(holders) != 1:
            return (dst,)
        i = holders[0]
        dims[i] = dims[i][:-1]
        if step.kind == "all-to-all":
            targets = [j for j in range(len(dims)) if j != i and needed_next(j) == a]
            if not targets:
                return (dst,)
            dims[targets[0]] = dims[targets[0]] + (a,)
        layouts.append(ShardingSpec(tuple(dims)))
    slice_free()
    if tuple(dims) != tuple(want):
        return (dst,)
    if layouts[-1] != dst:
        layouts.append(dst)
    return tuple(layouts)
