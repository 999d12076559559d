"""Roofline compute model, and the flop rules it uses checked against XLA's cost analysis."""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Mapping  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax import lax  # noqa: E402

import autopar  # noqa: E402
from autopar.cost_models.compute import (  # noqa: E402
    OpClass, OpCost, dtype_key, efficiency_rules, graph_compute_time, op_cost,
)

S = jax.ShapeDtypeStruct


@dataclass(frozen=True)
class FakeDevice:
    """Stand-in for hardware.DeviceSpec: A100-like roofs (312 TF bf16 dense, 19.5 TF fp32, 2.0 TB/s)."""

    peak_flops: Mapping[str, float] = field(default_factory=lambda: {
        "fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12, "fp8": 312e12, "int8": 624e12})
    memory_bandwidth: float = 2.0e12

    def flops_for(self, dtype: Any) -> float:
        return self.peak_flops[dtype_key(np.dtype(dtype))]


DEV = FakeDevice()
NO_RAMP = OpClass("test", {"default": 0.5}, memory_efficiency=0.8, overhead_s=0.0)


def only(graph: autopar.Graph, prim: str) -> Any:
    ops = [op for op in graph.ops if op.primitive == prim]
    assert len(ops) == 1, graph.primitive_counts()
    return ops[0]


@pytest.mark.parametrize("m,k,n", [(128, 256, 64), (1, 1024, 1), (512, 512, 512)])
def test_matmul_flops_and_bytes_exact(m: int, k: int, n: int) -> None:
    g = autopar.trace(lambda a, b: a @ b, S((m, k), jnp.float32), S((k, n), jnp.float32))
    c = op_cost(g, only(g, "dot_general"), DEV, efficiency=NO_RAMP)
    assert c.flops == 2 * m * k * n
    assert c.bytes_accessed == 4 * (m * k + k * n + m * n)
    # float32 at the default precision: TF32 tensor cores (the device has them)
    expected = max(2 * m * k * n / (156e12 * 0.5), c.bytes_accessed / (2.0e12 * 0.8))
    assert c.time == pytest.approx(expected)


def test_fp32_matmul_precision_picks_tf32_or_full_fp32() -> None:
    a = S((2048, 2048), jnp.float32)
    flops = 2 * 2048**3
    g = autopar.trace(lambda x, y: x @ y, a, a)
    assert op_cost(g, only(g, "dot_general"), DEV, efficiency=NO_RAMP).time == pytest.approx(flops / (156e12 * 0.5))
    hi = autopar.trace(lambda x, y: jnp.dot(x, y, precision="highest"), a, a)
    assert op_cost(hi, only(hi, "dot_general"), DEV, efficiency=NO_RAMP).time == pytest.approx(flops / (19.5e12 * 0.5))
    with jax.default_matmul_precision("highest"):
        cfg = autopar.trace(lambda x, y: x @ y, a, a)
    assert op_cost(cfg, only(cfg, "dot_general"), DEV, efficiency=NO_RAMP).time == pytest.approx(
        flops / (19.5e12 * 0.5))
    no_tf32 = FakeDevice(peak_flops={"fp32": 15.7e12, "bf16": 15.7e12})     # V100-like: fp32 on CUDA cores
    assert op_cost(g, only(g, "dot_general"), no_tf32, efficiency=NO_RAMP).time == pytest.approx(
        flops / (15.7e12 * 0.5))


def test_big_matmul_is_compute_bound_add_is_memory_bound() -> None:
    g = autopar.trace(lambda a, b: a @ b, S((4096, 4096), jnp.bfloat16), S((4096, 4096), jnp.bfloat16))
    mm = op_cost(g, only(g, "dot_general"), DEV)
    assert mm.bound == "compute"
    # ~0.75 of peak at this size (ramp nearly saturated), plus the launch overhead
    ideal = 2 * 4096**3 / 312e12
    assert ideal / 0.75 < mm.time < ideal / 0.70 + 5e-6

    g2 = autopar.trace(lambda a, b: a + b, S((4096, 4096), jnp.bfloat16), S((4096, 4096), jnp.bfloat16))
    add = op_cost(g2, only(g2, "add"), DEV)
    assert add.bound == "memory"
    assert add.flops == 4096 * 4096
    assert add.bytes_accessed == 3 * 4096 * 4096 * 2
    cls = efficiency_rules["add"]
    assert add.time == pytest.approx(add.bytes_accessed / (2.0e12 * cls.memory_efficiency) + cls.overhead_s)


def test_small_matmul_reaches_lower_efficiency() -> None:
    def achieved(n: int) -> float:
        g = autopar.trace(lambda a, b: a @ b, S((n, n), jnp.bfloat16), S((n, n), jnp.bfloat16))
        c = op_cost(g, only(g, "dot_general"), DEV)
        return c.flops / c.time / 312e12

    assert achieved(256) < achieved(1024) < achieved(8192) < 0.75
    assert achieved(8192) > 0.7


@pytest.mark.parametrize("k", [2, 4, 8])
def test_shards_divide_work(k: int) -> None:
    g = autopar.trace(lambda a, b: a @ b, S((2048, 2048), jnp.float32), S((2048, 2048), jnp.float32))
    op = only(g, "dot_general")
    whole = op_cost(g, op, DEV, efficiency=NO_RAMP)
    part = op_cost(g, op, DEV, shards=k, efficiency=NO_RAMP)
    assert part.flops == pytest.approx(whole.flops / k)
    assert part.bytes_accessed == pytest.approx(whole.bytes_accessed / k)
    assert part.time == pytest.approx(whole.time / k)
    with pytest.raises(ValueError, match="shards"):
        op_cost(g, op, DEV, shards=0)


def test_scan_counts_length_times_body() -> None:
    def f(w: jax.Array, x: jax.Array) -> jax.Array:
        def body(c: jax.Array, _: Any) -> tuple[jax.Array, None]:
            return jnp.tanh(c @ w), None
        return lax.scan(body, x, None, length=7)[0]

    g = autopar.trace(f, S((256, 256), jnp.float32), S((64, 256), jnp.float32))
    scan = only(g, "scan")
    body = scan.subgraphs["body"]
    c = op_cost(g, scan, DEV)
    body_costs = [op_cost(body, o, DEV) for o in body.ops]
    assert c.flops == pytest.approx(7 * (2 * 64 * 256 * 256 + 64 * 256))
    assert c.time == pytest.approx(7 * sum(b.time for b in body_costs))
    assert c.bytes_accessed == pytest.approx(7 * sum(b.bytes_accessed for b in body_costs))
    half = op_cost(g, scan, DEV, shards=2)
    assert half.flops == pytest.approx(c.flops / 2)
    assert graph_compute_time(g, DEV) == pytest.approx(sum(op_cost(g, o, DEV).time for o in g.ops))
    assert graph_compute_time(g, DEV) >= c.time


def test_cond_takes_costliest_branch() -> None:
    def f(p: jax.Array, a: jax.Array) -> jax.Array:
        return lax.cond(p, lambda x: x @ x, lambda x: x + 1.0, a)

    g = autopar.trace(f, S((), jnp.bool_), S((512, 512), jnp.float32))
    c = op_cost(g, only(g, "cond"), DEV)
    assert c.flops == pytest.approx(2 * 512**3)
    assert c.bound == "compute"


def test_reshape_is_free_and_bad_device_rejected() -> None:
    g = autopar.trace(lambda a: a.reshape(64, 64), S((4096,), jnp.float32))
    c = op_cost(g, only(g, "reshape"), DEV)
    assert c.time == 0.0
    with pytest.raises(ValueError, match="memory_bandwidth"):
        op_cost(g, only(g, "reshape"), FakeDevice(memory_bandwidth=0.0))


def test_op_cost_is_frozen() -> None:
    c = OpCost(1.0, 2.0, 3.0, "compute")
    with pytest.raises(Exception):
        c.time = 0.0  # type: ignore[misc]


# ---- autopar.ir.flops against XLA's HloCostAnalysis ---------------------------------------------------------
def _xla_flops(f: Any, *args: Any) -> float:
    ca = jax.jit(f).lower(*args).compile().cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0]
    return float(ca["flops"])


def _conv(stride: tuple[int, int] = (1, 1), groups: int = 1, dilation: tuple[int, int] = (1, 1),
          padding: Any = "VALID", lhs_dilation: tuple[int, int] = (1, 1)) -> Any:
    return lambda x, w: lax.conv_general_dilated(x, w, stride, padding, lhs_dilation=lhs_dilation,
                                                 rhs_dilation=dilation, feature_group_count=groups)


@pytest.mark.parametrize("f,args", [
    (lambda a, b: a @ b, (S((64, 128), jnp.float32), S((128, 32), jnp.float32))),
    (lambda a, b: jnp.einsum("bij,bjk->bik", a, b), (S((4, 64, 128), jnp.float32), S((4, 128, 32), jnp.float32))),
    (lambda a, b: jnp.einsum("bhqd,bhkd->bhqk", a, b),
     (S((2, 4, 32, 16), jnp.float32), S((2, 4, 48, 16), jnp.float32))),
    (_conv(), (S((2, 16, 32, 32), jnp.float32), S((32, 16, 3, 3), jnp.float32))),
    (_conv(stride=(2, 2)), (S((2, 16, 32, 32), jnp.float32), S((32, 16, 3, 3), jnp.float32))),
    (_conv(stride=(2, 1), groups=4), (S((2, 16, 33, 20), jnp.float32), S((32, 4, 3, 5), jnp.float32))),
    (_conv(groups=16), (S((1, 16, 24, 24), jnp.float32), S((16, 1, 3, 3), jnp.float32))),  # depthwise
    (_conv(dilation=(2, 2)), (S((1, 8, 20, 20), jnp.float32), S((8, 8, 3, 3), jnp.float32))),
    # XLA does not count taps that read padding or lhs-dilation holes
    (_conv(padding="SAME"), (S((2, 16, 17, 20), jnp.float32), S((32, 16, 3, 4), jnp.float32))),
    (_conv(stride=(2, 2), padding="SAME"), (S((2, 16, 17, 20), jnp.float32), S((32, 16, 3, 4), jnp.float32))),
    (_conv(padding=((1, 1), (2, 2)), lhs_dilation=(2, 2)),  # transposed conv (input gradient of a strided one)
     (S((2, 16, 17, 20), jnp.float32), S((32, 16, 3, 4), jnp.float32))),
    (_conv(stride=(2, 1), padding=((0, 0), (3, 1)), lhs_dilation=(2, 3)),
     (S((1, 8, 17, 20), jnp.float32), S((8, 8, 3, 4), jnp.float32))),
], ids=["matmul", "batched", "attention", "conv", "conv-stride", "conv-grouped", "depthwise", "conv-dilated",
        "conv-same", "conv-same-stride", "conv-transposed", "conv-lhs-dilated-strided"])
def test_flops_match_xla_cost_analysis(f: Any, args: Any) -> None:
    g = autopar.trace(f, *args)
    ours = sum(op_cost(g, op, DEV).flops for op in g.ops if op.primitive in ("dot_general",
                                                                             "conv_general_dilated"))
    assert ours == pytest.approx(_xla_flops(f, *args), rel=0.01)


def test_conv_gradient_flops_match_xla() -> None:
    """A strided, padded conv and its gradients (an lhs-dilated conv and a window-dilated conv)."""
    conv = _conv(stride=(2, 2), padding="SAME")
    x, w = S((2, 8, 16, 16), jnp.float32), S((16, 8, 3, 3), jnp.float32)

    def loss(x: jax.Array, w: jax.Array) -> jax.Array:
        return jnp.sum(conv(x, w))

    f = jax.value_and_grad(loss, argnums=(0, 1))  # forward + both gradients: nothing for XLA to drop
    g = autopar.trace(f, x, w)
    ours = sum(op_cost(g, op, DEV).flops for op in g.ops if op.primitive == "conv_general_dilated")
    assert g.primitive_counts()["conv_general_dilated"] == 3
    assert ours == pytest.approx(_xla_flops(f, x, w), rel=0.01)


def test_mfu_of_an_fp32_step_on_tf32_hardware_is_against_the_tf32_peak() -> None:
    """An fp32 step whose matmuls run on TF32 (H100, default precision) is measured against the TF32 peak, so
    its MFU stays below 1 (it read 2.48 for Llama-3-8B on a DGX H100 against the fp32 peak); V100s have no
    TF32 and keep the fp32 peak."""
    import autopar
    from bench.models import MODELS

    step, args = MODELS["gpt_125m"](batch_size=8, abstract=True)
    for preset, peak_class in (("dgx-h100", "tf32"), ("p3.16xlarge", "fp32")):
        cluster = autopar.ClusterSpec.preset(preset, nodes=1)
        est = autopar.plan(step, *args, cluster=cluster, batch_argnums=(1,), method=autopar.DataParallel()).estimate
        peak = cluster.device.peak_flops[peak_class] * cluster.num_devices
        assert 0 < est.mfu < 1
        assert est.mfu == pytest.approx(est.flops / (est.step_time_s * peak), rel=1e-9), preset
