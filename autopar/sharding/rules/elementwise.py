"""Sharding rule for elementwise primitives (unary, binary, comparisons, select_n, clamp, casts, ...).

All full-size operands and the outputs share one spec; an operand that is rank 0 gets no requirement
(None) and a dim an operand broadcasts (size 1 against a larger output dim) stays replicated in it.
Any assignment of mesh axes to output dims is a strategy. Ops that change the shape (a
``bitcast_convert_type`` between widths) get the replicated strategy only.
"""

from __future__ import annotations

from autopar.sharding.strategy import (Rule, RuleContext, Strategy, elementwise_slots,
                                       enumerate_slot_strategies, replicated_strategy)

ELEMENTWISE_PRIMITIVES = tuple("""
add add_any sub mul div rem pow integer_pow max min neg abs sign floor ceil round exp exp2 log log1p expm1
tanh logistic sin cos tan asin acos atan atan2 sinh cosh asinh acosh atanh sqrt rsqrt cbrt erf erfc erf_inv
lgamma digamma igamma igammac igamma_grad_a random_gamma_grad bessel_i0e bessel_i1e polygamma zeta
select_n clamp square one_minus_square reciprocal nextafter is_finite eq ne lt le gt ge and or not xor
shift_left shift_right_logical shift_right_arithmetic population_count clz conj real imag complex
convert_element_type bitcast_convert_type reduce_precision copy copy_p stop_gradient
""".split())


def _elementwise_strategies(ctx: RuleContext) -> list[Strategy]:
    outs = ctx.out_shapes
    if not outs or any(o != outs[0] for o in outs):
        return [replicated_strategy(ctx)]
    out = outs[0]
    ins = ctx.in_shapes
    if any(len(s) not in (0, len(out)) or any(a not in (1, b) for a, b in zip(s, out)) for s in ins if s):
        return [replicated_strategy(ctx)]  # a shape-changing op (bitcast between widths)
    return enumerate_slot_strategies(ctx, elementwise_slots(out, ins, n_outs=len(outs)))


rules: dict[str, Rule] = {p: _elementwise_strategies for p in ELEMENTWISE_PRIMITIVES}
