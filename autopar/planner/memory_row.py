"""The intra-op ILP's memory row: what is live where a replicated program's memory peaks, and the per-node
bytes of those tensors under each strategy, plus the copies other microbatches of a pipelined stage hold.

Consumes: a Graph, its tensors' owner nodes with their spec per strategy, a LogicalMesh. Produces: per-node
memory vectors and the one ``MemoryGroup`` the ILP checks against the budget. Refuses: nothing.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from autopar.cost_models.memory import last_uses, materialised
from autopar.ir.graph import Graph
from autopar.planner.problem import MemoryGroup
from autopar.sharding.spec import ShardingSpec

if TYPE_CHECKING:
    from autopar.sharding.mesh import LogicalMesh

# Graph annotation ``{tensor id: copies}``: values other microbatches of a pipelined stage hold all through the
# program (the stashed activations of those in flight, the gradient sums): ``copies`` more buffers of the
# tensor at its chosen spec, counted in the ILP's memory row and in the plan's peak.
HELD_COPIES = "held_copies"


def replicated_peak(graph: Graph, platform: str = "") -> tuple[frozenset[int], int | None]:
    """Tensors live where live memory peaks when everything is replicated (arguments + outputs + live
    temporaries, by ``platform``'s fusion rules: a ``DeviceSpec.kind``), and the op after which that happens."""
    temps = {t.id for t in graph.tensors if materialised(graph, t, platform)}
    uses = last_uses(graph, platform)
    last_use = {t: uses[t] for t in temps}
    live: set[int] = set()
    live_bytes = 0.0
    best, best_point, best_set = -1.0, None, set()
    frees: dict[int, list[int]] = defaultdict(list)
    for t, i in last_use.items():
        frees[i].append(t)
    for op in graph.ops:
        for o in op.outputs:
            if o in temps:
                live.add(o)
                live_bytes += graph.tensors[o].nbytes
        if live_bytes > best:
            best, best_point, best_set = live_bytes, op.id, set(live)
        for t in frees.get(op.id, ()):
            live.discard(t)
            live_bytes -= graph.tensors[t].nbytes
    return frozenset(set(graph.inputs) | set(graph.outputs) | best_set), best_point


def memory_groups(graph: Graph, mesh: "LogicalMesh", owner: Mapping[int, tuple[int, tuple[ShardingSpec, ...]]],
                   counts: Sequence[int], resident: frozenset[int], held: Mapping[int, np.ndarray] | None = None,
                   copies: Mapping[int, float] | None = None) -> tuple[list[np.ndarray], tuple[MemoryGroup, ...]]:
    """Per-node bytes of the ``resident`` tensors (those live at the replicated peak), plus ``copies`` more
    buffers of the tensors in ``HELD_COPIES``, as one group."""
    num_nodes = len(counts)
    memory = [np.zeros(n) for n in counts]
    vec_cache: dict[tuple[int, Any, Any], np.ndarray] = {}

    def bytes_of(tid: int) -> tuple[int, np.ndarray]:
        v, specs = owner[tid]
        t = graph.tensors[tid]
        key = (id(specs), t.shape, t.dtype)   # owner tuples are shared by tied tensors and live all along
        if key not in vec_cache:
            vec_cache[key] = np.array([s.bytes_per_device(t.shape, t.dtype, mesh) for s in specs], dtype=float)
        return v, vec_cache[key]

    for tid in sorted(resident):
        if tid not in owner:
            continue
        v, vec = bytes_of(tid)
        if held and tid in held:
            vec = np.maximum(vec, held[tid])
        memory[v] = memory[v] + vec
    for tid, k in sorted((copies or {}).items()):
        if tid in owner:
            v, vec = bytes_of(tid)
            memory[v] = memory[v] + k * vec
    const_bytes = sum(graph.tensors[t].nbytes for t in resident if t not in owner) + sum(
        k * graph.tensors[t].nbytes for t, k in (copies or {}).items() if t not in owner)
    group = MemoryGroup(nodes=tuple(sorted(v for v in range(num_nodes) if memory[v].any())), base_bytes=const_bytes)
    return memory, (group,)
