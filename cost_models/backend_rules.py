"""What each backend's XLA adds to or removes from the liveness walk of ``cost_models.memory``.

Consumes: a graph, an op and the per-device size of its tensors. Produces: the platform tables that
``memory.estimate_memory`` and ``memory.materialised`` read, keyed by ``DeviceSpec.kind``: extra buffers per
primitive (``platform_buffer_rules``), producers a backend recomputes in its readers
(``platform_duplicated``) or folds into them (``platform_folds``), reshards made early
(``platform_early_slices``) and which temporaries share the outputs' allocations (``platform_placements``).
Each rule is measured against one XLA backend's buffer assignment (the docstrings say which, and how).
Imported through ``cost_models.memory`` (which re-exports the tables), whose walk the rules read.

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
The expansions are placed at the op, in program order, except where XLA:CPU's breadth-first scheduler runs them
as soon as what they read exists (``_made_at``): a backward convolution's relayout copy of a forward activation
right after the activation, a copy of a program argument at the program's start, and, when the max-pool
gradient's operand is an argument (the backward program of a pipelined stage), the select half of its
expansion there too. XLA:CPU also keeps LayerNorm's two activation-sized broadcasts (scale, rsqrt) until the
backward, and places temporaries into the program outputs' allocations while those are free
(``platform_placements``; ``cost_models.buffer_assignment``). Known gaps (XLA:CPU, jax 0.10.2): XLA CSEs repeated jaxpr
subexpressions that this model counts twice; XLA:CPU fuses a dot into the max reduction of
a softmax that reads it (the fusion's root is ``x - max``, so the logits get no buffer of their own) and lets an
elementwise fusion write into a dying operand's buffer of its size (the model does that only for outputs):
a softmax cross-entropy's forward + gradient is 1.5x XLA's temporaries (tests/test_memory.py).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Callable

import numpy as np

from autopar.cost_models.buffer_assignment import Allocation, place_in_outputs
from autopar.cost_models.memory import FUSIBLE, TensorBytes, _output_written, _structure

if TYPE_CHECKING:
    from autopar.ir.graph import Graph, Op, Tensor


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
    result, the buffer the walk holds). Everything scales with the operand's per-device share.

    The select half reads only the operand, and XLA:CPU's breadth-first scheduler (``_made_at``) runs it as
    soon as the operand exists. When the operand is an argument (the backward program of a pipelined stage
    takes the pooled activation the forward program saved) that is the program's start: the select half's
    scratch is charged there and the coordinates and target from there to the scatter (wresnet_tiny's
    two-stage pipeline on 8 devices: iotas, padded operand and zeroed target among the first instructions,
    next to the relayout copies of the other arguments; stage 0's backward 0.84 -> 0.89 of XLA's peak). In one
    program XLA runs it in the forward pass, right after the pooled activation, and holds the coordinates and
    target (70 KiB at 4 images) to the backward; the walk keeps all of it at the op there: charged from the
    forward, the one-program Wide-ResNet plans read 1.11-1.16 of XLA's peak (an over-estimate elsewhere in
    those programs that it would expose, not found)."""
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
    start = _select_made_at(operand, op)
    if start == op.id:
        return [(held + max(select, s * b), op.id, op.id)]             # then the source copy
    return [(held, start, op.id), (select, start, start), (s * b, op.id, op.id)]


def _select_made_at(operand: "Tensor", op: "Op") -> int:
    """Where the walk charges the select half of an expanded ``select_and_scatter_add``: at the program's start
    when the operand is an argument (``_made_at``), else at the op (see the docstring above)."""
    return _made_at(operand, op) if operand.producer is None else op.id


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
        out.append((size(lhs), _copy_made_at(lhs, rhs, op, size), op.id))
    kernel_rev = rhs.producer is not None and g.ops[rhs.producer].primitive == "rev"
    if tuple(dn.rhs_spec) != (n - 1, n - 2, *range(n - 2)) and not kernel_rev:
        out.append((size(rhs), _copy_made_at(rhs, lhs, op, size), op.id))
    res = g.tensors[op.outputs[0]]
    if tuple(dn.out_spec) != (0, n - 1, *spatial):
        # the transposed result is written after the convolution, while the canonical one is live: the walk's
        # buffer for the output stands for one of them when it holds one (the operand copies are dead by then)
        copies = sum(b for b, first, _ in out if first == op.id)
        extra = size(res) if not _held_by_walk(g, res) else max(size(res) - copies, 0.0)
        out.append((extra, op.id, op.id))
    return out


def _made_at(t: "Tensor", op: "Op") -> int:
    """Where XLA's scheduler makes a copy that reads only ``t``: right after ``t``'s producer, at the program's
    start for a program input. XLA:CPU schedules breadth first (``BFSMemoryScheduler``, its
    concurrency-optimized default): an instruction runs once its operands are ready, so a backward
    convolution's relayout copy of a forward activation is made in the forward pass and held until the
    backward (wresnet_tiny at 2 to 16 images on one device), and in the backward program of a pipelined stage,
    which takes the activations the forward program saved as arguments, the copies of those arguments (and of
    the images, for the stem's weight gradient) are all made at its start (wresnet_tiny's two-stage pipeline on
    8 devices: eight copies, 88 KiB, from the program's first instructions)."""
    return t.producer if t.producer is not None else 0


def _copy_made_at(t: "Tensor", other: "Tensor", op: "Op", size: TensorBytes) -> int:
    """``_made_at`` for a convolution operand's relayout copy, except for a program input held at a larger
    share than the convolution's other operand: the plan reshards it to a slice before the convolution (a
    replicated batch read by a batch-split weight gradient), and the copy is of that slice, made at the
    convolution (charged there, whole: a replicated batch of 16 charged from the start on 8 devices read 1.25
    of XLA's peak)."""
    if t.producer is None and _share(t, size) > _share(other, size):
        return op.id
    return _made_at(t, op)


_SHARED_READS: "weakref.WeakKeyDictionary[Graph, dict[int, list[tuple[int, int]]]]" = weakref.WeakKeyDictionary()


def _reduction_cut(g: "Graph", op: "Op", mat: dict[int, bool]) -> tuple[set[int], list["Op"]]:
    """The fused values a reduction reads that XLA:CPU's reduction fusion takes as buffers: walking back from
    the reduction through the values fused into it, the first one that some other op also reads. Also returns
    the ops the walk went through (the reduction's fused producers)."""
    cut: set[int] = set()
    seen: set[int] = set()
    fused: list["Op"] = []
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
            fused.append(g.ops[t.producer])
            stack.extend(g.ops[t.producer].inputs)     # type: ignore[index]
    return cut, fused


def _implicit_broadcasts(g: "Graph", op: "Op") -> list[int]:
    """The operands an elementwise op broadcasts to its result's shape (jax's elementwise primitives take size-1
    dimensions; the lowering broadcasts those operands explicitly): tensors with more than one element."""
    if not op.outputs:
        return []
    out = g.tensors[op.outputs[0]]
    return [i for i in dict.fromkeys(op.inputs)
            if g.tensors[i].shape != out.shape and g.tensors[i].size > 1 and g.tensors[i].dtype == out.dtype
            and len(g.tensors[i].shape) == len(out.shape)]


def _broadcast_readers(g: "Graph", src: int, shape: tuple[int, ...]) -> list[int]:
    """The elementwise ops that read ``src`` implicitly broadcast to ``shape``: after lowering they read one
    broadcast instruction (XLA's CSE merges the identical broadcasts)."""
    return sorted({c for c in g.tensors[src].consumers if g.ops[c].primitive in FUSIBLE and g.ops[c].outputs
                   and g.tensors[g.ops[c].outputs[0]].shape == shape and src in _implicit_broadcasts(g, g.ops[c])})


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


def _shared_reductions(g: "Graph") -> dict[int, list[tuple[int, int, int]]]:
    """first reduction reading a shared fused value -> [(a tensor of that value's size, first op, the last
    reduction reading it)]."""
    hit = _SHARED_READS.get(g)
    if hit is None:
        mat = _structure(g)[0]
        readers: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        like: dict[tuple[int, tuple[int, ...]], tuple[int, int]] = {}
        for op in g.ops:
            if op.primitive in YNN_REDUCTIONS:
                cut, fused = _reduction_cut(g, op, mat)
                for tid in cut:
                    t = g.tensors[tid]
                    readers.setdefault((tid, ()), []).append(op.id)
                    like[(tid, ())] = (tid, t.producer or 0)
                for p in fused:
                    shape = g.tensors[p.outputs[0]].shape
                    for src in _implicit_broadcasts(g, p):
                        others = _broadcast_readers(g, src, shape)
                        if len(others) > 1:
                            readers.setdefault((src, shape), []).append(op.id)
                            like[(src, shape)] = (p.outputs[0], others[0])
        hit = {}
        for key, ops in readers.items():
            tid, first = like[key]
            hit.setdefault(min(ops), []).append((tid, first, max(ops)))
        _SHARED_READS[g] = hit
    return hit


def _reduction_shared_input_cpu(g: "Graph", op: "Op", size: TensorBytes) -> list[Buffer]:
    """XLA:CPU wraps a reduction and the elementwise ops (broadcasts included) feeding it in a YNNPACK fusion
    (``__ynn_fusion``), but never duplicates a fused value into it that another op also reads: such a value is
    computed once by a loop fusion into a buffer of its own, which lives from its producer to the last
    reduction that reads it (loop-fusion readers still recompute it from its sources). LayerNorm / BatchNorm
    make several per norm: ``x - mean`` (read by the variance and by the normalised value), the normalised
    value, the output gradient times the scale, ... — and the backward reductions read some of them, so they
    live from the forward pass. The buffer is charged once, at the first reduction that reads the value.

    The same holds for a broadcast the graph does not show as a value: an elementwise op that reads an operand
    with size-1 dimensions (jax's ``mul`` of an ``[n, 1]`` and a ``[1, d]`` value) is lowered with an explicit
    broadcast of it to the result's shape, and XLA's CSE merges the identical broadcasts of one value made by
    several ops into one instruction; when two or more ops read it and one is fused into a reduction, that
    broadcast is a buffer of the result's size, from its first reader to the last reduction reading it. A
    LayerNorm ``(x - mean) * (rsqrt * scale)`` makes two, read again by its backward reductions: ``rsqrt``
    broadcast over the features (the scale gradient's) and ``scale`` over the rows (the normalised value's
    gradient's) — two activations per norm from the forward pass to its backward."""
    return [(size(g.tensors[tid]), first, last) for tid, first, last in _shared_reductions(g).get(op.id, ())]


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


# ---- buffer assignment: which temporaries share the program outputs' allocations -------------------------
Placement = Callable[["Graph", list[Buffer], TensorBytes], list[Buffer]]


def _all_in_temp(g: "Graph", buffers: list[Buffer], size: TensorBytes) -> list[Buffer]:
    return buffers


def _output_allocations(g: "Graph", size: TensorBytes) -> list[Allocation]:
    """Each program output's allocation: its bytes and the ops from which it holds a value — from the first
    op whose result is written into it (a gradient an elementwise update writes into the new weight,
    ``_writes_into_output``; else the output's producer) to the program's end. Outputs that reuse a donated
    argument's buffer, and outputs that are inputs, are held all through."""
    end = len(g.ops)
    made = _made_from(g)
    start: dict[int, int] = {}
    for t in g.output_tensors():
        if t.producer is not None:
            start.setdefault(t.id, _written_at(g, g.ops[t.producer], made))
    for t in g.tensors:
        if t.producer is not None and not t.is_output and t.consumers:
            o = _output_written(g, t)
            if o is not None and o in start:
                start[o] = min(start[o], _written_at(g, g.ops[t.producer], made))
    donated: dict[float, int] = {}
    for t in g.input_tensors():
        if t.donated:
            donated[size(t)] = donated.get(size(t), 0) + 1
    out: list[Allocation] = []
    for tid, first in start.items():
        b = size(g.tensors[tid])
        if donated.get(b, 0) > 0:
            donated[b] -= 1
            first = 0
        out.append((b, [(first, end)]))
    return out


def _made_from(g: "Graph") -> dict[int, int]:
    """tensor id -> the op after which XLA's scheduler can make it: inputs and values computed from inputs
    alone (a reversed or transposed kernel, a broadcast scale) at the program's start (0), any other value at
    its producer."""
    made: dict[int, int] = {t.id: 0 for t in g.input_tensors()}
    for op in g.ops:
        at = 0 if all(made.get(i, op.id) == 0 for i in op.inputs) else op.id
        for o in op.outputs:
            made[o] = at
    return made


def _ready(g: "Graph", op: "Op", made: dict[int, int]) -> int:
    """The earliest op after which ``op``'s operands all exist: XLA's scheduler need not keep program order
    (a convolution's input gradient, which reads the incoming gradient and the kernel, ran before its weight
    gradient, which program order puts first: tests/test_memory.py)."""
    return min(op.id, max((made.get(i, op.id) for i in op.inputs), default=0))


def _written_at(g: "Graph", op: "Op", made: dict[int, int]) -> int:
    """When ``op``'s result is written: an elementwise op runs in the fusion of its reader (at its place in
    program order: Adam's ``b1 * mu`` is computed in the update, not at the start though it reads only
    inputs); any other op as soon as its operands exist (``_ready``)."""
    return op.id if op.primitive in FUSIBLE else _ready(g, op, made)


def _reuse_output_allocations(g: "Graph", buffers: list[Buffer], size: TensorBytes) -> list[Buffer]:
    """XLA's buffer assignment puts temporaries into output allocations that are free at the time, largest
    temporary first (``cost_models.buffer_assignment``); only the rest are temporaries in
    ``memory_analysis()``. Measured on XLA:CPU (jax 0.10.2): wresnet_tiny at two images holds 24 activations
    and relayout copies in its new weights' and Adam moments' allocations (``maybe-live-out`` allocations of
    the buffer assignment)."""
    return place_in_outputs(buffers, _output_allocations(g, size))


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

# platforms whose XLA runs a resharding that only slices (replicated to split: a dynamic-slice, no collective)
# right after the value is made and keeps the slice, not the value, for later readers
# (``planner.estimate.reshard_copies``); elsewhere the copy is made at its first reader. Measured on XLA:CPU.
platform_early_slices: frozenset[str] = frozenset({"cpu"})

# platform -> how its buffer assignment decides which temporaries count; default: every one does. Only XLA:CPU's
# is measured (the XLA:GPU records above match XLA's peak without it).
platform_placements: dict[str, Placement] = {"cpu": _reuse_output_allocations}

# platform (DeviceSpec.kind) -> primitive -> buffers its XLA expansion needs; default: none.
platform_buffer_rules: dict[str, dict[str, BufferRule]] = {
    "cpu": {"select_and_scatter_add": _select_and_scatter_add_cpu, "conv_general_dilated": _conv_relayout_cpu,
            **{name: _reduction_shared_input_cpu for name in sorted(YNN_REDUCTIONS)}},
    "gpu": {"conv_general_dilated": _conv_kernel_relayout_gpu},
}
