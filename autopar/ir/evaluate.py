"""Re-evaluate a Graph op by op (an interpreter; works eagerly and under ``jax.jit``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from autopar import _jax_compat as jc
from autopar.ir.graph import Role

if TYPE_CHECKING:
    from autopar.ir.graph import Graph


def evaluate_graph(g: "Graph", flat_args: Sequence[Any],
                   on_value: Callable[[int, Any], Any] | None = None,
                   on_operand: Callable[[int, int, Any], Any] | None = None) -> list[Any]:
    """Flat outputs of ``g`` on flat inputs. ``on_value(tensor id, value)``, when given, may replace each op
    result as it is made, and ``on_operand(op id, operand index, value)`` each non-constant operand as an op
    reads it (the SPMD emitter pins shardings both ways)."""
    if len(flat_args) != len(g.inputs):
        raise TypeError(f"graph takes {len(g.inputs)} flat inputs, got {len(flat_args)}")
    env: list[Any] = [None] * len(g.tensors)
    for tid, value in zip(g.inputs, flat_args):
        env[tid] = value
    for t in g.tensors:
        if t.role is Role.CONSTANT:
            env[t.id] = t.value
    for op in g.ops:
        if op.prim is None:
            raise ValueError(f"{op} has no primitive to evaluate (was the graph built by autopar.trace?)")
        ins = [env[t] if on_operand is None or g.tensors[t].role is Role.CONSTANT else on_operand(op.id, k, env[t])
               for k, t in enumerate(op.inputs)]
        outs = jc.bind(op.prim, ins, dict(op.params))
        for tid, value in zip(op.outputs, outs):
            env[tid] = value if on_value is None else on_value(tid, value)
    return [env[t] for t in g.outputs]
