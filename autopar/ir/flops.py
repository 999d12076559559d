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


def _valid_taps(in_size: int, k: int, out_size: int, stride: int, pad_lo: int, lhs_dil: int,
                rhs_dil: int) -> int:
    """(output position, kernel tap) pairs of one spatial dim that read a real input element, not
    padding or a hole of the lhs dilation: what XLA's HloCostAnalysis counts."""
    extent = (in_size - 1) * lhs_dil + 1  # the dilated input
    total = 0
    for j in range(k):
        c = j * rhs_dil - pad_lo  # input position read by output o is o * stride + c
        lo = max(0, -(c // stride) if c < 0 else 0)
        hi = min(out_size - 1, (extent - 1 - c) // stride)
        if hi < lo:
            continue
        if lhs_dil == 1:
            total += hi - lo + 1
        else:  # only positions on the dilation grid: o * stride + c == 0 (mod lhs_dil)
            total += sum(1 for o in range(lo, hi + 1) if (o * stride + c) % lhs_dil == 0)
    return total


def _conv_flops(g: "Graph", op: "Op") -> float:
    lhs, rhs, out = (g.tensors[t] for t in (op.inputs[0], op.inputs[1], op.outputs[0]))
    p = op.params
    dn = p["dimension_numbers"]  # specs: (batch/out feature, feature/in feature, *spatial)
    spatial = math.prod(
        _valid_taps(lhs.shape[ld], rhs.shape[rd], out.shape[od], p["window_strides"][i], p["padding"][i][0],
                    p["lhs_dilation"][i], p["rhs_dilation"][i])
        for i, (ld, rd, od) in enumerate(zip(dn.lhs_spec[2:], dn.rhs_spec[2:], dn.out_spec[2:])))
    non_spatial = out.size // math.prod(out.shape[d] for d in dn.out_spec[2:])
    return 2.0 * non_spatial * rhs.shape[dn.rhs_spec[1]] * spatial


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
lgamma digamma igamma select_n clamp square one_minus_square reciprocal nextafter is_finite eq ne lt le gt ge and or not xor
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
