"""Cluster presets, file loading, mesh mapping onto the link hierarchy."""

import json
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import pytest

from autopar.cost_models.cluster import PRESETS, ClusterSpec, group_link
from autopar.cost_models.hardware import device
from autopar.cost_models.links import AxisLink

GB = 1e9


def test_presets_numbers():
    a = ClusterSpec.preset("dgx-a100", nodes=4)
    assert a.device == device("A100-SXM4-80GB") and a.num_devices == 32 and a.devices_per_node == 8
    assert [l.bandwidth for l in a.links] == [300 * GB, 25 * GB]
    assert [l.span for l in a.links] == [8, 32]
    h = ClusterSpec.preset("dgx-h100", nodes=2)
    assert [l.bandwidth for l in h.links] == [450 * GB, 50 * GB]
    p3 = ClusterSpec.preset("p3.16xlarge", nodes=8)
    assert p3.device.name == "V100-SXM2-16GB"
    assert p3.links[0].bandwidth == 150 * GB
    assert p3.links[1].bandwidth * 8 == pytest.approx(25e9 / 8)   # 25 Gb/s per node, shared by 8 GPUs
    t = ClusterSpec.preset("tpu-v4", nodes=16)
    assert t.devices_per_node == 4 and t.num_devices == 64 and len(t.links) == 1 and t.links[0].span == 64
    assert ClusterSpec.preset("tpu-v5p").device.name == "TPU-v5p"
    assert ClusterSpec.preset("cpu").num_devices == 8
    assert set(PRESETS) >= {"dgx-a100", "dgx-h100", "p3.16xlarge", "tpu-v4", "tpu-v5p", "cpu"}


def test_preset_errors():
    with pytest.raises(ValueError, match="unknown cluster preset 'dgx-b200'.*dgx-a100"):
        ClusterSpec.preset("dgx-b200")
    with pytest.raises(ValueError, match="nodes must be"):
        ClusterSpec.preset("dgx-a100", nodes=0)


def test_mesh_mapping_dgx():
    c = ClusterSpec.preset("dgx-a100", nodes=2)
    ax0, ax1 = c.mesh_axes((2, 8), ("dp", "tp"))
    assert ax0 == AxisLink("dp", 2, 5e-6, 25 * GB)      # one inter-node flow per GPU NIC
    assert ax1 == AxisLink("tp", 8, 2e-6, 300 * GB)     # NVLink
    a0, a1 = c.mesh_axes((4, 4))
    assert a1.bandwidth == 300 * GB and a1.alpha == 2e-6
    # axis0 (stride 4) crosses nodes; 2 of its devices per node -> 4 flows share 8 NICs -> 2 x 25 GB/s
    assert a0.alpha == 5e-6 and a0.bandwidth == 50 * GB and a0.name == "axis0"
    (flat,) = c.mesh_axes((16,))
    assert flat.bandwidth == 200 * GB                    # all 8 rails for one ring


def test_mesh_mapping_p3_per_node_nic():
    c = ClusterSpec.preset("p3.16xlarge", nodes=8)
    ax0, ax1 = c.mesh_axes((8, 8))
    assert ax0.bandwidth == pytest.approx(25e9 / 8 / 8)  # 8 GPUs share one 25 Gb/s NIC
    assert ax1.bandwidth == 150 * GB
    (flat,) = c.mesh_axes((64,))
    assert flat.bandwidth == pytest.approx(25e9 / 8)     # one ring crossing: the whole NIC
    b0, b1 = c.mesh_axes((16, 4))                        # 2 of b0's devices per node: 4 flows share the NIC
    assert b0.bandwidth == pytest.approx(25e9 / 8 / 4)
    g = group_link((ax0, ax1))
    assert g == AxisLink("axis0+axis1", 64, ax0.alpha, ax0.bandwidth)


def test_mesh_errors():
    c = ClusterSpec.preset("dgx-a100", nodes=2)
    with pytest.raises(ValueError, match=r"\(4, 8\) has 32 devices but .* has 16 .*\(2, 8\)"):
        c.mesh_axes((4, 8))
    with pytest.raises(ValueError, match="axis_names"):
        c.mesh_axes((2, 8), ("x",))
    with pytest.raises(ValueError):
        group_link(())


TOML = """
name = "lab"
nodes = 2
devices_per_node = 4
device = "A100-SXM4-40GB"
[[links]]
name = "nvlink"
bandwidth = 2e11
latency = 1e-6
span = 4
[[links]]
name = "ib"
bandwidth = 1.25e10
latency = 4e-6
"""


def test_from_file_toml(tmp_path):
    p = tmp_path / "cluster.toml"
    p.write_text(TOML)
    c = ClusterSpec.from_file(p)
    assert c.name == "lab" and c.num_devices == 8 and c.device.name == "A100-SXM4-40GB"
    assert [(l.name, l.bandwidth, l.span) for l in c.links] == [("nvlink", 2e11, 4), ("ib", 1.25e10, 8)]
    ax0, ax1 = c.mesh_axes((2, 4))
    assert ax0.bandwidth == 1.25e10 and ax1.bandwidth == 2e11


def test_from_file_json_inline_device_and_round_trip(tmp_path):
    d = {"name": "custom", "nodes": 1, "devices_per_node": 2,
         "device": {"name": "X1", "kind": "gpu", "peak_flops": {"fp32": 1e13, "bf16": 1e14},
                    "memory_bytes": 1 << 34, "memory_bandwidth": 1e12},
         "links": [{"name": "pcie", "bandwidth": 2.5e10, "latency": 1e-5, "span": 2}]}
    p = tmp_path / "c.json"
    p.write_text(json.dumps(d))
    c = ClusterSpec.from_file(p)
    assert c.device.flops_for("bfloat16") == 1e14 and c.device.memory_bytes == 1 << 34
    for spec in (c, ClusterSpec.preset("dgx-h100", nodes=3), ClusterSpec.preset("tpu-v4", nodes=2)):
        back = ClusterSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert back == spec


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["links"][1].__setitem__("bandwidth", "fast"),
     r"cluster\.toml: links\[1\]\.bandwidth must be a positive number, got 'fast'"),
    (lambda d: d["links"][0].__setitem__("latency", -1),
     r"cluster\.toml: links\[0\]\.latency must be a number >= 0"),
    (lambda d: d.__setitem__("device", "A200"), r"cluster\.toml: device must be a catalog name"),
    (lambda d: d.__setitem__("nodes", 0), r"cluster\.toml: nodes must be an integer >= 1, got 0"),
    (lambda d: d.pop("devices_per_node"), r"cluster\.toml: devices_per_node must be an integer"),
    (lambda d: d.__setitem__("colour", "red"), r"cluster\.toml: unknown field\(s\) \['colour'\]"),
    (lambda d: d["links"][1].__setitem__("span", 4), r"cluster\.toml: .*spans 4 devices but the cluster has 8"),
])
def test_from_file_errors_name_field(tmp_path, edit, match):
    import tomllib

    d = tomllib.loads(TOML)
    edit(d)
    p = tmp_path / "cluster.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match.replace("toml", "json")):
        ClusterSpec.from_file(p)


def test_from_file_bad_toml(tmp_path):
    p = tmp_path / "cluster.toml"
    p.write_text(TOML.replace("bandwidth = 1.25e10", 'bandwidth = "fast"'))
    with pytest.raises(ValueError, match=r"cluster\.toml: links\[1\]\.bandwidth must be a positive number, got 'fast'"):
        ClusterSpec.from_file(p)
    p.write_text("nodes = = 2")
    with pytest.raises(ValueError, match="not valid TOML"):
        ClusterSpec.from_file(p)


def test_local_and_describe():
    c = ClusterSpec.local()
    assert c.num_devices == len(jax.devices()) == 8 and c.nodes == 1
    assert c.device.name == "cpu" and c.links[0].span == 8
    (ax,) = c.mesh_axes((8,))
    assert ax.bandwidth == c.links[0].bandwidth
    text = str(ClusterSpec.preset("dgx-a100", nodes=2))
    assert "16 devices" in text and "A100-SXM4-80GB" in text and "nvlink3: 300 GB/s" in text
