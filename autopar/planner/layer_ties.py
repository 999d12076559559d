"""Structurally identical layers share one sharding solution.

Consumes: a Graph whose ops carry layer ids (``autopar.mark_layer_boundary()`` or clustering).
Produces: ``op_ties(graph) -> {op id: representative op id}`` pairing every op of a layer with the op at the
same position of the first layer of identical structure, and ``input_ties`` doing the same for the
parameters those ops read. The planner then gives tied ops one set of ILP variables: the solution is
the best *layer-uniform* plan, which is the optimum whenever identical layers see identical neighbours
(every inner layer of a transformer stack); the first and last layer of a stack may lose a little, which
is why ties are an option of the builder.

Two layers are identical when, section by section (forward, backward), their ops have the same
primitives, shapes, dtypes and static parameters in the same order.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from autopar.ir.graph import Graph, Section


def _op_signature(graph: Graph, op: Any) -> tuple[Any, ...]:
    shapes = tuple((graph.tensors[t].shape, str(graph.tensors[t].dtype)) for t in op.inputs + op.outputs)
    params = tuple(sorted((k, repr(v)) for k, v in op.params.items() if not hasattr(v, "eqns")))
    return (op.primitive, shapes, params)


def op_ties(graph: Graph) -> dict[int, int]:
    """op id -> representative op id, for ops of layers identical to an earlier layer."""
    layers: dict[int, dict[Section, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for op in graph.ops:
        if op.layer is not None and op.section in (Section.FORWARD, Section.BACKWARD):
            layers[op.layer][op.section].append(op)
    first_of: dict[tuple[Any, ...], int] = {}
    classes: dict[tuple[int, Section, int], list[int]] = defaultdict(list)  # (first layer, section, position)
    for layer in sorted(layers):
        secs = layers[layer]
        sig = tuple((s.value, tuple(_op_signature(graph, op) for op in secs.get(s, ())))
                    for s in (Section.FORWARD, Section.BACKWARD))
        first = first_of.setdefault(sig, layer)
        for s in (Section.FORWARD, Section.BACKWARD):
            for pos, op in enumerate(secs.get(s, ())):
                classes[(first, s, pos)].append(op.id)
    # The representative is the op that comes first in program order (the last layer, for backward ops),
    # so the planner meets it before the ops tied to it.
    ties: dict[int, int] = {}
    for members in classes.values():
        rep = min(members)
        ties.update({m: rep for m in members if m != rep})
    return ties


def input_ties(graph: Graph, ties: dict[int, int]) -> dict[int, int]:
    """input tensor id -> representative input tensor id: inputs read at the same operand slot of tied ops."""
    inputs = set(graph.inputs)
    out: dict[int, int] = {}
    for op_id, rep_id in ties.items():
        op, rop = graph.ops[op_id], graph.ops[rep_id]
        for t, rt in zip(op.inputs, rop.inputs):
            if t in inputs and rt in inputs and t != rt and t not in out and rt not in out:
                if graph.tensors[t].shape == graph.tensors[rt].shape:
                    out[t] = rt
    return out


def state_ties(graph: Graph, param_ties: dict[int, int]) -> dict[int, int]:
    """Optimizer state mirrors the parameter tree (optax's mu / nu / trace ...): tie the state of a tied
    parameter to the state of its representative, matched by pytree path (``...mu['blocks']['3']['w']`` to
    ``...mu['blocks']['0']['w']`` when ``['blocks']['3']['w']`` is tied to ``['blocks']['0']['w']``)."""
    by_name = {graph.tensors[t].name: t for t in graph.inputs}
    out: dict[int, int] = {}
    for t, rt in param_ties.items():
        a, b = graph.tensors[t].name, graph.tensors[rt].name
        p = 0
        while p < min(len(a), len(b)) and a[p] == b[p]:
            p += 1
        # the part of the path from where it first differs: state paths end with the same keys
        key_start = a.rfind("[", 0, p + 1)
        if key_start < 0:
            continue
        a_key = a[key_start:]
        b_key = b[key_start:]
        for name, u in by_name.items():
            if u == t or u in out or u in param_ties or not name.endswith(a_key):
                continue
            twin = by_name.get(name[: len(name) - len(a_key)] + b_key)
            if twin is not None and twin != u and graph.tensors[twin].shape == graph.tensors[u].shape:
                out[u] = twin
    return out
