"""The sharding rule table: primitive name -> Rule, with a replicated fallback.

Consumes: a Graph, an Op and a LogicalMesh. Produces: the op's candidate strategies (valid, deduplicated,
deterministic order). Refuses: nothing: a primitive without a rule is planned replicated, with one
``AutoparWarning`` per primitive name per process.
Each family module (dot, conv, elementwise, reduction, shape, indexing, window, misc, control) exports
a ``rules`` dict; this table is their union. ``REPLICATED_BY_DESIGN`` (from misc) names the primitives
whose rule deliberately offers only the replicated strategy, each with its reason.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from autopar.sharding.rules import control, conv, dot, elementwise, indexing, misc, reduction, shape, window
from autopar.sharding.rules.misc import REPLICATED_BY_DESIGN
from autopar.sharding.strategy import Rule, RuleContext, Strategy, replicated_strategy

if TYPE_CHECKING:
    from autopar.ir.graph import Graph, Op
    from autopar.sharding.mesh import LogicalMesh


class AutoparWarning(UserWarning):
    """A planning decision the user may want to know about (e.g. an op planned replicated)."""


sharding_rules: dict[str, Rule] = {
    **elementwise.rules, **dot.rules, **conv.rules, **reduction.rules, **shape.rules,
    **indexing.rules, **window.rules, **misc.rules, **control.rules,
}

_warned: set[str] = set()


def replicated_fallback(ctx: RuleContext) -> list[Strategy]:
    """The single fully-replicated strategy, for primitives without a rule (warns once per name)."""
    name = ctx.op.primitive
    if name not in _warned:
        _warned.add(name)
        warnings.warn(f"autopar: no sharding rule for primitive '{name}'; it is planned replicated",
                      AutoparWarning, stacklevel=3)
    return [replicated_strategy(ctx)]


def strategies_for(graph: "Graph", op: "Op", mesh: "LogicalMesh") -> list[Strategy]:
    """Candidate strategies of ``op``; always at least one (the replicated one when nothing else fits)."""
    ctx = RuleContext(graph, op, mesh)
    out = sharding_rules.get(op.primitive, replicated_fallback)(ctx)
    return out or [replicated_strategy(ctx)]


__all__ = ["AutoparWarning", "REPLICATED_BY_DESIGN", "replicated_fallback", "sharding_rules", "strategies_for"]
