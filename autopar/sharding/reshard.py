"""The collectives that turn one ShardingSpec of a tensor into another, and their time.

Consumes: source and destination specs, the tensor's shape and dtype, a LogicalMesh, and (for
``reshard_time``) a ``collective_time(kind, nbytes, axes: Sequence[AxisLink]) -> seconds`` function.
Produces: an ordered tuple of ``CollectiveStep``; byte conventions (per device) follow the collectives
cost model: all-gather = gathered OUTPUT, reduce-scatter = INPUT, all-reduce and all-to-all = the buffer.
Order: partial sums are resolved first (reduce-scatter into a wanted split before any all-reduce), free
local slices next, then all-to-alls moving an axis between dims, and all-gathers last, so that every
collective runs on data already shrunk as far as possible. Going to a split or a partial sum from a
replicated layout is a local slice / local zero-fill and costs nothing.
Refuses: specs whose rank differs from the shape or whose splits do not divide it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from autopar.sharding.spec import ShardingSpec

if TYPE_CHECKING:
    from autopar.cost_models.links import AxisLink
    from autopar.sharding.mesh import LogicalMesh

CollectiveTime = Callable[[str, float, Sequence["AxisLink"]], float]

COLLECTIVE_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


@dataclass(frozen=True)
class CollectiveStep:
    kind: str                  # one of COLLECTIVE_KINDS
    nbytes: int                # per device, per the conventions above
    axes: tuple[str, ...]      # mesh axes the collective runs over
    reduce_op: str = "sum"     # for all-reduce / reduce-scatter: sum, max, min, prod, and, or, argmax...

    def __post_init__(self) -> None:
        if self.kind not in COLLECTIVE_KINDS:
            raise ValueError(f"CollectiveStep.kind {self.kind!r} is not one of {COLLECTIVE_KINDS}")
        object.__setattr__(self, "axes", tuple(self.axes))

    def time(self, mesh: "LogicalMesh", collective_time: CollectiveTime) -> float:
        return float(collective_time(self.kind, self.nbytes, mesh.axis_links(self.axes)))

    def __str__(self) -> str:
        return f"{self.kind}[{','.join(self.axes)}]({self.nbytes}B)"


def _is_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    return len(a) <= len(b) and b[:len(a)] == a


def reshard_steps(src: ShardingSpec, dst: ShardingSpec, shape: Sequence[int], dtype: Any,
                  mesh: "LogicalMesh") -> tuple[CollectiveStep, ...]:
    """The collectives taking a tensor laid out as ``src`` to ``dst`` (empty when it is free)."""
    for name, s in (("src", src), ("dst", dst)):
        if not s.divides(shape, mesh):
            raise ValueError(f"reshard_steps: {name} spec {s} does not divide shape {tuple(shape)} on {mesh}")
    dims = [tuple(d) for d in src.dims]
    partial = list(src.partial)
    steps: list[CollectiveStep] = []

    def nbytes() -> int:
        return ShardingSpec(tuple(dims)).bytes_per_device(shape, dtype, mesh)

    # Axes the destination wants partial but the source splits: drop the split by a local zero-fill.
    for a in dst.partial:
        for i, d in enumerate(dims):
            if a in d:
                dims[i] = tuple(x for x in d if x != a)
    # 1. Resolve partial sums the destination does not keep: reduce-scatter into a wanted split, else
    #    one all-reduce over all remaining partial axes.
    for a in [p for p in partial if p not in dst.partial]:
        for i, d in enumerate(dims):
            if _is_prefix(d, dst.dims[i]) and len(d) < len(dst.dims[i]) and dst.dims[i][len(d)] == a:
                steps.append(CollectiveStep("reduce-scatter", nbytes(), (a,)))
                dims[i] = d + (a,)
                partial.remove(a)
                break
    to_reduce = tuple(p for p in partial if p not in dst.partial)
    if to_reduce:
        steps.append(CollectiveStep("all-reduce", nbytes(), to_reduce))
    partial = [p for p in partial if p in dst.partial]

    def in_use() -> set[str]:
        return {a for d in dims for a in d} | set(partial)

    def needed_next(i: int) -> str | None:
        d, want = dims[i], dst.dims[i]
        if _is_prefix(d, want) and len(d) < len(want):
            return want[len(d)]
        return None

    # 2-4. Repeatedly: free slices, else an all-to-all, else an all-gather of a minor-most excess axis.
    while tuple(dims) != tuple(dst.dims):
        used = in_use()
        sliced = False
        for i in range(len(dims)):
            while (nxt := needed_next(i)) is not None and nxt not in used:
                dims[i] = dims[i] + (nxt,)
                used.add(nxt)
                sliced = True
        if sliced:
            continue
        excess = [i for i in range(len(dims)) if not _is_prefix(dims[i], dst.dims[i])]
        if not excess:
            break  # pragma: no cover - every remaining difference is a wanted split, handled above
        moved = False
        for i in excess:
            a = dims[i][-1]
            for j in range(len(dims)):
                if j != i and needed_next(j) == a:
                    steps.append(CollectiveStep("all-to-all", nbytes(), (a,)))
                    dims[i] = dims[i][:-1]
                    dims[j] = dims[j] + (a,)
                    moved = True
                    break
            if moved:
                break
        if moved:
            continue
        i = excess[0]
        a = dims[i][-1]
        dims[i] = dims[i][:-1]
        steps.append(CollectiveStep("all-gather", nbytes(), (a,)))
    return tuple(steps)


def reshard_time(src: ShardingSpec, dst: ShardingSpec, shape: Sequence[int], dtype: Any,
                 mesh: "LogicalMesh", collective_time: CollectiveTime) -> float:
    """Seconds to reshard: the sum of ``collective_time`` over ``reshard_steps``."""
    return sum(s.time(mesh, collective_time) for s in reshard_steps(src, dst, shape, dtype, mesh))


def reshard_bytes(src: ShardingSpec, dst: ShardingSpec, shape: Sequence[int], dtype: Any,
                  mesh: "LogicalMesh") -> dict[str, int]:
    """Per-device bytes by collective kind (for reports and the audit)."""
    out: dict[str, int] = {}
    for s in reshard_steps(src, dst, shape, dtype, mesh):
        out[s.kind] = out.get(s.kind, 0) + s.nbytes
    return out
