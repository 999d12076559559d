"""Sharding rule for ``conv_general_dilated``.

Slots: batch (lhs batch dim, out batch dim), output feature (rhs out-feature dim, out feature dim) and
input feature (lhs feature, rhs in-feature; a contracting dim: partial sums resolved by all-reduce or
reduce-scatter). Spatial dims stay replicated (halo exchange is not modelled). Grouped convolutions
(feature_group_count or batch_group_count > 1) get batch splits only.
"""

from __future__ import annotations

from autopar.sharding.strategy import Rule, RuleContext, Slot, Strategy, enumerate_slot_strategies


def _conv_strategies(ctx: RuleContext) -> list[Strategy]:
    dn = ctx.params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    slots = [Slot("batch", (lhs_spec[0], None), (out_spec[0],))]
    if ctx.params.get("feature_group_count", 1) == 1 and ctx.params.get("batch_group_count", 1) == 1:
        slots.append(Slot("out_feature", (None, rhs_spec[0]), (out_spec[1],)))
        slots.append(Slot("in_feature", (lhs_spec[1], rhs_spec[1]), (None,)))
    return enumerate_slot_strategies(ctx, slots)


rules: dict[str, Rule] = {"conv_general_dilated": _conv_strategies}
