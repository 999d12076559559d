"""Hardware catalog: datasheet numbers, dtype -> peak mapping, lookup errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from autopar.cost_models.hardware import DEVICES, DeviceSpec, device, dtype_class

T = 1e12


def test_catalog_has_required_devices():
    for name in ("V100-SXM2-16GB", "A100-SXM4-40GB", "A100-SXM4-80GB", "H100-SXM5-80GB", "H200-SXM-141GB",
                 "TPU-v4", "TPU-v5e", "TPU-v5p", "cpu"):
        assert device(name).name == name
        assert device(name).source


@pytest.mark.parametrize("name, fp32, bf16, mem_gib, bw", [
    ("A100-SXM4-80GB", 19.5 * T, 312 * T, 80, 2039e9),
    ("A100-SXM4-40GB", 19.5 * T, 312 * T, 40, 1555e9),
    ("H100-SXM5-80GB", 67 * T, 989.5 * T, 80, 3350e9),
    ("TPU-v4", 275 * T, 275 * T, 32, 1200e9),       # TPU fp32 matmul runs on the bf16 MXU path
    ("cpu", 50e9, 50e9, 8, 20e9),                    # no bf16 entry -> falls back to fp32
])
def test_datasheet_numbers(name, fp32, bf16, mem_gib, bw):
    d = device(name)
    assert d.flops_for(np.float32) == fp32
    assert d.flops_for(jnp.bfloat16) == bf16
    assert d.memory_bytes == mem_gib * 1024**3
    assert d.memory_bandwidth == bw


def test_dtype_mapping_and_fallbacks():
    a100, h100, v100 = device("A100-SXM4-80GB"), device("H100-SXM5-80GB"), device("V100-SXM2-16GB")
    assert a100.flops_for("float32") == 19.5 * T                  # default: true fp32
    assert a100.flops_for("float32", matmul=True) == 156 * T      # TF32 only when asked
    assert v100.flops_for("float32", matmul=True) == 15.7 * T     # no TF32 on V100
    assert a100.flops_for(jnp.float16) == 312 * T
    assert h100.flops_for(jnp.float8_e4m3fn) == 1979 * T          # has fp8
    assert a100.flops_for(jnp.float8_e4m3fn) == 312 * T           # falls back to bf16
    assert a100.flops_for(jnp.int8) == 624 * T
    assert v100.flops_for(jnp.int32) == 15.7 * T                  # no int8 -> fp32
    assert v100.flops_for(jnp.bfloat16) == 15.7 * T               # no bf16 tensor cores
    assert dtype_class(jnp.float8_e5m2) == "fp8" and dtype_class(np.bool_) == "int8"


def test_unknown_device_lists_names():
    with pytest.raises(KeyError, match="known devices: .*A100-SXM4-80GB"):
        device("B200")


def test_devicespec_validates_and_round_trips():
    with pytest.raises(ValueError, match="peak_flops key 'fp64'"):
        DeviceSpec("x", "gpu", {"fp64": 1.0}, 1, 1.0)
    with pytest.raises(ValueError, match="kind must be"):
        DeviceSpec("x", "npu", {"fp32": 1.0}, 1, 1.0)
    for d in DEVICES.values():
        assert DeviceSpec.from_dict(d.to_dict()) == d
        assert hash(DeviceSpec.from_dict(d.to_dict())) == hash(d)
