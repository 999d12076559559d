"""Sharding rules for windowed reductions (pooling) and their gradients.

Covers ``reduce_window_max`` / ``reduce_window_sum`` / ``reduce_window_min``, the generic ``reduce_window``
(several operands reduced by a traced body, then one rank-0 init value per operand),
``select_and_scatter_add`` (the max-pool gradient: operands ``source`` (pooled shape) and ``operand``
(input shape), output in the input shape) and ``select_and_gather_add`` (the max-pool JVP: operands
``tangents`` and ``operand`` (input shape), output in the pooled shape).

Slots: one per *unwindowed* dim, i.e. window size 1, stride 1, no padding, base and window dilation 1 (the
batch and channel dims of a pooling); such a dim has the same size in every operand and output, and all
of them share its split. Windowed dims stay unsplit (halo exchange is not modelled, as for convolutions).
Consumes: the op's window params. Produces: slot strategies (rank-0 init values get no requirement).
Refuses: nothing; an op whose operands and outputs do not all have the pooling rank is planned replicated.
"""

from __future__ import annotations

from typing import Any, Mapping

from autopar.sharding.strategy import (Rule, RuleContext, Slot, Strategy, enumerate_slot_strategies,
                                       replicated_strategy)

REDUCE_WINDOW_PRIMITIVES = ("reduce_window_max", "reduce_window_sum", "reduce_window_min", "reduce_window")
SELECT_WINDOW_PRIMITIVES = ("select_and_scatter_add", "select_and_gather_add")


def unwindowed_dims(params: Mapping[str, Any], rank: int) -> list[int]:
    """Dims that the window leaves alone: size 1, stride 1, no padding and no dilation."""
    window = tuple(params["window_dimensions"])
    strides = tuple(params.get("window_strides") or (1,) * rank)
    padding = tuple(tuple(p) for p in (params.get("padding") or ((0, 0),) * rank))
    base = tuple(params.get("base_dilation") or (1,) * rank)
    wdil = tuple(params.get("window_dilation") or (1,) * rank)
    if not all(len(t) == rank for t in (window, strides, padding, base, wdil)):
        return []
    return [d for d in range(rank)
            if window[d] == 1 and strides[d] == 1 and padding[d] == (0, 0) and base[d] == 1 and wdil[d] == 1]


def _window_strategies(ctx: RuleContext) -> list[Strategy]:
    """Every operand and output of pooling rank shares each unwindowed dim; rank-0 operands are free."""
    rank = len(ctx.params["window_dimensions"])
    if any(len(s) != rank for s in ctx.out_shapes) or any(len(s) not in (0, rank) for s in ctx.in_shapes):
        return [replicated_strategy(ctx)]
    slots = []
    for d in unwindowed_dims(ctx.params, rank):
        ins = tuple(d if len(s) == rank else None for s in ctx.in_shapes)
        slots.append(Slot(f"d{d}", ins, (d,) * len(ctx.out_shapes)))
    return enumerate_slot_strategies(ctx, slots)


rules: dict[str, Rule] = {p: _window_strategies for p in REDUCE_WINDOW_PRIMITIVES + SELECT_WINDOW_PRIMITIVES}
