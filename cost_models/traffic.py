"""Memory traffic under fusion: the bytes each op reads from and writes to device memory once XLA has fused it.

Consumes: a ``Graph``. Produces: ``op_traffic(graph, op)`` (unsharded bytes, reads + writes) and
``traffic_key(graph, op)`` (which operands and results go through memory: ops with equal primitive, shapes and
key cost the same). Pure; results are cached per graph (weakly).

Why: the jaxpr of a train step is mostly elementwise ops (4,000 of 5,600 in GPT-125M's step). Costing each one
as reading all its operands and writing its result from memory counted 310 GB of traffic for GPT-125M at
batch 8, six times the step's real time on an H200 (``bench/step_fidelity.py``). XLA fuses chains of
elementwise ops into one kernel whose intermediates live in registers: only the chain's inputs and the results
read outside it touch memory.

Rule (XLA's loop and input fusion, simplified):
- *fusible* ops (``memory.FUSIBLE``: elementwise, converts, broadcasts, reshapes; plus slices, pads and
  concatenates, which loop fusions index into) and *input-fusing* ops (reductions, transposes) form fusions;
- *layout* ops (reshape, squeeze, expand_dims, broadcast_in_dim, ...) are looked through: a tensor's *source*
  is the first non-layout op above it, and a broadcast operand costs its source's bytes, not the broadcast's;
- an operand is read from memory unless its source is a fusible op (then it is computed in the same kernel);
- a result is written to memory when it is a graph output or some consumer (through layout ops) is neither
  fusible nor input-fusing; a reduction's or transpose's result is always written (they end a fusion).
Matmuls, convolutions, gathers, scatters and structured ops read every operand and write every result.
XLA sometimes duplicates producers or makes multi-output fusions; both move about the same bytes as this rule.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from autopar.cost_models.memory import FUSIBLE

if TYPE_CHECKING:
    from autopar.ir.graph import Graph, Op

LAYOUT = frozenset({"reshape", "squeeze", "expand_dims", "broadcast_in_dim", "stop_gradient", "bitcast_convert_type",
                    "optimization_barrier"})
# Fused in place of their producers' kernels and ending a fusion (their result is written).
INPUT_FUSING = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
                          "argmax", "argmin", "transpose"})
LOOP_FUSIBLE = (FUSIBLE | frozenset({"slice", "pad", "concatenate", "dynamic_slice", "rev", "iota"})) - LAYOUT

Entry = tuple["Op", tuple[bool, ...], tuple[bool, ...], float]   # (op, operands read, results written, bytes)
_CACHE: "weakref.WeakKeyDictionary[Graph, dict[int, Entry]]" = weakref.WeakKeyDictionary()


def _analyse(g: "Graph") -> dict[int, Entry]:
    by_id = {op.id: op for op in g.ops}

    def source(t: int) -> tuple[int, "Op | None"]:
        """(tensor, producing op) after looking through layout ops; (input tensor, None) for graph inputs."""
        while True:
            p = g.tensors[t].producer
            op = by_id.get(p) if p is not None else None
            if op is None or op.primitive not in LAYOUT or op.subgraphs or not op.inputs:
                return t, op
            t = op.inputs[0]

    def readers(t: int) -> list["Op"]:
        """Consumers of ``t`` after looking through layout ops."""
        out, todo = [], [t]
        while todo:
            for c in g.tensors[todo.pop()].consumers:
                op = by_id.get(c)
                if op is None:
                    continue
                if op.primitive in LAYOUT and not op.subgraphs:
                    todo.extend(op.outputs)
                else:
                    out.append(op)
        return out

    def is_output(t: int) -> bool:
        """A graph output itself or through layout ops."""
        todo = [t]
        while todo:
            u = todo.pop()
            if g.tensors[u].is_output:
                return True
            todo.extend(o for c in g.tensors[u].consumers if (op := by_id.get(c)) is not None
                        and op.primitive in LAYOUT and not op.subgraphs for o in op.outputs)
        return False

    result = {}
    for op in g.ops:
        prim, fuses = op.primitive, not op.subgraphs
        loop = fuses and prim in LOOP_FUSIBLE
        ends = fuses and prim in INPUT_FUSING
        reads, nbytes = [], 0.0
        for t in op.inputs:
            tensor = g.tensors[t]
            if tensor.value is not None and tensor.size <= 1:
                reads.append(False)              # scalar literals are folded into the kernel
                continue
            src_t, src = source(t)
            fused_in = (loop or ends) and src is not None and not src.subgraphs and src.primitive in LOOP_FUSIBLE
            reads.append(not fused_in)
            if not fused_in:
                nbytes += min(tensor.nbytes, g.tensors[src_t].nbytes) if (loop or ends) else tensor.nbytes
        writes = []
        for t in op.outputs:
            if loop:
                w = is_output(t) or any(r.subgraphs or (r.primitive not in LOOP_FUSIBLE
                                                        and r.primitive not in INPUT_FUSING)
                                        for r in readers(t))
            else:
                w = True
            writes.append(w)
            if w:
                nbytes += g.tensors[t].nbytes
        result[op.id] = (op, tuple(reads), tuple(writes), nbytes)
    return result


def _table(g: "Graph") -> dict[int, Entry]:
    table = _CACHE.get(g)
    if table is None:
        table = _CACHE[g] = _analyse(g)
    return table


def op_traffic(g: "Graph", op: "Op") -> float | None:
    """Bytes ``op`` moves to and from device memory, unsharded, once fused (see the module docstring);
    None for an op that is not one of ``g``'s."""
    entry = _table(g).get(op.id)
    return None if entry is None or entry[0] is not op else entry[3]


def traffic_key(g: "Graph", op: "Op") -> tuple[tuple[bool, ...], tuple[bool, ...], float] | None:
    """Which of ``op``'s operands are read, which results are written, and the bytes: ops with equal
    primitive, shapes and key cost the same."""
    entry = _table(g).get(op.id)
    return None if entry is None or entry[0] is not op else entry[1:]
