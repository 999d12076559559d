"""Calibration: measure the devices at hand with JAX and describe them as a ``ClusterSpec``.

Consumes: the local ``jax.devices()`` (``calibrate``), or a saved profile (``cluster_from_profile``).
Produces: a JSON-serialisable profile dict (``format = "autopar-calibration-profile"``) holding the device
name, platform, device count, measured ``peak_flops`` per dtype class, ``memory_bandwidth``, the fitted
collective ``link`` (latency = alpha, bandwidth = 1/beta), raw timings, jax version and a timestamp; and the
``ClusterSpec`` such a profile describes (one node; measured numbers replace the catalog's, dtype classes
that were not measured keep the catalog value).
Refuses: profiles with missing or non-positive measured fields (ValueError naming the field).

Timing: every kernel is jitted, run once to compile, then timed best-of-N with ``block_until_ready``.
Collectives run under ``jax.shard_map`` over a 1-D mesh of all local devices; the ring forms
``all-reduce: 2(n-1)α + 2(n-1)/n·Sβ`` and ``all-gather (S = output): (n-1)α + (n-1)/n·Sβ`` are fitted
through two message sizes (the same formulas ``cost_models.collectives`` charges).
No JAX work happens at import time; jax is imported inside the functions that need it.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from autopar.cost_models.cluster import PROFILE_FORMAT, ClusterSpec
from autopar.cost_models.compute import op_classes
from autopar.cost_models.hardware import DEVICES, DeviceSpec, device
from autopar.cost_models.links import LinkSpec

__all__ = ["PROFILE_FORMAT", "calibrate", "catalog_name_for", "catalog_node", "cluster_from_profile",
           "local_cluster", "load_profile", "write_profile"]

GB = 1e9

# jax device_kind substring -> catalog name; first match wins (order matters: "A100...80GB" before "A100").
_DEVICE_KIND_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("H200",), "H200-SXM-141GB"),
    (("H100",), "H100-SXM5-80GB"),
    (("A100", "80GB"), "A100-SXM4-80GB"),
    (("A100",), "A100-SXM4-40GB"),
    (("V100",), "V100-SXM2-16GB"),
    (("TPU v4",), "TPU-v4"),
    (("TPU v5 lite",), "TPU-v5e"),
    (("TPU v5e",), "TPU-v5e"),
    (("TPU v5",), "TPU-v5p"),
)
_DEFAULT_DEVICE = "cpu"

# catalog name -> the link joining local devices (name, bytes/s per device one direction, seconds);
# same sources as the presets in cluster.py. Default: the cpu shared-memory link.
_LOCAL_LINKS: dict[str, tuple[str, float, float]] = {
    "V100-SXM2-16GB": ("nvlink2", 150 * GB, 3e-6),
    "A100-SXM4-40GB": ("nvlink3", 300 * GB, 2e-6),
    "A100-SXM4-80GB": ("nvlink3", 300 * GB, 2e-6),
    "H100-SXM5-80GB": ("nvlink4", 450 * GB, 2e-6),
    "H200-SXM-141GB": ("nvlink4", 450 * GB, 2e-6),
    "TPU-v4": ("ici", 90 * GB, 1e-6),
    "TPU-v5e": ("ici", 100 * GB, 1e-6),   # 1600 Gbps per chip over a 2D torus -> half per axis
    "TPU-v5p": ("ici", 200 * GB, 1e-6),
}
_DEFAULT_LINK = ("shared-memory", 5 * GB, 1e-5)
_PLATFORM_KIND: dict[str, str] = {"gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}


def catalog_name_for(platform: str, device_kind: str) -> str:
    """Catalog name for a jax device (``platform``, ``device_kind``), or "cpu" when unrecognised."""
    if platform == "cpu":
        return _DEFAULT_DEVICE
    for needles, name in _DEVICE_KIND_RULES:
        if all(n in device_kind for n in needles):
            return name
    return _DEFAULT_DEVICE


# ---- measurement ---------------------------------------------------------------------------------------

def _best_time(fn: Callable[..., Any], args: Sequence[Any], repeats: int) -> float:
    fn(*args).block_until_ready()  # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return max(best, 1e-9)


def measure_matmul(dtype: Any, sizes: Sequence[int], repeats: int, *, precision: Any = None) -> dict[int, float]:
    """flop/s of an (n, n) @ (n, n) matmul on the first device, per size n."""
    import jax
    import jax.numpy as jnp

    dev = jax.devices()[0]
    out = {}
    for n in sizes:
        a = jax.device_put(jnp.ones((n, n), dtype), dev)
        f = jax.jit(lambda x, y: jnp.dot(x, y, precision=precision))
        out[int(n)] = 2.0 * n**3 / _best_time(f, (a, a), repeats)
    return out


def measure_memory_bandwidth(nbytes: int, repeats: int) -> float:
    """bytes/s of ``x * 2 + 1`` on a float32 array of ``nbytes`` (one read + one write per element)."""
    import jax
    import jax.numpy as jnp

    x = jax.device_put(jnp.ones((nbytes // 4,), jnp.float32), jax.devices()[0])
    f = jax.jit(lambda v: v * 2.0 + 1.0)
    return 2.0 * (nbytes // 4) * 4 / _best_time(f, (x,), repeats)


def _collective_fn(kind: str, mesh: Any) -> Callable[[Any], Any]:
    import jax
    from jax.sharding import PartitionSpec as P

    if kind == "all-reduce":
        body, out = (lambda x: jax.lax.psum(x, "d")), P("d")
    else:
        body, out = (lambda x: jax.lax.all_gather(x, "d", tiled=True)), P("d")
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("d"), out_specs=out, check_vma=False))


def _fit(kind: str, n: int, sizes: Sequence[int], times: Sequence[float]) -> tuple[float, float]:
    """(alpha, bandwidth) through two (bytes, seconds) points of the ring formula for ``kind``."""
    steps, frac = (2 * (n - 1), 2 * (n - 1) / n) if kind == "all-reduce" else (n - 1, (n - 1) / n)
    (s1, s2), (t1, t2) = sizes, times
    beta = (t2 - t1) / (frac * (s2 - s1))
    if beta <= 0:  # noise: the large message was not slower; charge everything to bandwidth
        beta = t2 / (frac * s2)
    alpha = max(0.0, (t1 - frac * s1 * beta) / steps)
    return alpha, 1.0 / beta


def measure_collectives(nbytes: Sequence[int], repeats: int) -> dict[str, Any]:
    """Time all-reduce and all-gather over all local devices at two message sizes; fit alpha and beta.

    ``nbytes`` = the per-device buffer (all-reduce) / gathered output (all-gather), in bytes.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    devs = jax.devices()
    n = len(devs)
    mesh = Mesh(np.array(devs), ("d",))
    res: dict[str, Any] = {"devices": n}
    for kind in ("all-reduce", "all-gather"):
        fn = _collective_fn(kind, mesh)
        times = []
        for s in nbytes:
            per_dev = s // 4 if kind == "all-reduce" else max(1, s // 4 // n)
            x = jax.device_put(jnp.ones((n * per_dev,), jnp.float32), NamedSharding(mesh, P("d")))
            times.append(_best_time(fn, (x,), repeats))
        alpha, bw = _fit(kind, n, nbytes, times)
        res[kind] = {"bytes": list(nbytes), "seconds": times, "latency": alpha, "bandwidth": bw}
    return res


def calibrate(*, sizes: Sequence[int] | None = None, quick: bool = False, repeats: int | None = None,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure the local devices; returns a profile dict (see the module docstring)."""
    import jax

    say = log or (lambda _m: None)
    devs = jax.devices()
    d0 = devs[0]
    platform, kind = d0.platform, getattr(d0, "device_kind", d0.platform)
    accel = platform != "cpu"
    if sizes is None:
        sizes = (256, 512) if quick else ((2048, 4096, 8192) if accel else (256, 512, 1024))
    repeats = repeats or (3 if quick else 10)
    mem_bytes = (16 << 20) if quick else ((1 << 30) if accel else (128 << 20))
    coll = ((4 << 10), (1 << 20)) if quick else ((4 << 10), ((256 << 20) if accel else (16 << 20)))

    import jax.numpy as jnp

    say(f"matmul fp32 (precision HIGHEST) sizes {list(sizes)}")
    raw: dict[str, Any] = {"matmul": {}}
    raw["matmul"]["fp32"] = measure_matmul(jnp.float32, sizes, repeats, precision=jax.lax.Precision.HIGHEST)
    say("matmul bf16")
    raw["matmul"]["bf16"] = measure_matmul(jnp.bfloat16, sizes, repeats)
    if platform == "gpu" and not quick:
        say("matmul tf32 (fp32, DEFAULT precision)")
        raw["matmul"]["tf32"] = measure_matmul(jnp.float32, sizes, repeats, precision=jax.lax.Precision.DEFAULT)
    say(f"memory bandwidth ({mem_bytes >> 20} MiB elementwise)")
    membw = measure_memory_bandwidth(mem_bytes, repeats)
    link = None
    if len(devs) > 1:
        say(f"collectives over {len(devs)} devices, {list(coll)} bytes")
        raw["collectives"] = measure_collectives(coll, repeats)
        ar = raw["collectives"]["all-reduce"]
        link = {"name": "measured-all-reduce", "latency": ar["latency"], "bandwidth": ar["bandwidth"]}
    stats = d0.memory_stats() if hasattr(d0, "memory_stats") else None
    mem_limit = (stats or {}).get("bytes_limit")
    return {
        "format": PROFILE_FORMAT, "version": 1,
        "device_name": catalog_name_for(platform, kind), "device_kind": kind, "platform": platform,
        "num_devices": len(devs),
        "peak_flops": {k: max(v.values()) for k, v in raw["matmul"].items()},
        "memory_bandwidth": membw, "memory_bytes": int(mem_limit) if mem_limit else None,
        "link": link, "jax_version": jax.__version__,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "raw": {"matmul": {k: {str(n): v for n, v in d.items()} for k, d in raw["matmul"].items()},
                "collectives": raw.get("collectives")},
    }


def write_profile(profile: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(profile, indent=2) + "\n")


# ---- profile -> ClusterSpec ------------------------------------------------------------------------------

def load_profile(path: str | Path) -> dict[str, Any]:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read calibration profile: {e}") from None
    if not isinstance(d, dict) or d.get("format") != PROFILE_FORMAT:
        raise ValueError(f"{path}: not a calibration profile (format must be {PROFILE_FORMAT!r}); "
                         f"write one with `autopar calibrate --out {path}`")
    return d


def _pos(v: Any, where: str, field: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ValueError(f"{where}: {field} must be a positive number, got {v!r}")
    return float(v)


def _measured_device(d: Mapping[str, Any], where: str) -> DeviceSpec:
    name = d.get("device_name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: device_name must be a non-empty string, got {name!r}")
    base = DEVICES.get(name, device(_DEFAULT_DEVICE))
    flops = d.get("peak_flops")
    if not isinstance(flops, Mapping) or not flops:
        raise ValueError(f"{where}: peak_flops must be a table of measured flop/s per dtype, got {flops!r}")
    # The profile holds achieved rates (large GEMMs, a streaming kernel) while the compute model discounts a
    # device's peaks by its efficiency table: store achieved / efficiency, so that a large kernel is modelled
    # at exactly the measured rate instead of being discounted twice.
    matmul, stream = op_classes["matmul"], op_classes["elementwise"]
    merged = dict(base.peak_flops)
    merged.update({k: _pos(v, where, f"peak_flops.{k}") / matmul.compute_eff(k) for k, v in flops.items()})
    mem = d.get("memory_bytes")
    bandwidth = _pos(d.get("memory_bandwidth"), where, "memory_bandwidth") / stream.memory_efficiency
    return DeviceSpec(name=name, kind=_PLATFORM_KIND.get(str(d.get("platform")), base.kind), peak_flops=merged,
                      memory_bytes=int(_pos(mem, where, "memory_bytes")) if mem is not None else base.memory_bytes,
                      memory_bandwidth=bandwidth,
                      source=f"calibration profile {where} ({d.get('timestamp')}, jax {d.get('jax_version')})")


def _measured_link(d: Mapping[str, Any], where: str, name: str, span: int) -> LinkSpec:
    link = d.get("link")
    if link is None:
        return LinkSpec(*_LOCAL_LINKS.get(name, _DEFAULT_LINK), span=span)
    if not isinstance(link, Mapping):
        raise ValueError(f"{where}: link must be a table {{latency, bandwidth}} or null, got {link!r}")
    lat = link.get("latency")
    if isinstance(lat, bool) or not isinstance(lat, (int, float)) or lat < 0:
        raise ValueError(f"{where}: link.latency must be a number >= 0, got {lat!r}")
    return LinkSpec(str(link.get("name", "measured")), _pos(link.get("bandwidth"), where, "link.bandwidth"),
                    float(lat), span)


def cluster_from_profile(d: Mapping[str, Any], *, where: str = "profile",
                         num_devices: int | None = None) -> ClusterSpec:
    """The one-node cluster a profile measured (``num_devices`` overrides the recorded count)."""
    n = d.get("num_devices") if num_devices is None else num_devices
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{where}: num_devices must be an integer >= 1, got {n!r}")
    dev = _measured_device(d, where)
    return ClusterSpec(f"measured-{d.get('platform', 'local')}", dev, 1, n,
                       (_measured_link(d, where, dev.name, n),))


def local_cluster(profile: str | Path | None = None) -> ClusterSpec:
    """``jax.devices()`` as one node; with ``profile``, its measured numbers replace the catalog ones."""
    import jax

    devs = jax.devices()
    d0 = devs[0]
    if profile is not None:
        return cluster_from_profile(load_profile(profile), where=str(profile), num_devices=len(devs))
    return catalog_node(d0.platform, getattr(d0, "device_kind", d0.platform), len(devs))


def catalog_node(platform: str, device_kind: str, num_devices: int) -> ClusterSpec:
    """One node of ``num_devices`` devices that jax reports as ``device_kind``, with the catalog's figures
    and the link that joins such devices inside a node."""
    name = catalog_name_for(platform, device_kind)
    link = LinkSpec(*_LOCAL_LINKS.get(name, _DEFAULT_LINK), span=num_devices)
    return ClusterSpec(f"local-{platform}", device(name), 1, num_devices, (link,))
