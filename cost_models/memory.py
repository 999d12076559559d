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
- a dot_general whose batch dimensions are not leading reads a transposed copy of that operand; a transpose
  of the last two dimensions read only by dots is folded into them (XLA ``TransposeFolding``) and gets none;
- the peak is taken over program order (XLA's scheduler may do better).

What each backend's XLA adds (scratch of ops it expands, values it recomputes or folds, temporaries it places
into the outputs' allocations) is in ``cost_models.backend_rules``, keyed by the platform the plan is for
(the cluster's ``DeviceSpec.kind``; an unknown or empty platform has none); this module re-exports its tables.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Collection, Mapping, Sequence

from autopar.ir.flops import ELEMENTWISE

if TYPE_CHECKING:
    from autopar.ir.graph import Graph, Op, Tensor

TensorBytes = Callable[["Tensor"], float]
# ``Graph.annotations`` key a planner sets (to True) on a graph that runs as one XLA program per ``Section``
# (a pipelined stage: forward, backward and update pieces) rather than as one program.
PROGRAMS_PER_SECTION = "programs_per_section"

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
    return _output_written(g, t, depth) is not None


def _output_written(g: "Graph", t: "Tensor", depth: int = 6) -> int | None:
    """The program output whose buffer ``t`` is written into (``_writes_into_output``), or None."""
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
                        return ot.id
                    nxt.append(ot)
        if not nxt:
            return None
        frontier = nxt
    return None


def materialised(g: "Graph", t: "Tensor", platform: str = "") -> bool:
    """Whether XLA gives ``t`` a buffer of its own on ``platform`` (a ``DeviceSpec.kind``; "" for none)."""
    if t.producer is None or t.is_output:
        return False
    producer = g.ops[t.producer]
    if _crosses_programs(g, producer, t):
        return True
    if _writes_into_output(g, t) or _folded_into_dots(g, producer, t):
        return False
    if platform_folds.get(platform, _never)(g, producer, t):
        return False
    if producer.primitive not in FUSIBLE:
        return True
    consumers = [g.ops[c] for c in t.consumers]
    if any(c.primitive not in FUSES_INPUTS for c in consumers):
        return True
    if len({c.id for c in consumers}) > 1 and not _duplicated(producer, platform):
        return True  # XLA duplicates only cheap producers into several consumers
    return False


def _duplicated(producer: "Op", platform: str) -> bool:
    """Whether XLA recomputes ``producer`` in each fusion that reads it rather than giving it a buffer: the
    cheap ops everywhere, and on some platforms more (``platform_duplicated``)."""
    return producer.primitive in CHEAP or producer.primitive in platform_duplicated.get(platform, frozenset())


def _never(g: "Graph", producer: "Op", t: "Tensor") -> bool:
    return False


def _crosses_programs(g: "Graph", producer: "Op", t: "Tensor") -> bool:
    """On a graph run as one XLA program per section (annotated ``PROGRAMS_PER_SECTION``: a pipelined stage's
    forward, backward and update pieces), a transpose read in another section is an output of its producer's
    program and an argument of its reader's: ``TransposeFolding`` cannot reach across, so it is a buffer (a
    tied embedding's ``wte.T``, read by the logits dot and by the backward dot of the input gradient)."""
    if producer.primitive != "transpose" or not g.annotations.get(PROGRAMS_PER_SECTION):
        return False
    return any(g.ops[c].section is not producer.section for c in t.consumers)


def _folded_into_dots(g: "Graph", producer: "Op", t: "Tensor") -> bool:
    """XLA's ``TransposeFolding`` pass folds a transpose that swaps the last two dimensions of a dot operand
    into the dot's dimension numbers; read only by dots, the transpose is gone (a tied embedding's
    ``wte.T``)."""
    if producer.primitive != "transpose" or not t.consumers:
        return False
    n = len(t.shape)
    perm = tuple(producer.params.get("permutation", ()))
    return n >= 2 and perm == (*range(n - 2), n - 1, n - 2) and all(
        g.ops[c].primitive == "dot_general" for c in t.consumers)


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


Structure = tuple[dict[int, bool], dict[int, int]]
_STRUCTURE: "weakref.WeakKeyDictionary[Graph, dict[str, Structure]]" = weakref.WeakKeyDictionary()


def _fusion_key(platform: str) -> str:
    """The platform's key in the per-graph caches: platforms without their own fusion rules share ""."""
    return platform if platform in platform_duplicated or platform in platform_folds else ""


def _structure(g: "Graph", platform: str = "") -> Structure:
    """Which values get buffers and where each is last read: mesh-independent, so computed once per graph and
    platform (the planner estimates one graph on many meshes). Platforms without their own fusion rules share
    the default entry."""
    key = _fusion_key(platform)
    per_graph = _STRUCTURE.setdefault(g, {})
    hit = per_graph.get(key)
    if hit is None:
        mat = {t.id: materialised(g, t, key) for t in g.tensors}
        hit = per_graph[key] = (mat, _last_uses(g, mat))
    return hit


def last_uses(g: "Graph", platform: str = "") -> dict[int, int]:
    """tensor id -> the last op that reads it, directly or through fused values computed from it."""
    return dict(_structure(g, platform)[1])


def _last_uses(g: "Graph", mat: dict[int, bool]) -> dict[int, int]:
    reach = _reach(g, mat)
    out = {}
    for t in g.tensors:
        out[t.id] = max((reach.get(c, c) for c in t.consumers), default=t.producer or 0)
    return out


def _reach(g: "Graph", mat: dict[int, bool]) -> dict[int, int]:
    """op id -> the last op at which that op's result is read (through the fused values computed from it)."""
    reach: dict[int, int] = {}
    for op in reversed(g.ops):
        r = op.id
        for o in op.outputs:
            ot = g.tensors[o]
            if _fused(g, ot, mat):
                r = max([r] + [reach[c] for c in ot.consumers if c in reach])
        reach[op.id] = r
    return reach


_REACH: "weakref.WeakKeyDictionary[Graph, dict[str, dict[int, int]]]" = weakref.WeakKeyDictionary()


def _uses_without(g: "Graph", platform: str, uses: dict[int, int],
                  moved_reads: Mapping[int, Collection[int]]) -> dict[int, int]:
    """``uses`` with the reads in ``moved_reads`` (tensor id -> reading ops) left out: a value read only
    through a copy made when it is made is last read where its other readers last read it (at its producer
    when there are none)."""
    if not moved_reads:
        return uses
    key = _fusion_key(platform)
    per_graph = _REACH.setdefault(g, {})
    reach = per_graph.get(key)
    if reach is None:
        reach = per_graph[key] = _reach(g, _structure(g, platform)[0])
    out = dict(uses)
    for tid, ops in moved_reads.items():
        t = g.tensors[tid]
        rest = [c for c in t.consumers if c not in ops]
        out[tid] = max((reach.get(c, c) for c in rest), default=t.producer or 0)
    return out


def estimate_memory(g: "Graph", tensor_bytes: TensorBytes | None = None,
                    extra: Sequence[tuple[float, int, int]] = (), platform: str = "",
                    moved_reads: Mapping[int, Collection[int]] | None = None) -> MemoryEstimate:
    """Liveness-based per-device memory of one call of ``g``.

    ``extra``: further temporaries as (bytes, first op, last op) — e.g. the resharded copies a sharding plan
    makes (XLA reshards a value once for all its uses that want the same layout, so the copy lives from the
    first such use to the last).
    ``moved_reads``: tensor id -> the ops that read it through such a copy made as soon as the tensor exists
    (a resharding that only slices: ``planner.estimate.reshard_copies``); those reads do not keep the tensor
    alive.
    ``platform``: the device kind the program is compiled for ("cpu", "gpu", "tpu"); it selects the backend's
    expansions in ``platform_buffer_rules`` (none for an empty or unknown platform).
    """
    size: TensorBytes = tensor_bytes or (lambda t: float(t.nbytes))
    args = sum(size(t) for t in g.input_tensors())
    seen_out: set[int] = set()
    outs = 0.0
    for t in g.output_tensors():
        if t.id not in seen_out:
            seen_out.add(t.id)
            outs += size(t)

    mat, uses = _structure(g, platform)
    uses = _uses_without(g, platform, uses, moved_reads or {})
    buffers: list[Buffer] = [(size(t), t.producer, uses[t.id]) for t in g.tensors
                             if mat[t.id] and t.producer is not None]
    buffers.extend(extra)
    backend = platform_buffer_rules.get(platform, {})
    for op in g.ops:
        buffers.extend(backend.get(op.primitive, _no_buffers)(g, op, size))
        scratch = _body_temporaries(op, size, platform) + _relayout_temporaries(g, op, size)
        if scratch:
            buffers.append((scratch, op.id, op.id))
    buffers = platform_placements.get(platform, _all_in_temp)(g, buffers, size)
    allocs: dict[int, float] = {}
    for nbytes, first, last in buffers:
        allocs[first] = allocs.get(first, 0.0) + nbytes
        allocs[-1 - last] = allocs.get(-1 - last, 0.0) + nbytes  # freed after ``last`` (negative keys)

    live = peak = 0.0
    peak_op = None
    for op in g.ops:
        live += allocs.get(op.id, 0.0)
        if live > peak:
            peak, peak_op = live, op.id
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


def _body_temporaries(op: "Op", size: TensorBytes, platform: str = "") -> float:
    """Scratch a structured op needs while it runs: its body's own temporaries (one iteration)."""
    if not op.subgraphs:
        return 0.0
    return max(estimate_memory(sub, platform=platform).temp_peak_bytes for sub in op.subgraphs.values())


# the backends' rules read the walk above; bound after it is defined (``backend_rules`` imports this module)
from autopar.cost_models.backend_rules import (  # noqa: E402
    YNN_REDUCTIONS as YNN_REDUCTIONS, Buffer, BufferRule as BufferRule, _all_in_temp, _no_buffers,
    platform_buffer_rules as platform_buffer_rules, platform_duplicated as platform_duplicated,
    platform_early_slices as platform_early_slices, platform_folds as platform_folds,
    platform_placements as platform_placements)
