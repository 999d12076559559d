"""Alpha-beta time models of collectives over one mesh axis or a group of mesh axes.

Consumes: a collective kind, a byte count and the ``AxisLink``(s) it runs over (``alpha`` seconds per
message, ``beta = 1/bandwidth`` seconds per byte, one direction, per device).
Produces: seconds (``*_time``), per-device wire bytes (``bytes_sent``) and ``CollectiveCost`` records.
Refuses: negative byte counts, non-positive bandwidths, negative latencies, unknown kinds (ValueError).

Byte conventions (``S`` = ``nbytes``; ``n`` = devices in the group; every time is per device, all devices
busy at once):

==================  =========================================================================
all-reduce          S = the buffer each device holds (input size = output size)
all-gather          S = the gathered OUTPUT per device (each device contributes S/n)
reduce-scatter      S = the INPUT per device (each device keeps S/n)
all-to-all          S = the per-device buffer (input = output; S/n goes to each peer)
collective-permute  S = the buffer each device sends to its one peer (and receives)
==================  =========================================================================

Algorithms, one axis (costs from Thakur, Rabenseifner & Gropp, "Optimization of Collective Communication
Operations in MPICH", IJHPCA 2005, and Chan et al., "Collective communication: theory, practice, and
experience", 2007). ``L = ceil(log2 n)``. Each kind takes the cheapest of its forms:

- all-gather:  ring ``(n-1)α + (n-1)/n·Sβ``; Bruck / recursive doubling ``Lα + (n-1)/n·Sβ``.
- reduce-scatter: the dual (transpose) of all-gather, same two costs with S = input (reduction compute
  is ignored: it is memory-bound work overlapped with the transfer).
- all-reduce:  ring (= ring reduce-scatter + ring all-gather) ``2(n-1)α + 2(n-1)/n·Sβ``;
  recursive doubling (every step exchanges the whole buffer) ``r(n)·(α + Sβ)`` with ``r = log2 n`` for a
  power of two, else ``floor(log2 n) + 2`` (one fold-in and one fold-out step);
  Rabenseifner (recursive-halving reduce-scatter + recursive-doubling all-gather) ``2Lα + 2(n-1)/n·Sβ``.
  Recursive doubling wins for tiny messages (latency bound), the bandwidth-optimal forms for large ones.
  (NCCL's double binary tree sits between these: log-depth latency, near-ring bandwidth.)
- all-to-all:  pairwise direct exchange ``(n-1)α + (n-1)/n·Sβ``; Bruck ``Lα + L·(S/2)β`` (each of the L
  steps forwards about half the buffer).
- collective-permute: one message ``α + Sβ`` (a shift; every device sends and receives concurrently).

A group of axes (e.g. ``(intra-node, inter-node)``) is costed as the cheapest of

- flat: one axis of ``prod(sizes)`` devices at the slowest link (max alpha, min bandwidth);
- hierarchical: pick an inner axis ``i`` (each axis is tried) and recurse on the rest:
  all-reduce = reduce-scatter(i, S) + all-reduce(rest, S/n_i) + all-gather(i, S);
  all-gather = all-gather(rest, S/n_i) + all-gather(i, S);
  reduce-scatter = reduce-scatter(i, S) + reduce-scatter(rest, S/n_i);
  all-to-all = all-to-all(i, S) + all-to-all(rest, S) (two-phase exchange);
  collective-permute has no hierarchical form (a shift over the group crosses its slowest link).

Size-1 axes take no part; a collective over no device pair costs 0 seconds and 0 bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from autopar.cost_models.links import AxisLink

Axes = AxisLink | Sequence[AxisLink]
CollectiveRule = Callable[[float, Axes], float]


# ---- argument handling -------------------------------------------------------------------------------------
def _axes(axes: Axes) -> tuple[AxisLink, ...]:
    """Validated tuple of the axes that actually communicate (size > 1)."""
    group = (axes,) if isinstance(axes, AxisLink) else tuple(axes)
    for a in group:
        if not isinstance(a, AxisLink):
            raise ValueError(f"axes: expected AxisLink or a sequence of AxisLink, got {type(a).__name__}")
        if a.size < 1:
            raise ValueError(f"axes: axis {a.name!r} has size={a.size}; sizes must be >= 1")
        if not a.bandwidth > 0:
            raise ValueError(f"axes: axis {a.name!r} has bandwidth={a.bandwidth}; give bytes/s > 0")
        if a.alpha < 0:
            raise ValueError(f"axes: axis {a.name!r} has alpha={a.alpha}; give latency seconds >= 0")
    return tuple(a for a in group if a.size > 1)


def _check_nbytes(nbytes: float) -> float:
    if not nbytes >= 0:  # also rejects NaN
        raise ValueError(f"nbytes: must be >= 0, got {nbytes}")
    return float(nbytes)


def _flat(axes: tuple[AxisLink, ...]) -> AxisLink:
    """The group as one axis over its slowest link."""
    if len(axes) == 1:
        return axes[0]
    return AxisLink(name="+".join(a.name for a in axes), size=math.prod(a.size for a in axes),
                    alpha=max(a.alpha for a in axes), bandwidth=min(a.bandwidth for a in axes))


def _log2_ceil(n: int) -> int:
    return (n - 1).bit_length()


def _recursive_doubling_steps(n: int) -> int:
    if n & (n - 1) == 0:
        return n.bit_length() - 1
    return n.bit_length() - 1 + 2  # floor(log2 n) + fold-in + fold-out (Thakur et al. 2005)


# ---- one axis --------------------------------------------------------------------------------------------------
def _all_gather_1(s: float, a: AxisLink) -> float:
    n, frac = a.size, (a.size - 1) / a.size
    ring = (n - 1) * a.alpha + frac * s * a.beta
    bruck = _log2_ceil(n) * a.alpha + frac * s * a.beta
    return min(ring, bruck)


def _reduce_scatter_1(s: float, a: AxisLink) -> float:
    return _all_gather_1(s, a)  # dual of all-gather with S = input size


def _all_reduce_1(s: float, a: AxisLink) -> float:
    n, frac = a.size, (a.size - 1) / a.size
    ring = 2 * (n - 1) * a.alpha + 2 * frac * s * a.beta
    doubling = _recursive_doubling_steps(n) * (a.alpha + s * a.beta)
    rabenseifner = 2 * _log2_ceil(n) * a.alpha + 2 * frac * s * a.beta
    return min(ring, doubling, rabenseifner)


def _all_to_all_1(s: float, a: AxisLink) -> float:
    n, frac = a.size, (a.size - 1) / a.size
    pairwise = (n - 1) * a.alpha + frac * s * a.beta
    steps = _log2_ceil(n)
    bruck = steps * a.alpha + steps * (s / 2) * a.beta
    return min(pairwise, bruck)


def _permute_1(s: float, a: AxisLink) -> float:
    return a.alpha + s * a.beta


# ---- groups of axes ------------------------------------------------------------------------------------------
def _split(axes: tuple[AxisLink, ...]) -> list[tuple[AxisLink, tuple[AxisLink, ...]]]:
    """Every (inner axis, remaining axes) choice for a hierarchical decomposition."""
    return [(axes[i], axes[:i] + axes[i + 1:]) for i in range(len(axes))]


def _ar(s: float, axes: tuple[AxisLink, ...]) -> float:
    if not axes:
        return 0.0
    best = _all_reduce_1(s, _flat(axes))
    for inner, rest in _split(axes):
        best = min(best, _reduce_scatter_1(s, inner) + _ar(s / inner.size, rest) + _all_gather_1(s, inner))
    return best


def _ag(s: float, axes: tuple[AxisLink, ...]) -> float:
    if not axes:
        return 0.0
    best = _all_gather_1(s, _flat(axes))
    for inner, rest in _split(axes):
        best = min(best, _ag(s / inner.size, rest) + _all_gather_1(s, inner))
    return best


def _rs(s: float, axes: tuple[AxisLink, ...]) -> float:
    if not axes:
        return 0.0
    best = _reduce_scatter_1(s, _flat(axes))
    for inner, rest in _split(axes):
        best = min(best, _reduce_scatter_1(s, inner) + _rs(s / inner.size, rest))
    return best


def _a2a(s: float, axes: tuple[AxisLink, ...]) -> float:
    if not axes:
        return 0.0
    best = _all_to_all_1(s, _flat(axes))
    for inner, rest in _split(axes):
        best = min(best, _all_to_all_1(s, inner) + _a2a(s, rest))
    return best


# ---- public models --------------------------------------------------------------------------------------------
def all_reduce_time(nbytes: float, axes: Axes) -> float:
    """Seconds to all-reduce a buffer of ``nbytes`` per device (input size = output size) over ``axes``."""
    return _ar(_check_nbytes(nbytes), _axes(axes))


def all_gather_time(nbytes: float, axes: Axes) -> float:
    """Seconds to all-gather into an OUTPUT of ``nbytes`` per device (each contributes nbytes/n)."""
    return _ag(_check_nbytes(nbytes), _axes(axes))


def reduce_scatter_time(nbytes: float, axes: Axes) -> float:
    """Seconds to reduce-scatter an INPUT of ``nbytes`` per device (each keeps nbytes/n)."""
    return _rs(_check_nbytes(nbytes), _axes(axes))


def all_to_all_time(nbytes: float, axes: Axes) -> float:
    """Seconds for an all-to-all of a per-device buffer of ``nbytes`` (nbytes/n to each peer)."""
    return _a2a(_check_nbytes(nbytes), _axes(axes))


def collective_permute_time(nbytes: float, axes: Axes) -> float:
    """Seconds for a point-to-point shift: each device sends ``nbytes`` to one peer along ``axes``."""
    s, group = _check_nbytes(nbytes), _axes(axes)
    return _permute_1(s, _flat(group)) if group else 0.0


collective_rules: dict[str, CollectiveRule] = {
    "all-reduce": all_reduce_time,
    "all-gather": all_gather_time,
    "reduce-scatter": reduce_scatter_time,
    "all-to-all": all_to_all_time,
    "collective-permute": collective_permute_time,
}

# Per-device bytes a ring (or pairwise / single-message) implementation puts on the wire, as a fraction of
# S for a group of n devices: the numbers to compare with the operand sizes of XLA's HLO collectives.
_wire_fraction: dict[str, Callable[[int], float]] = {
    "all-reduce": lambda n: 2.0 * (n - 1) / n,
    "all-gather": lambda n: (n - 1) / n,
    "reduce-scatter": lambda n: (n - 1) / n,
    "all-to-all": lambda n: (n - 1) / n,
    "collective-permute": lambda n: 1.0 if n > 1 else 0.0,
}


def _check_kind(kind: str) -> None:
    if kind not in collective_rules:
        raise ValueError(f"kind: unknown collective {kind!r}; known kinds: {', '.join(collective_rules)}")


def collective_time(kind: str, nbytes: float, axes: Axes) -> float:
    """Seconds for collective ``kind`` (a key of ``collective_rules``) of ``nbytes`` over ``axes``."""
    _check_kind(kind)
    return collective_rules[kind](nbytes, axes)


def bytes_sent(kind: str, nbytes: float, n: int) -> float:
    """Per-device bytes a ring implementation sends for ``kind`` over ``n`` devices (nbytes as above).

    all-reduce ``2(n-1)/n·S``; all-gather, reduce-scatter, all-to-all ``(n-1)/n·S``; collective-permute ``S``.
    """
    _check_kind(kind)
    s = _check_nbytes(nbytes)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: number of devices must be an int >= 1, got {n!r}")
    return _wire_fraction[kind](n) * s


@dataclass(frozen=True)
class CollectiveCost:
    """One costed collective: its kind, its ``nbytes`` (conventions above), the axis names it spans,
    its predicted seconds and the per-device bytes a ring implementation sends."""

    kind: str
    nbytes: float
    axes: tuple[str, ...]
    time: float
    bytes_sent: float


def collective_cost(kind: str, nbytes: float, axes: Axes) -> CollectiveCost:
    """Cost ``kind`` over ``axes``; ``bytes_sent`` counts the whole group (size-1 axes included, they add 0)."""
    time = collective_time(kind, nbytes, axes)
    group = (axes,) if isinstance(axes, AxisLink) else tuple(axes)
    n = math.prod(a.size for a in group)
    return CollectiveCost(kind=kind, nbytes=float(nbytes), axes=tuple(a.name for a in group), time=time,
                          bytes_sent=bytes_sent(kind, nbytes, n))
