"""Hardware catalog: what one accelerator can compute and hold.

Consumes: nothing (static datasheet numbers) or a dtype (``DeviceSpec.flops_for``).
Produces: ``DeviceSpec`` records and the ``DEVICES`` catalog, looked up with ``device(name)``.
Refuses: unknown device names (KeyError listing the catalog), negative or unknown-dtype-class peak numbers.

All peaks are *dense* (no 2:4 sparsity). Datasheets quoting "with sparsity" are halved here.
Memory sizes use the unit the vendor uses: NVIDIA's "80GB" parts carry 80 GiB of HBM (nvidia-smi reports
81920 MiB), Google quotes GiB directly; H200's "141GB" is taken as 141e9 bytes.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = ["DTYPE_CLASSES", "DEVICES", "DeviceSpec", "device", "dtype_class"]

DTYPE_CLASSES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")
_KINDS = ("gpu", "tpu", "cpu")

_GiB = 1024**3
T = 1e12
G = 1e9

# dtype name -> class; anything not listed falls to _dtype_class_default (by numpy kind).
_DTYPE_CLASS_RULES: dict[str, str] = {
    "float32": "fp32",
    "float64": "fp32",    # no fp64 entry in the catalog: planning with fp32 peaks is optimistic, documented
    "complex64": "fp32",
    "complex128": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
}

# Where a device lacks a class, try these in order (the first the device has wins).
_FALLBACKS: dict[str, tuple[str, ...]] = {
    "fp8": ("bf16", "fp16", "fp32"),
    "int8": ("fp32", "bf16"),
    "fp16": ("bf16", "fp32"),       # TPUs have no fp16 MXU path; XLA computes it as bf16
    "bf16": ("fp32",),              # V100: no bf16 tensor cores, XLA runs bf16 dots on CUDA cores
    "tf32": ("fp32",),
    # TPUs publish no fp32 peak: XLA's DEFAULT precision lowers fp32 matmuls to single-pass bf16 on the MXU.
    "fp32": ("bf16",),
}


def _dtype_class_default(dt: np.dtype) -> str:
    if dt.name.startswith("float8"):
        return "fp8"
    if dt.kind in "iub":
        return "int8"
    return "fp32"


def dtype_class(dtype: Any) -> str:
    """The peak-flops class ("fp32", "bf16", ...) of a numpy/jax dtype (float8_* -> "fp8", ints -> "int8")."""
    dt = np.dtype(dtype)
    return _DTYPE_CLASS_RULES.get(dt.name) or _dtype_class_default(dt)


@dataclass(frozen=True)
class DeviceSpec:
    """One accelerator: dense peak flops per dtype class, HBM size (bytes) and bandwidth (bytes/s)."""

    name: str
    kind: str                          # "gpu" | "tpu" | "cpu"
    peak_flops: Mapping[str, float]    # dtype class -> flop/s (dense)
    memory_bytes: int
    memory_bandwidth: float            # bytes/s
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"DeviceSpec {self.name!r}: kind must be one of {_KINDS}, got {self.kind!r}")
        flops = dict(self.peak_flops)
        if not flops:
            raise ValueError(f"DeviceSpec {self.name!r}: peak_flops is empty; give at least 'fp32' or 'bf16'")
        for k, v in flops.items():
            if k not in DTYPE_CLASSES:
                raise ValueError(f"DeviceSpec {self.name!r}: peak_flops key {k!r} is not one of {DTYPE_CLASSES}")
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ValueError(f"DeviceSpec {self.name!r}: peak_flops[{k!r}] must be a positive number, got {v!r}")
        if "fp32" not in flops and "bf16" not in flops:
            raise ValueError(f"DeviceSpec {self.name!r}: peak_flops needs an 'fp32' or 'bf16' entry")
        if isinstance(self.memory_bytes, bool) or not isinstance(self.memory_bytes, numbers.Integral) \
                or self.memory_bytes <= 0:
            raise ValueError(f"DeviceSpec {self.name!r}: memory_bytes must be a positive int, "
                             f"got {self.memory_bytes!r}")
        if not self.memory_bandwidth > 0:
            raise ValueError(f"DeviceSpec {self.name!r}: memory_bandwidth must be positive, "
                             f"got {self.memory_bandwidth!r}")
        object.__setattr__(self, "peak_flops", {k: float(v) for k, v in flops.items()})
        object.__setattr__(self, "memory_bytes", int(self.memory_bytes))
        object.__setattr__(self, "memory_bandwidth", float(self.memory_bandwidth))

    def __hash__(self) -> int:
        return hash((self.name, self.kind, tuple(sorted(self.peak_flops.items())),
                     self.memory_bytes, self.memory_bandwidth))

    def flops_for(self, dtype: Any, *, matmul: bool = False) -> float:
        """Peak flop/s for operations in ``dtype``.

        float32 uses the fp32 peak; ``matmul=True`` lets a float32 matmul use TF32 tensor cores where the
        device has them (what XLA's default precision does on NVIDIA GPUs; ``compute.tensor_core_fp32`` decides
        it per op). Missing classes fall back
        along ``_FALLBACKS`` (fp8 -> bf16, int -> int8 -> fp32, ...).
        """
        cls = dtype_class(dtype)
        if cls == "fp32" and matmul and "tf32" in self.peak_flops:
            return self.peak_flops["tf32"]
        for c in (cls, *_FALLBACKS.get(cls, ())):
            if c in self.peak_flops:
                return self.peak_flops[c]
        raise KeyError(f"DeviceSpec {self.name!r} has no peak for {cls!r} nor its fallbacks")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "peak_flops": dict(self.peak_flops),
                "memory_bytes": self.memory_bytes, "memory_bandwidth": self.memory_bandwidth,
                "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeviceSpec:
        return cls(name=str(d["name"]), kind=str(d["kind"]), peak_flops=dict(d["peak_flops"]),
                   memory_bytes=int(d["memory_bytes"]), memory_bandwidth=float(d["memory_bandwidth"]),
                   source=str(d.get("source", "")))

    def describe(self) -> str:
        peaks = ", ".join(f"{k} {v / T:.4g} TFLOP/s" for k, v in self.peak_flops.items())
        return (f"{self.name} ({self.kind}): {peaks}; {self.memory_bytes / _GiB:.4g} GiB memory at "
                f"{self.memory_bandwidth / G:.4g} GB/s")


_NV_V100 = "NVIDIA Tesla V100 datasheet (2018), SXM2"
_NV_A100 = "NVIDIA A100 Tensor Core GPU datasheet (2021), SXM4, dense"
_NV_H100 = "NVIDIA H100 Tensor Core GPU datasheet (2023), SXM5, sparse figures halved"
_NV_H200 = "NVIDIA H200 Tensor Core GPU datasheet (2024), SXM"
_GC_TPU = "Google Cloud TPU system architecture pages (cloud.google.com/tpu/docs/{v4,v5e,v5p})"

_CATALOG = (
    # V100 SXM2: FP32 15.7 TFLOPS, Tensor (fp16 in, fp32 acc) 125 TFLOPS; 16 GB HBM2, 900 GB/s.
    DeviceSpec("V100-SXM2-16GB", "gpu", {"fp32": 15.7 * T, "fp16": 125 * T},
               16 * _GiB, 900 * G, _NV_V100),
    # A100 SXM4: FP32 19.5, TF32 156, BF16/FP16 312, INT8 624 TOPS; 40GB HBM2 1,555 GB/s.
    DeviceSpec("A100-SXM4-40GB", "gpu",
               {"fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T, "fp16": 312 * T, "int8": 624 * T},
               40 * _GiB, 1555 * G, _NV_A100),
    # A100 SXM4 80GB: same compute; 80GB HBM2e 2,039 GB/s.
    DeviceSpec("A100-SXM4-80GB", "gpu",
               {"fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T, "fp16": 312 * T, "int8": 624 * T},
               80 * _GiB, 2039 * G, _NV_A100),
    # H100 SXM5: FP32 67; TF32 989 / BF16, FP16 1,979 / FP8, INT8 3,958 "with sparsity" -> halved for dense.
    # 80GB HBM3, 3.35 TB/s.
    DeviceSpec("H100-SXM5-80GB", "gpu",
               {"fp32": 67 * T, "tf32": 494.5 * T, "bf16": 989.5 * T, "fp16": 989.5 * T,
                "fp8": 1979 * T, "int8": 1979 * T},
               80 * _GiB, 3350 * G, _NV_H100),
    # H200 SXM: H100 compute (same figures), 141GB HBM3e at 4.8 TB/s.
    DeviceSpec("H200-SXM-141GB", "gpu",
               {"fp32": 67 * T, "tf32": 494.5 * T, "bf16": 989.5 * T, "fp16": 989.5 * T,
                "fp8": 1979 * T, "int8": 1979 * T},
               141 * 10**9, 4800 * G, _NV_H200),
    # TPU v4: 275 TFLOPS (bf16 or int8) per chip; HBM2 32 GiB, 1200 GBps.
    DeviceSpec("TPU-v4", "tpu", {"bf16": 275 * T, "int8": 275 * T}, 32 * _GiB, 1200 * G, _GC_TPU),
    # TPU v5e: 197 TFLOPS bf16, 394 TOPS int8; HBM2 16 GiB, 819 GBps.
    DeviceSpec("TPU-v5e", "tpu", {"bf16": 197 * T, "int8": 394 * T}, 16 * _GiB, 819 * G, _GC_TPU),
    # TPU v5p: 459 TFLOPS bf16, 918 TOPS int8; HBM2e 95 GiB, 2765 GBps.
    DeviceSpec("TPU-v5p", "tpu", {"bf16": 459 * T, "int8": 918 * T}, 95 * _GiB, 2765 * G, _GC_TPU),
    # Test device for fake CPU meshes: a modest, honest number for one core of a laptop/CI host
    # (a few AVX2 FMA lanes at ~3 GHz sustain tens of GFLOP/s; one thread's DRAM stream ~20 GB/s).
    DeviceSpec("cpu", "cpu", {"fp32": 50 * G}, 8 * _GiB, 20 * G, "autopar test device (rough single-core figures)"),
)

DEVICES: dict[str, DeviceSpec] = {d.name: d for d in _CATALOG}


def device(name: str) -> DeviceSpec:
    """Catalog lookup; the KeyError lists the known names."""
    try:
        return DEVICES[name]
    except KeyError:
        raise KeyError(f"unknown device {name!r}; known devices: {', '.join(DEVICES)}") from None
