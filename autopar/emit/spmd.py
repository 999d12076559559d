"""Emit one SPMD program: ``jax.jit`` with in/out shardings and ``with_sharding_constraint`` on the values
the plan fixes, built by re-interpreting the Graph (never mutating a jaxpr); XLA (Shardy) partitions it.

Consumes: a Graph, the spec of every input/output/fixed intermediate, the specs some operands are resharded
to before their consumer reads them, a ``jax.sharding.Mesh``.
Produces: ``SpmdProgram`` with the jitted flat function and its shardings.

What the program pins is what the plan costed: every op output the plan gives a spec (ILP nodes and the
followers merged into them), and every operand the plan reshards, at the op that reads it, through each
layout the plan's reshard passes (``reshard_path.reshard_layouts``: XLA replicates a value it cannot reshard
in one collective). Left free, XLA's
sharding propagation lays out unpinned intermediates its own way, and its partitioner picks its own
algorithm for a dot whose operands arrive in other layouts (an all-gather where the plan reduce-scatters),
so the compiled collectives and memory would not be the ones the plan predicts.
Refuses: a graph op without a primitive to evaluate (ValueError, from the interpreter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import jax
from jax.sharding import NamedSharding

from autopar.ir.evaluate import evaluate_graph
from autopar.emit.reshard_path import reshard_layouts
from autopar.ir.graph import Graph
from autopar.sharding.mesh import LogicalMesh
from autopar.sharding.spec import ShardingSpec


@dataclass(frozen=True)
class SpmdProgram:
    fn: Callable[..., Any]                     # jitted, takes and returns flat lists
    in_shardings: tuple[NamedSharding, ...]
    out_shardings: tuple[NamedSharding, ...]
    mesh: jax.sharding.Mesh
    donate: tuple[int, ...]

    def lower(self, *flat_args: Any) -> Any:
        return self.fn.lower(*flat_args)


def _named(mesh: jax.sharding.Mesh, spec: ShardingSpec | None, ndim: int) -> NamedSharding:
    s = spec if spec is not None else ShardingSpec.replicated(ndim)
    return NamedSharding(mesh, s.to_partition_spec())


def interpret(graph: Graph, constrain: Mapping[int, NamedSharding],
              operands: Mapping[tuple[int, int], Sequence[NamedSharding]] | None = None
              ) -> Callable[..., tuple[Any, ...]]:
    """A function of the flat inputs that evaluates ``graph``, constraining the listed tensors and the listed
    (op id, operand index) operands as that op reads them, through each of their shardings in turn."""

    def pin(tid: int, value: Any) -> Any:
        sharding = constrain.get(tid)
        return value if sharding is None else jax.lax.with_sharding_constraint(value, sharding)

    def through(op_id: int, k: int, value: Any) -> Any:
        for sharding in operands.get((op_id, k), ()):   # type: ignore[union-attr]
            value = jax.lax.with_sharding_constraint(value, sharding)
        return value

    def run(*flat: Any) -> tuple[Any, ...]:
        return tuple(evaluate_graph(graph, flat, pin, through if operands else None))

    return run


def emit_spmd(graph: Graph, specs: Mapping[int, ShardingSpec], fixed: Sequence[int],
              mesh: jax.sharding.Mesh,
              operand_specs: Mapping[tuple[int, int], ShardingSpec] | None = None) -> SpmdProgram:
    """``fixed``: tensor ids whose sharding the program pins with ``with_sharding_constraint``;
    ``operand_specs``: (op id, operand index) -> the spec that operand is resharded to before the op reads it."""
    ins = tuple(_named(mesh, specs.get(t), len(graph.tensors[t].shape)) for t in graph.inputs)
    outs = tuple(_named(mesh, specs.get(t), len(graph.tensors[t].shape)) for t in graph.outputs)
    constrain = {t: _named(mesh, specs[t], len(graph.tensors[t].shape)) for t in fixed if t in specs}
    operands = operand_shardings(graph, specs, operand_specs or {}, mesh)
    donate = tuple(i for i, t in enumerate(graph.inputs) if graph.tensors[t].donated)
    fn = jax.jit(interpret(graph, constrain, operands), in_shardings=ins, out_shardings=outs,
                 donate_argnums=donate)
    return SpmdProgram(fn=fn, in_shardings=ins, out_shardings=outs, mesh=mesh, donate=donate)


def operand_shardings(graph: Graph, specs: Mapping[int, ShardingSpec],
                      operand_specs: Mapping[tuple[int, int], ShardingSpec],
                      mesh: jax.sharding.Mesh) -> dict[tuple[int, int], tuple[NamedSharding, ...]]:
    """(op id, operand index) -> the shardings that operand is pinned to in turn before the op reads it: each
    layout the plan's reshard from the operand's planned spec (``specs``) to the wanted one passes through."""
    logical = LogicalMesh(tuple(mesh.shape.values()), tuple(mesh.axis_names))
    out = {}
    for (op_id, k), want in operand_specs.items():
        tid = graph.ops[op_id].inputs[k]
        src = specs.get(tid)
        t = graph.tensors[tid]
        layouts = (want,) if src is None else reshard_layouts(src, want, t.shape, t.dtype, logical)
        out[(op_id, k)] = tuple(_named(mesh, s, len(s.dims)) for s in layouts)
    return out
