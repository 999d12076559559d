"""Cluster descriptions: devices, how many per node, the link hierarchy, and how a logical mesh maps onto it.

Consumes: a preset name, a TOML/JSON file (cluster description or calibration profile), a dict, or the local
``jax.devices()``. Produces: a frozen ``ClusterSpec`` and, per logical mesh, one ``AxisLink`` per mesh axis.
Refuses: unknown presets, bad fields (the error names the file and the field), mesh shapes whose product is
not the device count.

File schema (TOML shown; JSON uses the same keys)::

    name = "my-cluster"
    nodes = 2
    devices_per_node = 8
    device = "A100-SXM4-80GB"        # a catalog name, or an inline table of DeviceSpec fields:
    # [device]  name = "X", kind = "gpu", memory_bytes = 1e10, memory_bandwidth = 1e12,
    #           peak_flops = { fp32 = 1e13, bf16 = 1e14 }
    [[links]]                        # innermost first
    name = "nvlink"; bandwidth = 300e9; latency = 2e-6; span = 8
    [[links]]                        # span may be left out on the last link: it covers all devices
    name = "ib"; bandwidth = 25e9; latency = 5e-6

Bandwidths are bytes/s per device, one direction; latencies are seconds per message step (alpha).

Mesh mapping. Devices are numbered node-major and the LAST mesh axis varies fastest. Axis i of size n with
stride s (product of the later sizes) spans a device range of s*n and communicates over the innermost link
whose span covers that range. A link level above the innermost has, as ``LinkSpec.bandwidth``, the share one
device gets when every device of the level below (a node) sends across it at once: node NIC bandwidth /
devices per node (DGX-A100: one 200 Gb/s NIC per GPU -> 25 GB/s; p3.16xlarge: one 25 Gb/s NIC per node
shared by 8 GPUs -> 0.39 GB/s). When an axis has stride s smaller than the node, each of its groups holds
k = node/s devices inside a node and crosses the node boundary once per ring, so only s flows share the
node's NICs and each gets k shares: bandwidth = min(k * share, bandwidth of the link used inside the node).
This one rule covers per-GPU NICs (DGX: a (16,) axis over 2 nodes gets 8 x 25 = 200 GB/s, as NCCL's
multi-rail rings do) and per-node NICs (p3: a (16,) axis gets the whole 25 Gb/s, a (2, 8) axis0 gets 1/8).
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from autopar.cost_models.hardware import DEVICES, DTYPE_CLASSES, DeviceSpec, device
from autopar.cost_models.links import AxisLink, LinkSpec

__all__ = ["PRESETS", "PROFILE_FORMAT", "ClusterSpec", "group_link"]

PROFILE_FORMAT = "autopar-calibration-profile"
Gb = 1e9 / 8  # bytes/s in one Gbit/s
GB = 1e9


@dataclass(frozen=True)
class ClusterSpec:
    """``nodes`` x ``devices_per_node`` identical devices joined by ``links`` (innermost first)."""

    name: str
    device: DeviceSpec
    nodes: int
    devices_per_node: int
    links: tuple[LinkSpec, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.nodes, int) or self.nodes < 1:
            raise ValueError(f"cluster {self.name!r}: nodes must be an int >= 1, got {self.nodes!r}")
        if not isinstance(self.devices_per_node, int) or self.devices_per_node < 1:
            raise ValueError(f"cluster {self.name!r}: devices_per_node must be an int >= 1, "
                             f"got {self.devices_per_node!r}")
        object.__setattr__(self, "links", tuple(self.links))
        if not self.links:
            raise ValueError(f"cluster {self.name!r}: links is empty; give at least one link level")
        spans = [l.span for l in self.links]
        if spans != sorted(spans):
            raise ValueError(f"cluster {self.name!r}: link spans must be non-decreasing (innermost first), got {spans}")
        if spans[-1] < self.num_devices:
            raise ValueError(f"cluster {self.name!r}: the last link ({self.links[-1].name}) spans {spans[-1]} "
                             f"devices but the cluster has {self.num_devices}; its span must cover all devices")

    @property
    def num_devices(self) -> int:
        return self.nodes * self.devices_per_node

    # ---- constructors ------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, nodes: int = 1) -> ClusterSpec:
        """A named cluster (``PRESETS``) with ``nodes`` nodes."""
        build = PRESETS.get(name)
        if build is None:
            raise ValueError(f"unknown cluster preset {name!r}; presets: {', '.join(PRESETS)}")
        if not isinstance(nodes, int) or nodes < 1:
            raise ValueError(f"preset {name!r}: nodes must be an int >= 1, got {nodes!r}")
        return build(nodes)

    @classmethod
    def from_file(cls, path: str | Path) -> ClusterSpec:
        """Load a cluster description or a calibration profile (``.toml`` or ``.json``)."""
        where = str(path)
        data = read_description(path, "cluster file")
        if not isinstance(data, dict):
            raise ValueError(f"{where}: top level must be a table/object, got {type(data).__name__}")
        return cls.from_dict(data, where=where)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "cluster") -> ClusterSpec:
        """Inverse of ``to_dict``; also accepts a calibration profile (``format = PROFILE_FORMAT``)."""
        if d.get("format") == PROFILE_FORMAT:
            from autopar.cost_models.calibration import cluster_from_profile  # noqa: PLC0415 (cycle)

            return cluster_from_profile(d, where=where)
        return _from_description(d, where)

    @classmethod
    def local(cls, profile: str | Path | None = None) -> ClusterSpec:
        """The devices ``jax.devices()`` sees, as one node; a profile's measured numbers replace the catalog's."""
        from autopar.cost_models.calibration import local_cluster  # noqa: PLC0415 (needs jax; cycle)

        return local_cluster(profile)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device.to_dict(), "nodes": self.nodes,
                "devices_per_node": self.devices_per_node,
                "links": [{"name": l.name, "bandwidth": l.bandwidth, "latency": l.latency, "span": l.span}
                          for l in self.links]}

    # ---- mesh mapping ------------------------------------------------------------------------------------
    def mesh_axes(self, mesh_shape: Sequence[int], axis_names: Sequence[str] | None = None) -> tuple[AxisLink, ...]:
        """One ``AxisLink`` per mesh axis (see the module docstring for the placement and bandwidth rule)."""
        shape = tuple(int(s) for s in mesh_shape)
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"mesh_shape must be a non-empty sequence of sizes >= 1, got {tuple(mesh_shape)}")
        if math.prod(shape) != self.num_devices:
            raise ValueError(
                f"mesh_shape {shape} has {math.prod(shape)} devices but cluster {self.name!r} has "
                f"{self.num_devices} ({self.nodes} nodes x {self.devices_per_node}); use sizes whose product is "
                f"{self.num_devices}, e.g. ({self.nodes}, {self.devices_per_node}) or ({self.num_devices},)")
        names = tuple(axis_names) if axis_names is not None else tuple(f"axis{i}" for i in range(len(shape)))
        if len(names) != len(shape):
            raise ValueError(f"axis_names {names} has {len(names)} names for a {len(shape)}-axis mesh {shape}")
        out = []
        for i, (n, name) in enumerate(zip(shape, names)):
            stride = math.prod(shape[i + 1:])
            out.append(self._axis_link(name, n, stride))
        return tuple(out)

    def _level(self, extent: int) -> int:
        return next(i for i, l in enumerate(self.links) if l.span >= extent)

    def _axis_link(self, name: str, size: int, stride: int) -> AxisLink:
        level = self._level(stride * size)
        link = self.links[level]
        bandwidth = link.bandwidth
        if level > 0 and size > 1:
            unit = self.links[level - 1].span
            k = min(size, max(1, unit // stride))  # group members inside one unit (node)
            if k > 1:
                inner = self.links[self._level(stride * k)]
                bandwidth = min(link.bandwidth * k, inner.bandwidth)
        return AxisLink(name=name, size=size, alpha=link.latency, bandwidth=bandwidth)

    # ---- text --------------------------------------------------------------------------------------------
    def describe(self) -> str:
        links = "; ".join(f"{l.name}: {l.bandwidth / GB:.4g} GB/s per device, {l.latency * 1e6:.3g} us, "
                          f"spans {l.span} devices" for l in self.links)
        return (f"Cluster {self.name!r}: {self.nodes} node(s) x {self.devices_per_node} = {self.num_devices} "
                f"devices of {self.device.describe()}. Links (innermost first) - {links}.")

    def __str__(self) -> str:
        return self.describe()


def read_description(path: str | Path, what: str) -> Any:
    """The parsed contents of a ``.toml`` or ``.json`` file; a ValueError naming the file says what is wrong."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ValueError(f"{path}: cannot read {what} ({e.strerror})") from None
    try:
        return tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid {'TOML' if p.suffix.lower() == '.toml' else 'JSON'}: {e}") from None


def group_link(axes: Sequence[AxisLink]) -> AxisLink:
    """A collective over several mesh axes at once: size = product, bandwidth = slowest, alpha = largest.

    Conservative: a group spanning a node boundary is charged the slowest member axis's bandwidth.
    """
    axes = tuple(axes)
    if not axes:
        raise ValueError("group_link needs at least one AxisLink")
    if len(axes) == 1:
        return axes[0]
    return AxisLink(name="+".join(a.name for a in axes), size=math.prod(a.size for a in axes),
                    alpha=max(a.alpha for a in axes), bandwidth=min(a.bandwidth for a in axes))


# ---- presets --------------------------------------------------------------------------------------------
# Latencies are typical NCCL / ICI small-message figures (not datasheet numbers); `autopar calibrate`
# replaces them with measurements.

def _two_level(name: str, dev: str, dpn: int, intra: tuple[str, float, float],
               inter: tuple[str, float, float]) -> Callable[[int], ClusterSpec]:
    def build(nodes: int) -> ClusterSpec:
        n = nodes * dpn
        return ClusterSpec(name, device(dev), nodes, dpn,
                           (LinkSpec(intra[0], intra[1], intra[2], dpn), LinkSpec(inter[0], inter[1], inter[2], n)))
    return build


def _one_level(name: str, dev: str, dpn: int, link: tuple[str, float, float]) -> Callable[[int], ClusterSpec]:
    def build(nodes: int) -> ClusterSpec:
        return ClusterSpec(name, device(dev), nodes, dpn, (LinkSpec(link[0], link[1], link[2], nodes * dpn),))
    return build


PRESETS: dict[str, Callable[[int], ClusterSpec]] = {
    # DGX A100 (NVIDIA DGX A100 datasheet): 8x A100-SXM4-80GB, NVLink3 600 GB/s bidirectional per GPU
    # -> 300 GB/s per direction; 8x ConnectX-6 200 Gb/s InfiniBand, one per GPU -> 25 GB/s per GPU.
    "dgx-a100": _two_level("dgx-a100", "A100-SXM4-80GB", 8, ("nvlink3", 300 * GB, 2e-6),
                           ("infiniband-hdr", 200 * Gb, 5e-6)),
    # DGX H100 (NVIDIA DGX H100 datasheet): NVLink4 900 GB/s bidirectional -> 450 GB/s per direction;
    # 8x ConnectX-7 400 Gb/s -> 50 GB/s per GPU.
    "dgx-h100": _two_level("dgx-h100", "H100-SXM5-80GB", 8, ("nvlink4", 450 * GB, 2e-6),
                           ("infiniband-ndr", 400 * Gb, 5e-6)),
    # AWS p3.16xlarge (AWS EC2 P3 page; Alpa's testbed): 8x V100-16GB, NVLink2 300 GB/s bidirectional
    # -> 150 GB/s per direction; 25 Gb/s Ethernet per NODE shared by its 8 GPUs -> 25/8 Gb/s per GPU.
    "p3.16xlarge": _two_level("p3.16xlarge", "V100-SXM2-16GB", 8, ("nvlink2", 150 * GB, 3e-6),
                              ("ethernet-25g", 25 * Gb / 8, 3e-5)),
    # TPU v4 (Cloud TPU v4 page): 4 chips per host, ICI spans the slice (3D torus). Per mesh axis we take one
    # third of the per-chip all-reduce bandwidth: 1.1 PB/s per 4096-chip pod / 4096 / 3 axes ~ 90 GB/s.
    "tpu-v4": _one_level("tpu-v4", "TPU-v4", 4, ("ici", 90 * GB, 1e-6)),
    # TPU v5p (Cloud TPU v5p page): ICI 4800 Gbps per chip = 600 GB/s over a 3D torus -> 200 GB/s per axis.
    "tpu-v5p": _one_level("tpu-v5p", "TPU-v5p", 4, ("ici", 200 * GB, 1e-6)),
    # Fake CPU devices for tests: shared-memory copies inside a node, 10 Gb/s Ethernet per node between nodes.
    "cpu": _two_level("cpu", "cpu", 8, ("shared-memory", 5 * GB, 1e-5), ("ethernet-10g", 10 * Gb / 8, 5e-5)),
}


# ---- file / dict parsing ----------------------------------------------------------------------------------

def _bad(where: str, field: str, what: str, got: Any) -> ValueError:
    return ValueError(f"{where}: {field} {what}, got {got!r}")


def _positive(d: Mapping[str, Any], key: str, where: str, field: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
        raise _bad(where, field, "must be a positive number", v)
    return float(v)


def _count(d: Mapping[str, Any], key: str, where: str, field: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or v < 1:
        raise _bad(where, field, "must be an integer >= 1", v)
    return int(v)


def _device_field(v: Any, where: str) -> DeviceSpec:
    if isinstance(v, str):
        if v not in DEVICES:
            raise _bad(where, "device", f"must be a catalog name ({', '.join(DEVICES)}) or a table", v)
        return DEVICES[v]
    if not isinstance(v, Mapping):
        raise _bad(where, "device", "must be a catalog name or a table of DeviceSpec fields", v)
    name = v.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(where, "device.name", "must be a non-empty string", name)
    kind = v.get("kind", "gpu")
    if kind not in ("gpu", "tpu", "cpu"):
        raise _bad(where, "device.kind", "must be 'gpu', 'tpu' or 'cpu'", kind)
    flops = v.get("peak_flops")
    if not isinstance(flops, Mapping) or not flops:
        raise _bad(where, "device.peak_flops", "must be a table like {fp32 = 1.95e13, bf16 = 3.12e14}", flops)
    for k in flops:
        if k not in DTYPE_CLASSES:
            raise _bad(where, f"device.peak_flops.{k}", f"is not a dtype class {DTYPE_CLASSES}", k)
        _positive(flops, k, where, f"device.peak_flops.{k}")
    if "fp32" not in flops and "bf16" not in flops:
        raise _bad(where, "device.peak_flops", "needs an fp32 or bf16 entry", dict(flops))
    return DeviceSpec(name=name, kind=kind, peak_flops={k: float(x) for k, x in flops.items()},
                      memory_bytes=int(_positive(v, "memory_bytes", where, "device.memory_bytes")),
                      memory_bandwidth=_positive(v, "memory_bandwidth", where, "device.memory_bandwidth"),
                      source=str(v.get("source", f"inline in {where}")))


def _from_description(d: Mapping[str, Any], where: str) -> ClusterSpec:
    known = {"name", "device", "nodes", "devices_per_node", "links", "format"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; expected {sorted(known - {'format'})}")
    if "device" not in d:
        raise ValueError(f"{where}: device is missing; give a catalog name ({', '.join(DEVICES)}) or a table")
    dev = _device_field(d["device"], where)
    nodes = _count(d, "nodes", where, "nodes") if "nodes" in d else 1
    dpn = _count(d, "devices_per_node", where, "devices_per_node")
    links_in = d.get("links")
    if not isinstance(links_in, list) or not links_in:
        raise _bad(where, "links", "must be a non-empty list of {name, bandwidth, latency, span}", links_in)
    links = []
    for i, l in enumerate(links_in):
        f = f"links[{i}]"
        if not isinstance(l, Mapping):
            raise _bad(where, f, "must be a table {name, bandwidth, latency, span}", l)
        name = l.get("name", f"level{i}")
        if not isinstance(name, str):
            raise _bad(where, f"{f}.name", "must be a string", name)
        lat = l.get("latency", 0.0)
        if isinstance(lat, bool) or not isinstance(lat, (int, float)) or lat < 0:
            raise _bad(where, f"{f}.latency", "must be a number >= 0 (seconds)", lat)
        if "span" in l:
            span = _count(l, "span", where, f"{f}.span")
        elif i == len(links_in) - 1:
            span = nodes * dpn
        elif i == 0:
            span = dpn
        else:
            raise ValueError(f"{where}: {f}.span is missing; only the first and last links may leave it out")
        links.append(LinkSpec(name, _positive(l, "bandwidth", where, f"{f}.bandwidth"), float(lat), span))
    name = d.get("name", Path(where).stem)
    try:
        return ClusterSpec(str(name), dev, nodes, dpn, tuple(links))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
