"""Emit one SPMD program: ``jax.jit`` with in/out shardings and ``with_sharding_constraint`` on the values
the plan fixes, built by re-interpreting the Graph (never mutating a jaxpr); XLA (Shardy) partitions it.

Consumes: a Graph, the spec of every input/output/fixed intermediate, a ``jax.sharding.Mesh``.
Produces: ``SpmdProgram`` with the jitted flat function and its shardings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import jax
from jax.sharding import NamedSharding

from autopar.ir.evaluate import evaluate_graph
from autopar.ir.graph import Graph
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


def interpret(graph: Graph, constrain: Mapping[int, NamedSharding]) -> Callable[..., tuple[Any, ...]]:
    """A function of the flat inputs that evaluates ``graph``, constraining the listed tensors."""

    def pin(tid: int, value: Any) -> Any:
        sharding = constrain.get(tid)
        return value if sharding is None else jax.lax.with_sharding_constraint(value, sharding)

    def run(*flat: Any) -> tuple[Any, ...]:
        return tuple(evaluate_graph(graph, flat, pin))

    return run


def emit_spmd(graph: Graph, specs: Mapping[int, ShardingSpec], fixed: Sequence[int],
              mesh: jax.sharding.Mesh) -> SpmdProgram:
    """``fixed``: tensor ids whose sharding the program pins with ``with_sharding_constraint``."""
    ins = tuple(_named(mesh, specs.get(t), len(graph.tensors[t].shape)) for t in graph.inputs)
    outs = tuple(_named(mesh, specs.get(t), len(graph.tensors[t].shape)) for t in graph.outputs)
    constrain = {t: _named(mesh, specs[t], len(graph.tensors[t].shape)) for t in fixed if t in specs}
    donate = tuple(i for i, t in enumerate(graph.inputs) if graph.tensors[t].donated)
    fn = jax.jit(interpret(graph, constrain), in_shardings=ins, out_shardings=outs, donate_argnums=donate)
    return SpmdProgram(fn=fn, in_shardings=ins, out_shardings=outs, mesh=mesh, donate=donate)
