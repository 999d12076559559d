"""The op graph the planner sees: ops in program order over tensors with shapes, dtypes and roles.

A Graph is built once by ``autopar.ir.trace`` and never mutated afterwards; passes build new graphs.
Tensors and ops are addressed by integer ids (their index in ``Graph.tensors`` / ``Graph.ops``).
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

if TYPE_CHECKING:
    import networkx as nx


class Role(str, enum.Enum):
    PARAMETER = "parameter"      # a non-batch input (model parameters, optimizer state, step counters)
    BATCH = "batch"              # an input named in batch_argnums
    CONSTANT = "constant"        # a literal or a constant captured by the traced function
    INTERMEDIATE = "intermediate"


class Section(str, enum.Enum):
    FORWARD = "forward"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer"


@dataclass(frozen=True, slots=True, eq=False)
class Tensor:
    id: int
    shape: tuple[int, ...]
    dtype: np.dtype
    role: Role
    producer: int | None            # op id, None for inputs and constants
    consumers: tuple[int, ...]      # op ids in program order
    name: str = ""                  # pytree path for inputs ("[0]['params']['w']"), "" otherwise
    argnum: int | None = None       # positional argument an input came from
    is_output: bool = False
    donated: bool = False
    value: Any = None               # the value of a constant (literal or captured array)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def is_input(self) -> bool:
        return self.role in (Role.PARAMETER, Role.BATCH)

    def __repr__(self) -> str:
        dims = ",".join(map(str, self.shape))
        label = f" {self.name}" if self.name else ""
        return f"t{self.id}:{self.dtype.name}[{dims}]{label}"


@dataclass(frozen=True, slots=True, eq=False)
class Op:
    id: int
    primitive: str
    params: Mapping[str, Any]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    section: Section = Section.FORWARD
    layer: int | None = None        # from mark_layer_boundary() or clustering; None when unknown
    remat: int | None = None        # id of the remat (checkpoint) region the op was inlined from
    name_stack: str = ""
    subgraphs: Mapping[str, "Graph"] = field(default_factory=dict)  # scan/while/cond bodies
    prim: Any = None                # the jax Primitive, used to re-evaluate the graph

    @property
    def is_structured(self) -> bool:
        return bool(self.subgraphs)

    def __repr__(self) -> str:
        return f"op{self.id}:{self.primitive}"


@dataclass(frozen=True, eq=False)
class Graph:
    ops: tuple[Op, ...]
    tensors: tuple[Tensor, ...]
    inputs: tuple[int, ...]          # tensor ids of the flattened (non-static) arguments, in order
    outputs: tuple[int, ...]         # tensor ids of the flattened results, in order
    in_tree: Any = None
    out_tree: Any = None
    annotations: Mapping[str, Any] = field(default_factory=dict)

    # ---- lookups -------------------------------------------------------------------------------
    def tensor(self, tid: int) -> Tensor:
        return self.tensors[tid]

    def op_inputs(self, op: Op) -> list[Tensor]:
        return [self.tensors[t] for t in op.inputs]

    def op_outputs(self, op: Op) -> list[Tensor]:
        return [self.tensors[t] for t in op.outputs]

    def input_tensors(self) -> list[Tensor]:
        return [self.tensors[t] for t in self.inputs]

    def output_tensors(self) -> list[Tensor]:
        return [self.tensors[t] for t in self.outputs]

    def ops_in(self, section: Section) -> list[Op]:
        return [op for op in self.ops if op.section is section]

    def primitive_counts(self, recursive: bool = True) -> Counter[str]:
        counts: Counter[str] = Counter()
        for op in self.ops:
            counts[op.primitive] += 1
            if recursive:
                for sub in op.subgraphs.values():
                    counts.update(sub.primitive_counts())
        return counts

    def num_ops(self, recursive: bool = True) -> int:
        return sum(self.primitive_counts(recursive).values())

    # ---- analyses --------------------------------------------------------------------------------
    def flops(self) -> float:
        """Total floating-point operations of one call (scan bodies times their length)."""
        from autopar.ir.flops import op_flops

        return float(sum(op_flops(self, op) for op in self.ops))

    def input_bytes(self) -> int:
        return sum(self.tensors[t].nbytes for t in self.inputs)

    def to_networkx(self) -> "nx.MultiDiGraph":
        """Op-level dataflow view: nodes are op ids, edges carry the tensor id flowing between them."""
        import networkx as nx

        g = nx.MultiDiGraph()
        for op in self.ops:
            g.add_node(op.id, primitive=op.primitive, section=op.section.value, layer=op.layer)
        for t in self.tensors:
            if t.producer is None:
                continue
            for c in t.consumers:
                g.add_edge(t.producer, c, tensor=t.id, bytes=t.nbytes)
        return g

    def evaluate(self, *flat_args: Any) -> list[Any]:
        """Run the graph op by op on flat arguments; returns the flat outputs."""
        from autopar.ir.evaluate import evaluate_graph

        return evaluate_graph(self, flat_args)

    def __call__(self, *args: Any) -> Any:
        """Evaluate with the original (non-static) argument structure and return the original pytree."""
        import jax

        flat, tree = jax.tree_util.tree_flatten(args)
        if self.in_tree is not None and tree != self.in_tree:
            raise TypeError(f"arguments do not match the traced structure: got {tree}, traced {self.in_tree}")
        out = self.evaluate(*flat)
        return jax.tree_util.tree_unflatten(self.out_tree, out) if self.out_tree is not None else out

    def summary(self, top: int = 10) -> str:
        from autopar.ir.printing import graph_summary

        return graph_summary(self, top=top)

    def __repr__(self) -> str:
        return f"Graph({len(self.ops)} ops, {len(self.tensors)} tensors, {len(self.inputs)} inputs)"


def by_section(ops: Iterable[Op]) -> dict[Section, int]:
    counts = Counter(op.section for op in ops)
    return {s: counts.get(s, 0) for s in Section}
