"""Floating-point operation counts per primitive: a rule table keyed by primitive name.

Exact for ``dot_general`` and ``conv_general_dilated`` (2 flops per multiply-add, as XLA counts them);
one flop per output element for elementwise arithmetic and per input element for reductions; zero for
data movement. Structured ops count their bodies (a scan body times its length, a while body once, the
costliest cond branch).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from autopar.ir.graph import Graph, Op

FlopRule = Callable[["Graph", "Op"], float]


def _dot_general_flops(g: "Graph", op: "Op") -> float:
    lhs = g.tensors[op.inputs[0]]
    (lhs_contract, _), _ = op.params["dimension_numbers"]
    k = math.prod(lhs.shape[d] for d in lhs_contract)
    return 2.0 * g.tensors[op.outputs[0]].size * k


def _conv_flops(g: "Graph", op: "Op") -> float:
    rhs = g.tensors[op.inputs[1]]
    dn = op.params["dimension_numbers"]
    rhs_spec = dn.rhs_spec  # (out feature, in feature, *spatial)
    per_output = rhs.shape[rhs_spec[1]] * math.prod(rhs.shape[d] for d in rhs_spec[2:])
    return 2.0 * g.tensors[op.outputs[0]].size * per_output


def _per_output(g: "Graph", op: "Op") -> float:
    return float(sum(g.tensors[t].size for t in op.outputs))


def _per_input(g: "Graph", op: "Op") -> float:
    return float(g.tensors[op.inputs[0]].size)


def _zero(g: "Graph", op: "Op") -> float:
    return 0.0


def _scan_flops(g: "Graph", op: "Op") -> float:
    return op.params["length"] * op.subgraphs["body"].flops()


def _while_flops(g: "Graph", op: "Op") -> float:
    # The trip count is unknown statically: count one iteration.
    return sum(sub.flops() for sub in op.subgraphs.values())


def _cond_flops(g: "Graph", op: "Op") -> float:
    return max((sub.flops() for sub in op.subgraphs.values()), default=0.0)


ELEMENTWISE = frozenset("""
add add_any sub mul div rem pow integer_pow max min neg abs sign floor ceil round exp exp2 log log1p expm1
tanh logistic sin cos tan asin acos atan atan2 sinh cosh asinh acosh atanh sqrt rsqrt cbrt erf erfc erf_inv
lgamma digamma igamma select_n clamp square reciprocal nextafter is_finite eq ne lt le gt ge and or not xor
shift_left shift_right_logical shift_right_arithmetic population_count conj real imag complex
""".split())

REDUCTIONS = frozenset("""
reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax argmin
cumsum cumprod cummax cummin cumlogsumexp reduce_precision
""".split())

flop_rules: dict[str, FlopRule] = {
    "dot_general": _dot_general_flops,
    "conv_general_dilated": _conv_flops,
    "scan": _scan_flops,
    "while": _while_flops,
    "cond": _cond_flops,
    **{p: _per_output for p in ELEMENTWISE},
    **{p: _per_input for p in REDUCTIONS},
}


def op_flops(g: "Graph", op: "Op") -> float:
    """Flops of one op; data movement and unknown primitives count zero."""
    return flop_rules.get(op.primitive, _zero)(g, op)
