"""Per-device memory: a liveness simulation of a Graph under a given size of every tensor.

Consumes: a Graph and, optionally, ``tensor_bytes(tensor) -> bytes per device`` (a sharding plan divides
tensors; the default is the unsharded size). Produces a ``MemoryEstimate`` that mirrors XLA's
``compiled.memory_analysis()``: arguments, outputs, aliased (donated) bytes and the peak of temporaries.

The model of temporaries follows what XLA does to a jaxpr before it allocates buffers:
- elementwise ops, broadcasts, converts and reshapes fuse into their consumers (loop / input fusion), so a
  value that flows only into such ops is never materialised — unless it is consumed several times by
  different non-fused ops, or is an output;
- a value whose last use is an elementwise op producing an output of its size shares that output's buffer;
- every other value (dot/conv results, reductions, gathers, scans, values used by a dot) lives from the op
  that makes it to its last use; inputs, outputs and constants are not temporaries;
- a fused value is recomputed where it is read, so the values it is computed from stay live until its
  last reader: a ReLU mask ``x > 0`` read by the backward ``select_n`` keeps the pre-activation ``x``
  alive until the backward pass (``last_uses``);
- a dot_general whose batch dimensions are not leading reads a transposed copy of that operand;
- the peak is taken over program order (XLA's scheduler may do better).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from autopar.ir.flops import ELEMENTWISE

if TYPE_CHECKING:
    from autopar.ir.graph import Graph, Op, Tensor

TensorBytes = Callable[["Tensor"], float]

# Ops XLA fuses into their consumers (they produce no buffer of their own when fused).
FUSIBLE = ELEMENTWISE | frozenset({
    "broadcast_in_dim", "convert_element_type", "reshape", "squeeze", "expand_dims", "copy", "copy_p",
    "stop_gradient", "iota", "select_n", "clamp", "integer_pow", "square", "logistic", "neg",
})
# Producers XLA duplicates into each consumer instead of materialising them once: the ops its fusion pass
# does not call expensive (XLA ``InstructionFusion::IsExpensive``: add, subtract, multiply, max/min, compare,
# select, clamp, negate, abs, sign, floor/ceil/round, logical and bitwise ops, converts, broadcasts, reshapes
# are cheap; divide, exp, log, tanh, logistic, sqrt/rsqrt, power, erf are expensive and get a buffer when
# read by several fusions). ``integer_pow``/``square`` lower to multiplies.
CHEAP = frozenset({"broadcast_in_dim", "convert_element_type", "reshape", "squeeze", "expand_dims", "iota",
                   "copy", "copy_p", "neg", "stop_gradient", "add", "add_any", "sub", "mul", "max", "min",
                   "abs", "sign", "floor", "ceil", "round", "select_n", "clamp", "eq", "ne", "lt", "le", "gt",
                   "ge", "and", "or", "not", "xor", "is_finite", "integer_pow", "square", "shift_left",
                   "shift_right_logical", "shift_right_arithmetic", "population_count", "real", "imag"})
# Ops that read their operands in place of a fused producer (a reduction fuses its elementwise input).
FUSES_INPUTS = FUSIBLE | frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax",
                                    "argmin", "transpose"})


@dataclass(frozen=True)
class MemoryEstimate:
    argument_bytes: float
    output_bytes: float
    alias_bytes: float           # outputs that reuse a donated argument's buffer
    temp_peak_bytes: float
    peak_op: int | None          # the op at which temporaries peak

    @property
    def total_bytes(self) -> float:
        """arguments + outputs + temporaries, the sum ``memory_analysis()`` reports (aliasing not removed)."""
        return self.argument_bytes + self.output_bytes + self.temp_peak_bytes

    @property
    def peak_bytes(self) -> float:
        """What a device must hold at the worst moment: donated outputs reuse their argument's buffer."""
        return self.total_bytes - self.alias_bytes


def _writes_into_output(g: "Graph", t: "Tensor", depth: int = 6) -> bool:
    """XLA lets a fused elementwise computation write its result into a dead operand's buffer; when the
    fusion (followed through elementwise consumers) ends in a program output of the same size, the operand's
    buffer is that output buffer and never counts as a temporary (e.g. a gradient feeding an Adam update)."""
    frontier = [t]
    for _ in range(depth):
        nxt = []
        for u in frontier:
            for c in u.consumers:
                op = g.ops[c]
                if op.primitive not in FUSIBLE:
                    continue
                for o in op.outputs:
                    ot = g.tensors[o]
                    if ot.nbytes != t.nbytes:
                        continue
                    if ot.is_output:
                        return True
                    nxt.append(ot)
        if not nxt:
            return False
        frontier = nxt
    return False


def materialised(g: "Graph", t: "Tensor") -> bool:
    if t.producer is None or t.is_output or _writes_into_output(g, t):
        return False
    producer = g.ops[t.producer]
    if producer.primitive not in FUSIBLE:
        return True
    consumers = [g.ops[c] for c in t.consumers]
    if any(c.primitive not in FUSES_INPUTS for c in consumers):
        return True
    if len({c.id for c in consumers}) > 1 and producer.primitive not in CHEAP:
        return True  # XLA duplicates only cheap producers into several consumers
    return False


def _aliased_bytes(g: "Graph", size: TensorBytes) -> float:
    """Outputs that can take over a donated argument's buffer (same bytes), each argument used once."""
    free: dict[float, int] = {}
    for t in g.input_tensors():
        if t.donated:
            b = size(t)
            free[b] = free.get(b, 0) + 1
    alias = 0.0
    for t in g.output_tensors():
        b = size(t)
        if free.get(b, 0) > 0:
            free[b] -= 1
            alias += b
    return alias


def _fused(g: "Graph", t: "Tensor", mat: dict[int, bool]) -> bool:
    """A value computed inside its readers' fusions (no buffer of its own, not written into an output)."""
    if t.producer is None or t.is_output or mat[t.id]:
        return False
    return g.ops[t.producer].primitive in FUSIBLE and not _writes_into_output(g, t)


_STRUCTURE: "weakref.WeakKeyDictionary[Graph, tuple[dict[int, bool], dict[int, int]]]" = weakref.WeakKeyDictionary()


def _structure(g: "Graph") -> tuple[dict[int, bool], dict[int, int]]:
    """Which values get buffers and where each is last read: mesh-independent, so computed once per graph (the
    planner estimates one graph on many meshes)."""
    hit = _STRUCTURE.get(g)
    if hit is None:
        mat = {t.id: materialised(g, t) for t in g.tensors}
        hit = (mat, _last_uses(g, mat))
        _STRUCTURE[g] = hit
    return hit


def last_uses(g: "Graph") -> dict[int, int]:
    """tensor id -> the last op that reads it, directly or through fused values computed from it."""
    return dict(_structure(g)[1])


def _last_uses(g: "Graph", mat: dict[int, bool]) -> dict[int, int]:
    reach: dict[int, int] = {}  # op id -> last op at which that op's (fused) result is read
    for op in reversed(g.ops):
        r = op.id
        for o in op.outputs:
            ot = g.tensors[o]
            if _fused(g, ot, mat):
                r = max([r] + [reach[c] for c in ot.consumers if c in reach])
        reach[op.id] = r
    out = {}
    for t in g.tensors:
        out[t.id] = max((reach.get(c, c) for c in t.consumers), default=t.producer or 0)
    return out


def estimate_memory(g: "Graph", tensor_bytes: TensorBytes | None = None,
                    extra: Sequence[tuple[float, int, int]] = ()) -> MemoryEstimate:
    """Liveness-based per-device memory of one call of ``g``.

    ``extra``: further temporaries as (bytes, first op, last op) — e.g. the resharded copies a sharding plan
    makes (XLA reshards a value once for all its uses that want the same layout, so the copy lives from the
    first such use to the last).
    """
    size: TensorBytes = tensor_bytes or (lambda t: float(t.nbytes))
    args = sum(size(t) for t in g.input_tensors())
    seen_out: set[int] = set()
    outs = 0.0
    for t in g.output_tensors():
        if t.id not in seen_out:
            seen_out.add(t.id)
            outs += size(t)

    last_use: dict[int, int] = {}
    live_from: dict[int, float] = {}
    mat, uses = _structure(g)
    for t in g.tensors:
        if mat[t.id]:
            live_from[t.id] = size(t)
            last_use[t.id] = uses[t.id]
    frees: dict[int, list[int]] = {}
    for tid, op_id in last_use.items():
        frees.setdefault(op_id, []).append(tid)
    allocs: dict[int, float] = {}
    for nbytes, first, last in extra:
        allocs[first] = allocs.get(first, 0.0) + nbytes
        allocs[-1 - last] = allocs.get(-1 - last, 0.0) + nbytes  # freed after ``last`` (negative keys)

    live = peak = 0.0
    peak_op = None
    for op in g.ops:
        live += sum(live_from.get(t, 0.0) for t in op.outputs) + allocs.get(op.id, 0.0)
        scratch = _body_temporaries(op, size) + _relayout_temporaries(g, op, size)
        if live + scratch > peak:
            peak, peak_op = live + scratch, op.id
        for tid in frees.get(op.id, ()):
            live -= live_from[tid]
        live -= allocs.get(-1 - op.id, 0.0)
    return MemoryEstimate(argument_bytes=args, output_bytes=outs, alias_bytes=_aliased_bytes(g, size),
                          temp_peak_bytes=peak, peak_op=peak_op)


def _relayout_temporaries(g: "Graph", op: "Op", size: TensorBytes) -> float:
    """dot_general operands whose batch dimensions are not leading get a transposed copy first."""
    if op.primitive != "dot_general":
        return 0.0
    (lc, rc), (lb, rb) = op.params["dimension_numbers"]
    extra = 0.0
    for tid, batch, contract in ((op.inputs[0], lb, lc), (op.inputs[1], rb, rc)):
        t = g.tensors[tid]
        nb = len(batch)
        if tuple(batch) != tuple(range(nb)):
            extra += size(t)
    return extra


def _body_temporaries(op: "Op", size: TensorBytes) -> float:
    """Scratch a structured op needs while it runs: its body's own temporaries (one iteration)."""
    if not op.subgraphs:
        return 0.0
    return max(estimate_memory(sub).temp_peak_bytes for sub in op.subgraphs.values())
