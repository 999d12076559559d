"""Roofline compute model: seconds per op on one device, from flops, bytes moved and achievable efficiency.

Consumes: a ``Graph`` and one of its ops, a device (any object with ``peak_flops: Mapping[str, float]`` keyed
"fp32", "tf32", "bf16", "fp16", "fp8", "int8", ``memory_bandwidth`` in bytes/s and ``flops_for(dtype)``
returning the peak flop/s for a numpy dtype), and how many ways the op is split (``shards``).
Produces: ``OpCost(flops, bytes_accessed, time, bound)`` per op and ``graph_compute_time`` for a graph.
Refuses: ``shards`` < 1, devices with non-positive peak or bandwidth (ValueError).

Model, per op and per device (an op split k ways does 1/k of the flops and moves 1/k of the bytes)::

    time = max(flops / (peak(dtype) * eff_compute), bytes / (bandwidth * eff_memory)) + overhead

flops come from ``autopar.ir.flops.op_flops`` (exact for dot_general and conv); bytes are what the op moves
through device memory once XLA has fused it (``cost_models.traffic``: a chain of elementwise ops reads its
inputs and writes the results read outside it, not every intermediate; scalar constants are free). A float32
dot or convolution at the default precision runs on TF32 tensor cores where the device has them
(``tensor_core_fp32``; ``Precision.HIGHEST`` or ``jax_default_matmul_precision="highest"`` keeps full fp32).
Efficiencies and overheads are per op class, in one table (``op_classes`` / ``efficiency_rules``) so
calibration can replace them. Matmul-like ops get a size ramp: ``eff = eff_max * t / (t + ramp_s)`` with ``t``
the ideal time at peak, i.e. an extra ``ramp_s`` of fill/drain (tile quantisation, wave tail) that makes small GEMMs reach a small fraction of peak.

Structured ops cost their bodies: scan = length x body, while = one iteration of cond + body (trip count
unknown statically), cond = the costliest branch. XLA fuses chains of elementwise ops into one kernel, so
costing each jaxpr op's inputs and outputs over-counts memory traffic of unfused graphs; the elementwise
overhead is kept small for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Protocol

import numpy as np

from autopar.cost_models.traffic import op_traffic
from autopar.ir.flops import ELEMENTWISE, REDUCTIONS, op_flops

if TYPE_CHECKING:
    from autopar.ir.graph import Graph, Op


class Device(Protocol):
    peak_flops: Mapping[str, float]
    memory_bandwidth: float

    def flops_for(self, dtype: np.dtype) -> float: ...


@dataclass(frozen=True)
class OpCost:
    """Cost of one op on one device: flops and bytes it does there, seconds, and which roof bounds it."""

    flops: float
    bytes_accessed: float
    time: float
    bound: str  # "compute" | "memory"


@dataclass(frozen=True)
class OpClass:
    """Achievable fractions of the roofs for a family of ops.

    compute_efficiency: fraction of peak flop/s, by dtype key ("bf16", "fp32", ...) with a "default";
    memory_efficiency: fraction of memory bandwidth; overhead_s: fixed seconds per op (launch and
    scheduling); ramp_s: size ramp of the compute efficiency (0: none), see the module docstring.
    """

    name: str
    compute_efficiency: Mapping[str, float]
    memory_efficiency: float
    overhead_s: float = 0.0
    ramp_s: float = 0.0

    def compute_eff(self, dtype_key: str) -> float:
        return self.compute_efficiency.get(dtype_key, self.compute_efficiency["default"])


# Sources for the constants (all deliberately round; calibration replaces them):
# - matmul: cuBLAS/cuBLASLt large GEMMs reach ~75-85% of dense tensor-core peak on A100/H100 in bf16/fp16
#   (NVIDIA "Matrix Multiplication Background" guide and cuBLAS perf notes); MLPerf training submissions
#   run whole models at 40-60% MFU, so 0.75 for the GEMMs alone is a conservative middle. FP32 SIMT SGEMM
#   reaches ~90% of its (much lower) peak; TF32 ~70%; FP8 GEMMs ~60-65% of the dense FP8 peak on H100.
#   ramp_s = 3 us: an A100 bf16 1024^3 GEMM (6.9 us at peak) then runs at ~0.52 of peak, a 4096^3 at ~0.74,
#   matching published cuBLAS sweeps. overhead 3 us: kernel launch (~2-4 us without CUDA graphs).
# - elementwise: STREAM-like kernels reach ~80-90% of HBM bandwidth (A100 ~1.7 of 2.0 TB/s); 0.8 as asked.
#   overhead 0.5 us: most elementwise ops are fused by XLA, so only a fraction of a launch per op.
# - reductions: XLA's row/column reduction emitters reach ~60-75% of bandwidth; 0.7.
# - data movement (transpose, gather, scatter, dynamic slices, pad, concatenate, sort): strided or indexed
#   access; XLA transposes through shared-memory tiles at ~50-60%, gathers/scatters lower; 0.5.
# - free: reshape-like ops are bitcasts in XLA and broadcasts are fused into their consumers: no cost.
# - measured (bench/op_timing.py on an H200, jax 0.11.2; each distinct matmul/conv of five bench steps timed
#   alone, weighted by count): bf16 dots reached 0.97 of this table's prediction (591 TFLOP/s), fp32 dots on
#   TF32 0.85 with tf32 at 0.7 (hence 0.6), fp32 convolutions on TF32 0.60 (hence 0.42 for conv tf32).
_MATMUL = OpClass("matmul", {"default": 0.7, "bf16": 0.75, "fp16": 0.75, "tf32": 0.6, "fp32": 0.85,
                             "fp8": 0.6, "int8": 0.6}, memory_efficiency=0.8, overhead_s=3e-6, ramp_s=3e-6)
_CONV = OpClass("conv", {**_MATMUL.compute_efficiency, "tf32": 0.42}, memory_efficiency=0.8, overhead_s=3e-6,
                ramp_s=3e-6)
_ELEMENTWISE = OpClass("elementwise", {"default": 0.5}, memory_efficiency=0.8, overhead_s=0.5e-6)
_REDUCTION = OpClass("reduction", {"default": 0.5}, memory_efficiency=0.7, overhead_s=1e-6)
_MOVEMENT = OpClass("data-movement", {"default": 0.5}, memory_efficiency=0.5, overhead_s=1e-6)
_FREE = OpClass("free", {"default": 1.0}, memory_efficiency=1.0, overhead_s=0.0)
_DEFAULT = OpClass("default", {"default": 0.5}, memory_efficiency=0.6, overhead_s=1e-6)

op_classes: dict[str, OpClass] = {c.name: c for c in (_MATMUL, _CONV, _ELEMENTWISE, _REDUCTION, _MOVEMENT,
                                                      _FREE, _DEFAULT)}

_MOVEMENT_PRIMS = """transpose gather scatter scatter-add scatter_add scatter_mul scatter_min scatter_max
dynamic_slice dynamic_update_slice slice pad concatenate sort rev select_and_scatter_add
select_and_gather_add reduce_window_sum reduce_window_max copy copy_p iota""".split()
_FREE_PRIMS = """reshape squeeze expand_dims broadcast_in_dim stop_gradient bitcast_convert_type
optimization_barrier""".split()

efficiency_rules: dict[str, OpClass] = {
    "dot_general": _MATMUL,
    "conv_general_dilated": _CONV,
    "convert_element_type": _ELEMENTWISE,
    **{p: _ELEMENTWISE for p in ELEMENTWISE},
    **{p: _REDUCTION for p in REDUCTIONS},
    **{p: _MOVEMENT for p in _MOVEMENT_PRIMS},
    **{p: _FREE for p in _FREE_PRIMS},
}
DEFAULT_CLASS = _DEFAULT

_DTYPE_KEYS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "int8": "int8", "uint8": "int8",
               "float64": "fp64"}


def dtype_key(dtype: np.dtype) -> str:
    """The ``peak_flops`` key of a numpy dtype ("bf16", "fp8", ...; its name when there is none)."""
    name = np.dtype(dtype).name
    return "fp8" if name.startswith("float8") else _DTYPE_KEYS.get(name, name)


def _op_dtype(g: "Graph", op: "Op") -> np.dtype:
    """The dtype the op computes in: its first floating input for matmul-like ops, else its first output."""
    if op.primitive in ("dot_general", "conv_general_dilated") and op.inputs:
        return g.tensors[op.inputs[0]].dtype
    if op.outputs:
        return g.tensors[op.outputs[0]].dtype
    return g.tensors[op.inputs[0]].dtype if op.inputs else np.dtype("float32")


def _op_bytes(g: "Graph", op: "Op") -> float:
    total = 0
    for t in (*op.inputs, *op.outputs):
        tensor = g.tensors[t]
        if tensor.value is not None and tensor.size <= 1:
            continue  # scalar literals and constants are folded into the kernel
        total += tensor.nbytes
    return float(total)


def _check_device(device: Device) -> None:
    bw = getattr(device, "memory_bandwidth", None)
    if bw is None or not bw > 0:
        raise ValueError(f"device.memory_bandwidth: must be bytes/s > 0, got {bw!r}")


# Precisions that keep a float32 matmul in full fp32 (no TF32 tensor cores): Precision.HIGHEST on the op, or
# jax_default_matmul_precision set to one of these when the op says nothing.
_FULL_FP32 = frozenset({"highest", "float32", "precision.highest", "f32_f32_f32"})


def tensor_core_fp32(g: "Graph", op: "Op") -> bool:
    """Whether a float32 dot/conv may run on TF32 tensor cores: XLA's DEFAULT precision does on NVIDIA GPUs
    since Ampere (an H200 step of GPT-125M in fp32 ran at 129 TFLOP/s, twice the fp32 peak), HIGHEST does not."""
    if op.primitive not in ("dot_general", "conv_general_dilated"):
        return False
    prec = op.params.get("precision")
    if prec is None:
        default = g.annotations.get("default_matmul_precision")
        return default is None or default not in _FULL_FP32
    parts = prec if isinstance(prec, (tuple, list)) else (prec,)
    return not any(str(p).lower() in _FULL_FP32 for p in parts)


def _peak(device: Device, dtype: np.dtype) -> float:
    """Peak flop/s for ``dtype``; dtypes the device has no entry for (int32, bool) use its fp32 peak."""
    try:
        peak = float(device.flops_for(dtype))
    except (KeyError, ValueError, TypeError):
        peak = float(device.peak_flops.get("fp32", 0.0))
    if not peak > 0:
        raise ValueError(f"device.flops_for({dtype}): peak flop/s must be > 0, got {peak!r}")
    return peak


def _structured_cost(g: "Graph", op: "Op", device: Device, shards: int,
                     rules: Mapping[str, OpClass]) -> OpCost:
    bodies = {name: [op_cost(sub, o, device, shards, rules) for o in sub.ops]
              for name, sub in op.subgraphs.items()}

    def total(costs: list[OpCost]) -> tuple[float, float, float, float]:
        compute_t = sum(c.time for c in costs if c.bound == "compute")
        return (sum(c.flops for c in costs), sum(c.bytes_accessed for c in costs),
                sum(c.time for c in costs), compute_t)

    if op.primitive == "cond":
        flops, nbytes, time, compute_t = max((total(c) for c in bodies.values()), key=lambda x: x[2],
                                             default=(0.0, 0.0, 0.0, 0.0))
    else:
        flops, nbytes, time, compute_t = map(sum, zip(*(total(c) for c in bodies.values())))
        if op.primitive == "scan":
            length = float(op.params["length"])
            flops, nbytes, time, compute_t = (length * flops, length * nbytes, length * time,
                                              length * compute_t)
    bound = "compute" if compute_t >= time - compute_t and time > 0 else "memory"
    return OpCost(float(flops), float(nbytes), float(time), bound)


def op_cost(graph: "Graph", op: "Op", device: Device, shards: int = 1,
            efficiency: OpClass | Mapping[str, OpClass] | None = None) -> OpCost:
    """Roofline cost of ``op`` on ``device`` when it is split ``shards`` ways.

    ``efficiency``: None uses ``efficiency_rules``; a mapping replaces that table (missing primitives get
    ``DEFAULT_CLASS``); an ``OpClass`` is used for this op as is.
    """
    if not isinstance(shards, (int, np.integer)) or shards < 1:
        raise ValueError(f"shards: must be an int >= 1 (ways the op is split), got {shards!r}")
    _check_device(device)
    rules: Mapping[str, OpClass] = efficiency if isinstance(efficiency, Mapping) else efficiency_rules
    if op.subgraphs and not isinstance(efficiency, OpClass):
        return _structured_cost(graph, op, device, int(shards), rules)
    cls = efficiency if isinstance(efficiency, OpClass) else rules.get(op.primitive, DEFAULT_CLASS)

    flops = op_flops(graph, op) / shards
    traffic = op_traffic(graph, op)
    nbytes = (_op_bytes(graph, op) if traffic is None else traffic) / shards
    if cls.name == "free" or (flops == 0 and nbytes == 0):
        return OpCost(flops, nbytes, 0.0, "memory")
    dtype = _op_dtype(graph, op)
    tf32 = tensor_core_fp32(graph, op) and dtype_key(dtype) == "fp32" and device.peak_flops.get("tf32", 0) > 0
    peak = float(device.peak_flops["tf32"]) if tf32 else _peak(device, dtype)
    ideal = flops / peak if flops > 0 else 0.0
    eff = cls.compute_eff("tf32" if tf32 else dtype_key(dtype))
    if cls.ramp_s > 0 and ideal > 0:
        eff *= ideal / (ideal + cls.ramp_s)
    compute_t = ideal / eff if ideal > 0 else 0.0
    memory_t = nbytes / (device.memory_bandwidth * cls.memory_efficiency)
    bound = "compute" if compute_t >= memory_t else "memory"
    return OpCost(flops, nbytes, max(compute_t, memory_t) + cls.overhead_s, bound)


def graph_compute_time(graph: "Graph", device: Device,
                       efficiency: Mapping[str, OpClass] | None = None) -> float:
    """Seconds to run every op of ``graph`` unsharded on ``device``, one after another."""
    return float(sum(op_cost(graph, op, device, 1, efficiency).time for op in graph.ops))
