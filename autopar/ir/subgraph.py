"""Cut a Graph into pieces: the sub-Graph of a set of ops, with its own inputs and outputs.

Consumes: a Graph and a set of its op ids. Produces: ``Subgraph`` — a new, self-contained Graph over the same
primitives (ops in the parent's program order, tensors renumbered) and the maps between parent and sub ids.
The inputs are the tensors the ops read but do not make (parent inputs and values made elsewhere); the outputs
are the values the ops make that something outside reads (another op, or the parent's outputs), plus any the
caller asks for. Constants are copied in. The parent Graph is never changed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from autopar.ir.graph import Graph, Role, Tensor


@dataclass(frozen=True)
class Subgraph:
    graph: Graph
    parent_tensor: tuple[int, ...]     # sub tensor id -> parent tensor id
    parent_op: tuple[int, ...]         # sub op id -> parent op id

    @property
    def sub_tensor(self) -> Mapping[int, int]:
        return {p: s for s, p in enumerate(self.parent_tensor)}

    @property
    def input_parents(self) -> tuple[int, ...]:
        return tuple(self.parent_tensor[t] for t in self.graph.inputs)

    @property
    def output_parents(self) -> tuple[int, ...]:
        return tuple(self.parent_tensor[t] for t in self.graph.outputs)


def extract(parent: Graph, op_ids: Iterable[int], *, extra_outputs: Iterable[int] = (),
            drop_outputs: Iterable[int] = (), input_role: Callable[[Tensor], Role] | None = None,
            input_order: Iterable[int] = ()) -> Subgraph:
    """The sub-Graph of ``op_ids``. ``input_role`` gives the role of a value made outside that becomes an
    input (default: its own role, INTERMEDIATE values become PARAMETER); ``input_order`` lists parent tensor
    ids to put first among the inputs (in that order); ``drop_outputs`` are made but not returned."""
    ops = sorted(set(op_ids))
    inside = set(ops)
    made = {t for o in ops for t in parent.ops[o].outputs}
    read: list[int] = []
    seen: set[int] = set()
    for o in ops:
        for t in parent.ops[o].inputs:
            if t not in made and t not in seen and parent.tensors[t].role is not Role.CONSTANT:
                seen.add(t)
                read.append(t)
    first = [t for t in input_order if t in seen]
    inputs = first + [t for t in read if t not in set(first)]
    drop = set(drop_outputs)
    wanted = set(extra_outputs) & made
    outputs = [t for o in ops for t in parent.ops[o].outputs
               if t not in drop and (t in wanted or parent.tensors[t].is_output
                                     or any(c not in inside for c in parent.tensors[t].consumers))]

    consts = sorted({t for o in ops for t in parent.ops[o].inputs if parent.tensors[t].role is Role.CONSTANT})
    order = inputs + consts + sorted(made)
    new_id = {p: i for i, p in enumerate(order)}
    new_op = {p: i for i, p in enumerate(ops)}
    out_set = set(outputs)
    tensors = []
    for p in order:
        src = parent.tensors[p]
        role = src.role
        if p in seen and p not in made:
            role = input_role(src) if input_role is not None else (
                Role.PARAMETER if src.role is Role.INTERMEDIATE else src.role)
        tensors.append(replace(
            src, id=new_id[p], role=role,
            producer=new_op[src.producer] if p in made and src.producer is not None else None,
            consumers=tuple(new_op[c] for c in src.consumers if c in inside),
            name=src.name or (f"%{p}" if p in seen else ""), is_output=p in out_set,
            donated=src.donated and p in seen))
    sub_ops = tuple(replace(parent.ops[p], id=new_op[p], inputs=tuple(new_id[t] for t in parent.ops[p].inputs),
                            outputs=tuple(new_id[t] for t in parent.ops[p].outputs)) for p in ops)
    g = Graph(ops=sub_ops, tensors=tuple(tensors), inputs=tuple(new_id[t] for t in inputs),
              outputs=tuple(new_id[t] for t in outputs), annotations=dict(parent.annotations))
    return Subgraph(graph=g, parent_tensor=tuple(order), parent_op=tuple(ops))



def structure_key(g: Graph) -> str:
    """Equal for graphs that are the same program up to tensor and op numbering made by ``extract`` (the same
    primitives, parameters, wiring, shapes, dtypes and roles, position by position): such graphs share plans."""
    return _program_hash(g, sizes=True)


def wiring_key(g: Graph) -> str:
    """Equal for graphs that are the same program up to array sizes: the same primitives, wiring, ranks, dtypes,
    roles and sections, position by position (``structure_key`` without shapes and op parameters). A stage
    traced at another microbatch size has the same wiring; its plan is a warm start for this one's."""
    return _program_hash(g, sizes=False)


def _program_hash(g: Graph, sizes: bool) -> str:
    import hashlib

    h = hashlib.sha256()
    names: dict[Any, str] = {}             # str(dtype) is slow; a graph has a handful of dtypes
    for t in g.tensors:
        dt = names.get(t.dtype)
        if dt is None:
            dt = names[t.dtype] = str(t.dtype)
        shape = t.shape if sizes else len(t.shape)
        h.update(f"{shape}{dt}{t.role.value}{t.producer}{t.is_output}{t.donated if sizes else ''};".encode())
        if sizes and t.value is not None and t.size <= 16:
            v = t.value
            h.update(v.tobytes() if isinstance(v, np.ndarray) else repr(v).encode())
    h.update(f"{g.inputs}{g.outputs}".encode())
    for op in g.ops:
        h.update(f"{op.primitive}{op.inputs}{op.outputs}{op.section.value}".encode())
        if sizes:
            h.update(repr(sorted((k, repr(v)) for k, v in op.params.items())).encode())
    return h.hexdigest()
