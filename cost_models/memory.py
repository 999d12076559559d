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

Backend expansions (``platform_buffer_rules``, keyed by the platform the plan is for: the cluster's
``DeviceSpec.kind``; an unknown or empty platform has none): scratch an op needs while it runs because that
platform's XLA rewrites it into several HLO ops. XLA:CPU has two that matter for convnets:
- ``select_and_scatter_add`` (the max-pool gradient) goes through ``SelectAndScatterExpander``: the operand is
  padded to the windows' extent, one s32 iota of that padded shape per dimension is built, a variadic
  reduce-window returns the window maxima and their s32 coordinates, a scatter adds the source into a zeroed
  padded buffer, a slice strips the padding (``_select_and_scatter_add_cpu``);
- a convolution that Eigen cannot run as written (``ConvCanonicalization``: Eigen wants input
  ``[batch, spatial..., feature]``, kernel ``[spatial..., in, out]``, output ``[batch, spatial..., feature]``)
  reads transposed copies of its non-canonical operands and writes a canonical result that is transposed into
  place: the backward convolutions of an NHWC/HWIO model (``_conv_relayout_cpu``);
- a reduction (``YNN_REDUCTIONS``) becomes a YNNPACK fusion (``__ynn_fusion``) that absorbs the elementwise ops
  and broadcasts feeding it but never duplicates one that another op also reads: that shared fused value
  (LayerNorm's ``x - mean``, normalised value, scaled output gradient) gets a buffer from its producer to the
  last reduction reading it (``_reduction_shared_input_cpu``; exact on a LayerNorm forward + gradient). The
  fusion takes floating-point arithmetic only (``_ynn_fusible``): a product with a mask or a one-hot (a
  cross-entropy's ``onehot * logp``, a select to XLA) stays in a loop fusion whose output the reduction
  reads as a buffer, and the walk back stops there (the one-hot is recomputed by each reader).
GPU and TPU run the first two ops natively (cuDNN / the TPU convolution unit take any dimension numbers through
layout assignment; GPU emits select-and-scatter directly), so neither rule is registered for them. XLA:GPU
(measured on H100 and H200 dumps of whole train steps, jax 0.11.2) has its own:
- its priority fusion recomputes ``exp`` and ``logistic`` in every fusion that reads them, as it does the cheap
  ops (``platform_duplicated``): a softmax keeps the (bf16) scores it is computed from, not an f32 exp;
- a ``rev`` read only as convolution kernels is folded into cuDNN's backward-input convolution
  (``platform_folds``);
- an HWIO kernel of an NHWC convolution gets one copy in cuDNN's ``[out, spatial..., in]`` layout, which every
  reader of the kernel then reads, the update included (``_conv_kernel_relayout_gpu``).
It also runs every weight gradient after the whole input-gradient chain (not modelled: program order is kept,
see docs/cost_model.md for why), and recomputes the tanh of a tanh-GELU in fp32 on an H100 but keeps it on an
H200 and in bf16 (kept here).
The expansions are placed at the op, in program order. Known gaps (XLA:CPU, jax 0.10.2): at larger per-device
batches XLA's scheduler runs the select half and the operand transposes in the forward pass, where their inputs
are made, and holds the results until the backward op (not modelled: whether it hoists depends on the sizes —
not at one image per device, yes at four); XLA's algebraic simplifier reassociates flax's LayerNorm
``(x - mean) * (rsqrt * scale)`` so that ``broadcast(rsqrt)`` is one activation-sized value shared by two
reductions, which the graph (where rsqrt is small) cannot show (one activation under per flax LayerNorm); XLA
CSEs repeated jaxpr subexpressions that this model counts twice; XLA:CPU fuses a dot into the max reduction of
a softmax that reads it (the fusion's root is ``x - max``, so the logits get no buffer of their own) and lets an
elementwise fusion write into a dying operand's buffer of its size (the model does that only for outputs):
a softmax cross-entropy's forward + gradient is 1.5x XLA's temporaries (tests/test_memory.py). Measured on wresnet_tiny with four images per
device the prediction stays at ~0.67 of XLA's peak; the YNN rule closes only ~0.02 of it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

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


def _structure(g: "Graph", platform: str = "") -> Structure:
    """Which values get buffers and where each is last read: mesh-independent, so computed once per graph and
    platform (the planner estimates one graph on many meshes). Platforms without their own fusion rules share
    the default entry."""
    key = platform if platform in platform_duplicated or platform in platform_folds else ""
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
                    extra: Sequence[tuple[float, int, int]] = (), platform: str = "") -> MemoryEstimate:
    """Liveness-based per-device memory of one call of ``g``.

    ``extra``: further temporaries as (bytes, first op, last op) — e.g. the resharded copies a sharding plan
    makes (XLA reshards a value once for all its uses that want the same layout, so the copy lives from the
    first such use to the last).
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

    last_use: dict[int, int] = {}
    live_from: dict[int, float] = {}
    mat, uses = _structure(g, platform)
    for t in g.tensors:
        if mat[t.id]:
            live_from[t.id] = size(t)
            last_use[t.id] = uses[t.id]
    frees: dict[int, list[int]] = {}
    for tid, op_id in last_use.items():
        frees.setdefault(op_id, []).append(tid)
    backend = platform_buffer_rules.get(platform, {})
    buffers = list(extra)
    for op in g.ops:
        buffers.extend(backend.get(op.primitive, _no_buffers)(g, op, size))
    allocs: dict[int, float] = {}
    for nbytes, first, last in buffers:
        allocs[first] = allocs.get(first, 0.0) + nbytes
        allocs[-1 - last] = allocs.get(-1 - last, 0.0) + nbytes  # freed after ``last`` (negative keys)

    live = peak = 0.0
    peak_op = None
    for op in g.ops:
        live += sum(live_from.get(t, 0.0) for t in op.outputs) + allocs.get(op.id, 0.0)
        scratch = _body_temporaries(op, size, platform) + _relayout_temporaries(g, op, size)
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


def _body_temporaries(op: "Op", size: TensorBytes, platform: str = "") -> float:
    """Scratch a structured op needs while it runs: its body's own temporaries (one iteration)."""
    if not op.subgraphs:
        return 0.0
    return max(estimate_memory(sub, platform=platform).temp_peak_bytes for sub in op.subgraphs.values())


# ---- backend expansions: buffers beyond the op's own output, which the liveness walk already holds ----------
Buffer = tuple[float, int, int]                       # (bytes per device, first op, last op)
BufferRule = Callable[["Graph", "Op", TensorBytes], list[Buffer]]
INDEX_BYTES = 4   # XLA's SelectAndScatterExpander builds its window coordinates as s32


def _no_buffers(g: "Graph", op: "Op", size: TensorBytes) -> list[Buffer]:
    return []


def _held_by_walk(g: "Graph", t: "Tensor") -> bool:
    """Whether the liveness walk already holds a temporary buffer for ``t`` while its producer runs."""
    return _structure(g)[0][t.id]


def _share(t: "Tensor", size: TensorBytes) -> float:
    """The fraction of ``t`` one device holds (1 unsharded)."""
    return size(t) / t.nbytes if t.nbytes else 1.0


def _select_and_scatter_add_cpu(g: "Graph", op: "Op", size: TensorBytes) -> list[Buffer]:
    """XLA:CPU's ``SelectAndScatterExpander`` (xla/service/select_and_scatter_expander.cc). With ``P`` the
    operand padded to the windows' extent, ``S`` the source (one element per window), ``r`` the rank and ``b``
    the element size: the *select* half builds ``r`` s32 iotas of shape P, the padded operand (only if there
    is padding) and a variadic reduce-window returning S window maxima and ``r`` s32 coordinates, which are
    concatenated (``S x r`` s32) and, with the zeroed scatter target of shape P, held until the *scatter* half
    runs with a copy of the source. The result is sliced out of the target (with no padding the target is the
    result, the buffer the walk holds). Everything scales with the operand's per-device share."""
    source, operand = g.tensors[op.inputs[0]], g.tensors[op.inputs[1]]
    out = g.tensors[op.outputs[0]]
    pads = op.params.get("padding", ())
    padded = [d + lo + hi for d, (lo, hi) in zip(operand.shape, pads)] if pads else list(operand.shape)
    share = _share(operand, size)
    b, r = operand.dtype.itemsize, len(operand.shape)
    p = float(np.prod(padded)) * share
    s = float(source.size) * share
    has_pad = any(lo or hi for lo, hi in pads)
    held = s * r * INDEX_BYTES + (p * b if has_pad else 0.0)    # coordinates + the target (else the output)
    if not has_pad and not _held_by_walk(g, out):
        held += p * b
    select = r * INDEX_BYTES * p + (p * b if has_pad else 0.0) + s * b    # iotas, padded operand, maxima
    return [(held + max(select, s * b), op.id, op.id)]                 # then the source copy


def _conv_relayout_cpu(g: "Graph", op: "Op", size: TensorBytes) -> list[Buffer]:
    """XLA:CPU's ``ConvCanonicalization`` (xla/service/cpu/conv_canonicalization.cc): a convolution that
    ``PotentiallyImplementedAsEigenConvolution`` rejects for its dimension numbers reads a transposed copy of
    its input if that is not ``[batch, spatial..., feature]`` and of its kernel if that is not
    ``[spatial..., in, out]``, and writes a ``[batch, spatial..., feature]`` result that a transpose copies into
    the real output. The copies are placed at the convolution (see the module note on scheduling). A kernel
    made by ``rev`` (the input gradient's flipped kernel) is reversed inside that same copy fusion, whose
    buffer the walk already holds as the ``rev``'s; an f32/f16 forward NHWC x HWIO convolution is canonical
    and needs nothing."""
    dn = op.params.get("dimension_numbers")
    if dn is None or getattr(dn, "lhs_spec", None) is None:
        return []
    lhs, rhs = g.tensors[op.inputs[0]], g.tensors[op.inputs[1]]
    n = len(lhs.shape)
    spatial = tuple(range(1, n - 1))
    out: list[Buffer] = []
    if tuple(dn.lhs_spec) != (0, n - 1, *spatial):
        out.append((size(lhs), op.id, op.id))
    kernel_rev = rhs.producer is not None and g.ops[rhs.producer].primitive == "rev"
    if tuple(dn.rhs_spec) != (n - 1, n - 2, *range(n - 2)) and not kernel_rev:
        out.append((size(rhs), op.id, op.id))
    res = g.tensors[op.outputs[0]]
    if tuple(dn.out_spec) != (0, n - 1, *spatial):
        # the transposed result is written after the convolution, while the canonical one is live: the walk's
        # buffer for the output stands for one of them when it holds one (the operand copies are dead by then)
        copies = sum(b for b, _, _ in out)
        extra = size(res) if not _held_by_walk(g, res) else max(size(res) - copies, 0.0)
        out.append((extra, op.id, op.id))
    return out


_SHARED_READS: "weakref.WeakKeyDictionary[Graph, dict[int, list[tuple[int, int]]]]" = weakref.WeakKeyDictionary()


def _reduction_cut(g: "Graph", op: "Op", mat: dict[int, bool]) -> set[int]:
    """The fused values a reduction reads that XLA:CPU's reduction fusion takes as buffers: walking back from
    the reduction through the values fused into it, the first one that some other op also reads."""
    cut: set[int] = set()
    seen: set[int] = set()
    stack = list(op.inputs)
    while stack:
        tid = stack.pop()
        if tid in seen:
            continue
        seen.add(tid)
        t = g.tensors[tid]
        if t.producer is None or t.is_output or mat[tid] or g.ops[t.producer].primitive not in FUSIBLE:
            continue                                   # an input or a buffer of its own already
        if len(set(t.consumers)) > 1 or not _ynn_fusible(g, g.ops[t.producer]):
            cut.add(tid)
        else:
            stack.extend(g.ops[t.producer].inputs)     # type: ignore[index]
    return cut


def _from_predicate(g: "Graph", tid: int) -> bool:
    """A boolean or integer value, or a float converted from one (a mask, a one-hot)."""
    t = g.tensors[tid]
    if not np.issubdtype(t.dtype, np.floating):
        return True
    p = g.ops[t.producer] if t.producer is not None else None
    return p is not None and p.primitive == "convert_element_type" and not np.issubdtype(
        g.tensors[p.inputs[0]].dtype, np.floating)


def _ynn_fusible(g: "Graph", op: "Op") -> bool:
    """YNNPACK fusions take floating-point arithmetic only: an op that reads a mask or a one-hot (a select, or
    a product with a converted boolean, which XLA's algebraic simplifier turns into a select) is left to a loop
    fusion, whose output the reduction fusion reads as a buffer; the mask is recomputed in every loop fusion
    that reads it (a cheap producer) and gets no buffer of its own (a cross-entropy's one-hot)."""
    return not any(_from_predicate(g, i) for i in op.inputs)


def _shared_reductions(g: "Graph") -> dict[int, list[tuple[int, int]]]:
    """first reduction reading a shared fused value -> [(that value, the last reduction reading it)]."""
    hit = _SHARED_READS.get(g)
    if hit is None:
        mat = _structure(g)[0]
        readers: dict[int, list[int]] = {}
        for op in g.ops:
            if op.primitive in YNN_REDUCTIONS:
                for tid in _reduction_cut(g, op, mat):
                    readers.setdefault(tid, []).append(op.id)
        hit = {}
        for tid, ops in readers.items():
            hit.setdefault(min(ops), []).append((tid, max(ops)))
        _SHARED_READS[g] = hit
    return hit


def _reduction_shared_input_cpu(g: "Graph", op: "Op", size: TensorBytes) -> list[Buffer]:
    """XLA:CPU wraps a reduction and the elementwise ops (broadcasts included) feeding it in a YNNPACK fusion
    (``__ynn_fusion``), but never duplicates a fused value into it that another op also reads: such a value is
    computed once by a loop fusion into a buffer of its own, which lives from its producer to the last
    reduction that reads it (loop-fusion readers still recompute it from its sources). LayerNorm / BatchNorm
    make several per norm: ``x - mean`` (read by the variance and by the normalised value), the normalised
    value, the output gradient times the scale, ... — and the backward reductions read some of them, so they
    live from the forward pass. The buffer is charged once, at the first reduction that reads the value."""
    return [(size(g.tensors[tid]), g.tensors[tid].producer or 0, last)
            for tid, last in _shared_reductions(g).get(op.id, ())]


# Reductions XLA:CPU (jax 0.10.2) emits as ``__ynn_fusion`` custom fusions (checked: sum, max).
YNN_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min"})


# ---- XLA:GPU (jax 0.11.2; measured on an H100 and an H200, bench/data/*/step_fidelity.json) ---------------
def _rev_folded_into_convs_gpu(g: "Graph", producer: "Op", t: "Tensor") -> bool:
    """XLA:GPU's convolution rewriter turns a convolution with a reversed kernel (an input gradient's flipped
    kernel) into a cuDNN backward-input convolution that reads the kernel itself: a ``rev`` read only as
    convolution kernels gets no buffer (the compiled Wide-ResNet step has no ``reverse`` left)."""
    return producer.primitive == "rev" and bool(t.consumers) and all(
        g.ops[c].primitive == "conv_general_dilated" and g.ops[c].inputs[1] == t.id for c in t.consumers)


def _conv_kernel_relayout_gpu(g: "Graph", op: "Op", size: TensorBytes) -> list[Buffer]:
    """cuDNN reads the kernel of a convolution over NHWC activations as ``[out, spatial..., in]`` (KRSC); a
    program input in another order (flax's HWIO) is copied into it once, by a transpose before the first
    convolution that reads it, and XLA's layout assignment then feeds every other reader of the kernel from
    that copy: the backward-input convolution, and the optimizer update, which works in the gradient's
    (cuDNN's) layout and writes the transposed result into the output. So the copy lives from the first
    convolution to the kernel's last reader (the update: all through a train step). Measured on Wide-ResNet
    (H100, jax 0.11.2): one copy per HWIO kernel, 53 copies, 948.8 MiB, each read by the forward convolution,
    the backward-input one and the update fusion. Other activation layouts are not measured and get none."""
    dn = op.params.get("dimension_numbers")
    kernel = g.tensors[op.inputs[1]]
    if dn is None or getattr(dn, "lhs_spec", None) is None or kernel.id not in g.inputs:
        return []
    n = len(kernel.shape)
    if tuple(dn.lhs_spec) != (0, n - 1, *range(1, n - 1)):
        return []
    rhs = tuple(dn.rhs_spec)
    if (rhs[0], *rhs[2:], rhs[1]) == tuple(range(n)):
        return []                                   # already [out, spatial..., in]
    if min(c for c in kernel.consumers if g.ops[c].primitive == "conv_general_dilated"
           and g.ops[c].inputs[1] == kernel.id) != op.id:
        return []                                   # one copy, made for the first convolution
    return [(size(kernel), op.id, _last_reader_gpu(g, kernel))]


def _last_reader_gpu(g: "Graph", t: "Tensor") -> int:
    """The last op that reads ``t``, looking through a ``rev`` folded into the convolutions that read it."""
    def last(c: int) -> int:
        op = g.ops[c]
        out = g.tensors[op.outputs[0]] if op.outputs else None
        return max(out.consumers) if out is not None and _rev_folded_into_convs_gpu(g, op, out) else c
    return max(last(c) for c in t.consumers)


# platform (DeviceSpec.kind) -> elementwise producers its XLA recomputes in every fusion that reads them, besides
# ``CHEAP``. XLA:GPU's priority fusion has no "expensive op" veto: its cost model weighs the recomputation
# against the memory round trip, and for exp (softmax and log-softmax: the attention's Triton normalization
# fusions and the loss's reduction fusions recompute it from the scores / logits, in the forward and the
# backward) and logistic (SiLU, recomputed in the backward) recomputation won in every measured step: in bf16
# the model held the f32 exp where XLA holds the bf16 dot result it is computed from (gpt-125m bf16: 4.6 GiB of
# attention, 1.6 GiB of loss; memory 1.327 -> 1.000 of XLA). tanh (tanh-GELU) is left out: XLA:GPU keeps it (a
# second output of the GELU fusion) in bf16 on both GPUs and in fp32 on the H200, and recomputes it only in
# fp32 on the H100 (likely its lower memory bandwidth tipping the same cost model); a rule keyed on the
# platform cannot tell them apart.
platform_duplicated: dict[str, frozenset[str]] = {"gpu": frozenset({"exp", "logistic"})}

# platform -> producer whose result its XLA folds into the reading ops (no buffer); default: none.
platform_folds: dict[str, Callable[["Graph", "Op", "Tensor"], bool]] = {"gpu": _rev_folded_into_convs_gpu}

# platform (DeviceSpec.kind) -> primitive -> buffers its XLA expansion needs; default: none.
platform_buffer_rules: dict[str, dict[str, BufferRule]] = {
    "cpu": {"select_and_scatter_add": _select_and_scatter_add_cpu, "conv_general_dilated": _conv_relayout_cpu,
            **{name: _reduction_shared_input_cpu for name in sorted(YNN_REDUCTIONS)}},
    "gpu": {"conv_general_dilated": _conv_kernel_relayout_gpu},
}
