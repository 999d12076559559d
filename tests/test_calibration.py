"""Calibration: alpha-beta fit, profile loading, and the real ``autopar calibrate --quick`` CLI."""

import json
import os
import subprocess
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest

from autopar.cli.main import SUBCOMMANDS, main
from autopar.cost_models.calibration import _fit, catalog_name_for, cluster_from_profile
from autopar.cost_models.cluster import PROFILE_FORMAT, ClusterSpec
from autopar.cost_models.compute import op_classes


@pytest.mark.parametrize("kind, steps, frac", [("all-reduce", 14, 2 * 7 / 8), ("all-gather", 7, 7 / 8)])
def test_fit_recovers_alpha_beta(kind, steps, frac):
    alpha, bw, n = 3e-5, 2e9, 8
    sizes = (4096, 1 << 20)
    times = [steps * alpha + frac * s / bw for s in sizes]
    a, b = _fit(kind, n, sizes, times)
    assert a == pytest.approx(alpha) and b == pytest.approx(bw)


def test_catalog_name_for():
    assert catalog_name_for("gpu", "NVIDIA H100 80GB HBM3") == "H100-SXM5-80GB"
    assert catalog_name_for("gpu", "NVIDIA A100-SXM4-80GB") == "A100-SXM4-80GB"
    assert catalog_name_for("gpu", "NVIDIA A100-SXM4-40GB") == "A100-SXM4-40GB"
    assert catalog_name_for("tpu", "TPU v5 lite") == "TPU-v5e"
    assert catalog_name_for("tpu", "TPU v4") == "TPU-v4"
    assert catalog_name_for("gpu", "NVIDIA L4") == "cpu"
    assert catalog_name_for("cpu", "cpu") == "cpu"


PROFILE = {"format": PROFILE_FORMAT, "version": 1, "device_name": "A100-SXM4-80GB", "device_kind": "x",
           "platform": "gpu", "num_devices": 4, "peak_flops": {"fp32": 1.9e13, "bf16": 2.8e14},
           "memory_bandwidth": 1.8e12, "memory_bytes": None,
           "link": {"name": "measured", "latency": 1e-5, "bandwidth": 2.2e11}}


def test_profile_replaces_catalog_numbers():
    c = cluster_from_profile(PROFILE)
    assert c.num_devices == 4 and c.device.kind == "gpu"
    # measured rates are what the model's large kernels achieve: peak x efficiency == measured
    mm, stream = op_classes["matmul"], op_classes["elementwise"]
    assert c.device.flops_for("float32") * mm.compute_eff("fp32") == pytest.approx(1.9e13)
    assert c.device.flops_for("bfloat16") * mm.compute_eff("bf16") == pytest.approx(2.8e14)
    assert c.device.flops_for("int8") == 624e12            # not measured: catalog value kept
    assert c.device.memory_bandwidth * stream.memory_efficiency == pytest.approx(1.8e12)
    assert c.device.memory_bytes == 80 * 1024**3
    (ax,) = c.mesh_axes((4,))
    assert ax.alpha == 1e-5 and ax.bandwidth == 2.2e11


def test_profile_errors(tmp_path):
    bad = dict(PROFILE, memory_bandwidth=0)
    p = tmp_path / "prof.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"prof\.json: memory_bandwidth must be a positive number, got 0"):
        ClusterSpec.from_file(p)
    p.write_text(json.dumps(dict(PROFILE, link={"latency": 1e-6, "bandwidth": "x"})))
    with pytest.raises(ValueError, match=r"link\.bandwidth must be a positive number"):
        ClusterSpec.from_file(p)
    p.write_text(json.dumps({"nodes": 1}))
    with pytest.raises(ValueError, match="not a calibration profile"):
        ClusterSpec.local(profile=p)


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out
    assert main([]) == 2


def test_calibrate_quick_cli_writes_loadable_profile(tmp_path):
    out = tmp_path / "profile.json"
    r = subprocess.run([sys.executable, "-m", "autopar.cli.main", "calibrate", "--quick", "--sizes", "128", "256",
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "8 devices" in r.stdout
    prof = json.loads(out.read_text())
    assert prof["format"] == PROFILE_FORMAT and prof["platform"] == "cpu" and prof["num_devices"] == 8
    assert set(prof["raw"]["matmul"]["fp32"]) == {"128", "256"}
    assert prof["peak_flops"]["fp32"] == max(prof["raw"]["matmul"]["fp32"].values()) > 0
    assert prof["memory_bandwidth"] > 0 and prof["link"]["bandwidth"] > 0 and prof["link"]["latency"] >= 0
    c = ClusterSpec.from_file(out)
    mm, stream = op_classes["matmul"], op_classes["elementwise"]
    assert c.num_devices == 8
    assert c.device.peak_flops["fp32"] * mm.compute_eff("fp32") == pytest.approx(prof["peak_flops"]["fp32"])
    assert c.device.memory_bandwidth * stream.memory_efficiency == pytest.approx(prof["memory_bandwidth"])
    local = ClusterSpec.local(profile=out)
    assert local.links[0].bandwidth == prof["link"]["bandwidth"] and local.num_devices == 8
