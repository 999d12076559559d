"""The intra-op sharding problem and its solution, as frozen data.

Consumes: nothing (plain data built by the lead from the op graph and the cost models).
Produces: ``ShardingProblem`` (validated on construction), ``Solution``, ``evaluate`` (objective and
peak group memory of a given choice vector), ``InfeasibleMemoryError``.
Refuses: malformed shapes (an edge matrix that does not match its nodes' strategy counts, a memory vector
of the wrong length, out-of-range node or strategy indices, NaN/inf costs, empty strategy lists), each with
a ``ValueError`` that names the field, the edge or node, and the fix.

All vectors and matrices are stored as tuples of Python floats so every object is immutable and hashable;
constructors accept any nested sequence (lists, numpy arrays) and normalise it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

Vector = tuple[float, ...]
Matrix = tuple[Vector, ...]


class InfeasibleMemoryError(ValueError):
    """No plan fits ``memory_budget``; ``min_budget_bytes`` is the smallest per-device budget that fits."""

    def __init__(self, message: str, min_budget_bytes: float, budget_bytes: float) -> None:
        super().__init__(message)
        self.min_budget_bytes = min_budget_bytes
        self.budget_bytes = budget_bytes


class SolverTimeLimitError(RuntimeError):
    """The solver reached its time limit before finding any plan (a searching caller moves on to its other
    candidates; a single fixed configuration reports it)."""


def format_bytes(n: float) -> str:
    """Human units with binary prefixes: ``format_bytes(12.4 * 2**30) == '12.4 GiB'``."""
    for unit, scale in (("TiB", 2.0**40), ("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _vector(values: Iterable[float], what: str) -> Vector:
    out = tuple(float(v) for v in values)
    for v in out:
        if not math.isfinite(v):
            raise ValueError(f"{what} contains {v}; costs and memories must be finite numbers")
    return out


def _matrix(rows: Iterable[Iterable[float]], what: str) -> Matrix:
    return tuple(_vector(r, what) for r in rows)


@dataclass(frozen=True)
class Edge:
    """Resharding cost between ``src`` and ``dst``: ``cost[i][j]`` seconds when src picks i and dst picks j."""

    src: int
    dst: int
    cost: Matrix

    def __post_init__(self) -> None:
        object.__setattr__(self, "cost", _matrix(self.cost, f"Edge({self.src}->{self.dst}).cost"))


@dataclass(frozen=True)
class MemoryGroup:
    """Nodes whose memories are live together at one program point, on top of ``base_bytes``."""

    nodes: tuple[int, ...]
    base_bytes: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(int(n) for n in self.nodes))
        object.__setattr__(self, "base_bytes", float(self.base_bytes))


@dataclass(frozen=True)
class Alias:
    """Node ``a`` may pick i together with node ``b`` picking j only for ``(i, j)`` in ``pairs``."""

    a: int
    b: int
    pairs: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple(sorted({(int(i), int(j)) for i, j in self.pairs})))


@dataclass(frozen=True)
class ShardingProblem:
    """One-hot choice of a strategy per node minimising node costs plus edge costs, under memory limits.

    ``fixed`` accepts a mapping ``node -> strategy`` (or pairs) and is stored as sorted pairs; use
    ``fixed_map`` for a dict. ``memory`` is per node, bytes per device per strategy; ``memory_budget``
    applies to every ``MemoryGroup``: ``base_bytes + sum(memory[v][s_v] for v in nodes) <= memory_budget``.
    """

    node_names: tuple[str, ...]
    node_costs: tuple[Vector, ...]
    edges: tuple[Edge, ...] = ()
    memory: tuple[Vector, ...] | None = None
    memory_groups: tuple[MemoryGroup, ...] = ()
    memory_budget: float | None = None
    aliases: tuple[Alias, ...] = ()
    fixed: tuple[tuple[int, int], ...] | Mapping[int, int] = ()

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("node_names", tuple(str(n) for n in self.node_names))
        set_("node_costs", tuple(_vector(c, f"node_costs[{v}]") for v, c in enumerate(self.node_costs)))
        set_("edges", tuple(self.edges))
        set_("memory_groups", tuple(self.memory_groups))
        set_("aliases", tuple(self.aliases))
        if self.memory is not None:
            set_("memory", tuple(_vector(m, f"memory[{v}]") for v, m in enumerate(self.memory)))
        if self.memory_budget is not None:
            set_("memory_budget", float(self.memory_budget))
        fixed = self.fixed.items() if isinstance(self.fixed, Mapping) else self.fixed
        set_("fixed", tuple(sorted((int(v), int(s)) for v, s in fixed)))
        _validate(self)

    @property
    def num_nodes(self) -> int:
        return len(self.node_costs)

    @property
    def fixed_map(self) -> dict[int, int]:
        return dict(self.fixed_pairs)

    @property
    def fixed_pairs(self) -> tuple[tuple[int, int], ...]:
        """``fixed`` as the sorted (node, strategy) pairs ``__post_init__`` stores."""
        assert not isinstance(self.fixed, Mapping)
        return self.fixed

    def name(self, v: int) -> str:
        return f"node {v} ({self.node_names[v]})"


@dataclass(frozen=True)
class Solution:
    """A strategy index per node with its exact objective (recomputed from the original problem)."""

    choices: tuple[int, ...]
    objective: float
    status: str  # "optimal" | "feasible"
    backend: str
    solve_time_s: float
    num_variables: int
    num_constraints: int
    peak_group_memory: float | None = None
    notes: tuple[str, ...] = field(default=())


def _validate(p: ShardingProblem) -> None:
    n = len(p.node_costs)
    if len(p.node_names) != n:
        raise ValueError(f"node_names has {len(p.node_names)} entries but node_costs has {n}; give one name per node")
    for v, c in enumerate(p.node_costs):
        if not c:
            raise ValueError(f"node_costs[{v}] for {p.name(v)} is empty; every node needs at least one strategy")

    def node(v: int, what: str) -> int:
        if not (0 <= v < n):
            raise ValueError(f"{what} refers to node {v}, but the problem has {n} nodes (0..{n - 1})")
        return v

    for k, e in enumerate(p.edges):
        node(e.src, f"edges[{k}].src")
        node(e.dst, f"edges[{k}].dst")
        if e.src == e.dst:
            raise ValueError(f"edges[{k}] is a self-loop on {p.name(e.src)}; fold it into node_costs instead")
        ns, nd = len(p.node_costs[e.src]), len(p.node_costs[e.dst])
        shape = (len(e.cost), len(e.cost[0]) if e.cost else 0)
        if len(e.cost) != ns or any(len(r) != nd for r in e.cost):
            raise ValueError(
                f"edges[{k}] from {p.name(e.src)} to {p.name(e.dst)} has a cost matrix of shape {shape}, "
                f"expected ({ns}, {nd}) = (strategies of src, strategies of dst)")
    if p.memory is not None:
        if len(p.memory) != n:
            raise ValueError(f"memory has {len(p.memory)} entries but there are {n} nodes; give one vector per node")
        for v, m in enumerate(p.memory):
            if len(m) != len(p.node_costs[v]):
                raise ValueError(f"memory[{v}] for {p.name(v)} has {len(m)} entries, expected "
                                 f"{len(p.node_costs[v])} (one per strategy)")
    for k, g in enumerate(p.memory_groups):
        for v in g.nodes:
            node(v, f"memory_groups[{k}]")
        if len(set(g.nodes)) != len(g.nodes):
            raise ValueError(f"memory_groups[{k}] lists a node twice; list each live node once")
    if p.memory_budget is not None:
        if p.memory is None and p.memory_groups:
            raise ValueError("memory_budget and memory_groups are set but memory is None; give per-strategy memory")
        if not math.isfinite(p.memory_budget):
            raise ValueError(f"memory_budget is {p.memory_budget}; give a finite number of bytes or None")
    for k, a in enumerate(p.aliases):
        node(a.a, f"aliases[{k}].a")
        node(a.b, f"aliases[{k}].b")
        if a.a == a.b:
            raise ValueError(f"aliases[{k}] ties {p.name(a.a)} to itself; drop it or use fixed")
        for i, j in a.pairs:
            if not (0 <= i < len(p.node_costs[a.a]) and 0 <= j < len(p.node_costs[a.b])):
                raise ValueError(f"aliases[{k}] pair ({i}, {j}) is out of range for {p.name(a.a)} "
                                 f"({len(p.node_costs[a.a])} strategies) and {p.name(a.b)} "
                                 f"({len(p.node_costs[a.b])} strategies)")
    seen: set[int] = set()
    for v, s in p.fixed_pairs:
        node(v, "fixed")
        if v in seen:
            raise ValueError(f"fixed gives {p.name(v)} twice; fix each node once")
        seen.add(v)
        if not (0 <= s < len(p.node_costs[v])):
            raise ValueError(f"fixed sets {p.name(v)} to strategy {s}, but it has {len(p.node_costs[v])} strategies")


def group_memories(p: ShardingProblem, choices: Sequence[int]) -> list[float]:
    """``base_bytes + sum of chosen memories`` for every memory group (empty without memory)."""
    if p.memory is None:
        return []
    return [g.base_bytes + sum(p.memory[v][choices[v]] for v in g.nodes) for g in p.memory_groups]


def is_feasible(p: ShardingProblem, choices: Sequence[int], rel_tol: float = 1e-9) -> bool:
    """Whether ``choices`` satisfies fixed shardings, aliases and the memory budget."""
    if any(choices[v] != s for v, s in p.fixed_pairs):
        return False
    if any((choices[a.a], choices[a.b]) not in a.pairs for a in p.aliases):
        return False
    if p.memory_budget is not None:
        slack = rel_tol * max(1.0, abs(p.memory_budget))
        if any(m > p.memory_budget + slack for m in group_memories(p, choices)):
            return False
    return True


def evaluate(p: ShardingProblem, choices: Sequence[int]) -> float:
    """The objective of ``choices``: sum of chosen node costs plus chosen edge-matrix entries."""
    if len(choices) != p.num_nodes:
        raise ValueError(f"choices has {len(choices)} entries, expected {p.num_nodes} (one per node)")
    total = math.fsum(p.node_costs[v][s] for v, s in enumerate(choices))
    return total + math.fsum(e.cost[choices[e.src]][choices[e.dst]] for e in p.edges)


def peak_group_memory(p: ShardingProblem, choices: Sequence[int]) -> float | None:
    mems = group_memories(p, choices)
    return max(mems) if mems else None
