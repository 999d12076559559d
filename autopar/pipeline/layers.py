"""Layers for pipelining: from ``autopar.mark_layer_boundary()`` markers, or clustered automatically.

Consumes: a Graph (forward/backward sections from ``autopar.value_and_grad``) and the wanted number of layers.
Produces: a layer for every forward and backward op (None for optimizer ops), numbered 0..K-1 in forward order.

Automatic clustering cuts the forward ops, in program order, into K contiguous groups: it balances their
flops (minimises the largest group) and, among equally balanced cuts, prefers program points where few bytes
are live across the cut (layer boundaries of a network rather than the middle of an attention block).
A backward op takes the layer of the forward values it reads (the latest one), else that of the backward
values it reads. With markers and a K smaller than the marked count, consecutive marked layers are merged
into K groups of balanced flops.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from autopar.ir.flops import op_flops
from autopar.ir.graph import Graph, Section


def marked_layers(g: Graph) -> int:
    layers = {op.layer for op in g.ops if op.layer is not None}
    return len(layers)


def op_layers(g: Graph, layers: str | int = "auto") -> list[int | None]:
    """A layer per op. ``layers="auto"``: the markers if present, else one layer per ~equal share of flops
    (8 groups, or fewer forward ops); an int K: exactly min(K, possible) layers."""
    if layers != "auto" and (not isinstance(layers, int) or layers < 1):
        raise ValueError(f"layers={layers!r}: use 'auto' or a positive number of layers")
    marked = marked_layers(g)
    if marked >= 2:
        base = _renumber([op.layer for op in g.ops])
        if layers == "auto" or layers >= marked:
            return base
        return _merge(g, base, int(layers))
    k = 8 if layers == "auto" else int(layers)
    return _cluster(g, k)


def _renumber(layers: Sequence[int | None]) -> list[int | None]:
    order = {l: i for i, l in enumerate(sorted({l for l in layers if l is not None}))}
    return [None if l is None else order[l] for l in layers]


def layer_flops(g: Graph, layers: Sequence[int | None]) -> np.ndarray:
    k = max((l for l in layers if l is not None), default=-1) + 1
    out = np.zeros(k)
    for op in g.ops:
        if layers[op.id] is not None and op.section is not Section.OPTIMIZER:
            out[layers[op.id]] += op_flops(g, op)
    return out


def _merge(g: Graph, layers: Sequence[int | None], k: int) -> list[int | None]:
    groups = balanced_split(list(layer_flops(g, layers)), k)
    new_of = {}
    for gi, (a, b) in enumerate(groups):
        for l in range(a, b):
            new_of[l] = gi
    return [None if l is None else new_of[l] for l in layers]


def balanced_split(weights: Sequence[float], k: int, cut_cost: Sequence[float] | None = None) -> list[tuple[int, int]]:
    """Cut ``weights`` into ``k`` contiguous non-empty ranges minimising the largest range sum; ties (within
    1%) broken by the smallest total ``cut_cost[i]`` (the cost of cutting before item i). O(k n^2): for layers,
    not ops."""
    n = len(weights)
    k = max(1, min(k, n))
    pre = np.concatenate([[0.0], np.cumsum(weights)])
    cut = np.zeros(n + 1) if cut_cost is None else np.asarray(list(cut_cost) + [0.0], dtype=float)
    inf = float("inf")
    # best[j][i]: (max range sum, total cut cost) for items [0, i) in j ranges
    best = [[(inf, inf)] * (n + 1) for _ in range(k + 1)]
    back = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = (0.0, 0.0)
    for j in range(1, k + 1):
        for i in range(j, n - (k - j) + 1):
            for a in range(j - 1, i):
                prev = best[j - 1][a]
                if prev[0] == inf:
                    continue
                cand = (max(prev[0], pre[i] - pre[a]), prev[1] + (cut[a] if a > 0 else 0.0))
                cur = best[j][i]
                if cand[0] < cur[0] * 0.99 or (cand[0] <= cur[0] * 1.01 and cand[1] < cur[1]):
                    best[j][i], back[j][i] = cand, a
    ranges, i = [], n
    for j in range(k, 0, -1):
        a = back[j][i]
        ranges.append((a, i))
        i = a
    return ranges[::-1]


def _live_bytes_before(g: Graph, fwd: Sequence[int]) -> list[float]:
    """Bytes made by earlier forward ops and read at or after position i (the cost of cutting before i)."""
    pos = {o: i for i, o in enumerate(fwd)}
    last_use: dict[int, int] = {}
    made_at: dict[int, int] = {}
    for i, o in enumerate(fwd):
        for t in g.ops[o].inputs:
            if t in made_at:
                last_use[t] = max(last_use.get(t, 0), i)
        for t in g.ops[o].outputs:
            made_at[t] = i
            # values also read by backward ops stay live to the end of the forward pass
            if any(c not in pos for c in g.tensors[t].consumers):
                last_use[t] = len(fwd)
    diff = np.zeros(len(fwd) + 2)
    for t, m in made_at.items():
        e = last_use.get(t, m)
        if e > m:
            diff[m + 1] += g.tensors[t].nbytes
            diff[e + 1] -= g.tensors[t].nbytes
    return list(np.cumsum(diff)[:len(fwd)])


def _window_cuts(weights: np.ndarray, k: int, cut_cost: np.ndarray, slack: float = 0.1) -> list[tuple[int, int]]:
    """K contiguous ranges: cut j goes where the running sum is within ``slack`` of a range's share of
    j/k of the total, at the cheapest point there (linear time, for op-level clustering)."""
    n = len(weights)
    k = max(1, min(k, n))
    pre = np.cumsum(weights)
    share = pre[-1] / k
    cuts, last = [0], 0
    for j in range(1, k):
        lo = int(np.searchsorted(pre, j * share - slack * share))
        hi = int(np.searchsorted(pre, j * share + slack * share))
        lo, hi = max(lo, last + 1), min(max(hi, lo + 1), n - (k - j))
        if lo >= hi:
            lo, hi = last + 1, last + 2
        best = lo + int(np.argmin(cut_cost[lo:hi]))
        cuts.append(best)
        last = best
    cuts.append(n)
    return [(cuts[i], cuts[i + 1]) for i in range(k)]


def _cluster(g: Graph, k: int) -> list[int | None]:
    fwd = [op.id for op in g.ops if op.section is Section.FORWARD]
    layers: list[int | None] = [None] * len(g.ops)
    if not fwd:
        return layers
    weights = np.array([float(op_flops(g, g.ops[o])) + 1.0 for o in fwd])
    for gi, (a, b) in enumerate(_window_cuts(weights, k, np.array(_live_bytes_before(g, fwd)))):
        for i in range(a, b):
            layers[fwd[i]] = gi
    for op in g.ops:
        if op.section is not Section.BACKWARD:
            continue
        from_fwd = [layers[g.tensors[t].producer] for t in op.inputs
                    if g.tensors[t].producer is not None and g.ops[g.tensors[t].producer].section is Section.FORWARD]
        from_bwd = [layers[g.tensors[t].producer] for t in op.inputs
                    if g.tensors[t].producer is not None and g.ops[g.tensors[t].producer].section is Section.BACKWARD]
        known = [l for l in from_fwd if l is not None] or [l for l in from_bwd if l is not None]
        layers[op.id] = max(known) if known else None
    return layers
