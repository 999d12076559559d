"""Planning options shared by ``inspect``, ``audit`` and ``run``: argparse flags and their parsing.

Consumes: argv strings (``--mesh 2x4``, ``--method manual:2,4,1``, ``--memory-budget 40GB``, ``--cluster``...).
Produces: a method object, a ClusterSpec (or None: the local devices), a byte count, argnums.
Refuses (ValueError naming the flag and the accepted forms): a bad mesh, an unknown method or preset, a bad
size, ``--mesh`` with a method that does not take it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

__all__ = ["add_output_flags", "add_plan_flags", "cluster_from_args", "method_from_args", "parse_bytes",
           "parse_mesh", "plan_kwargs"]

# unit -> bytes (decimal SI and binary IEC), with no unit meaning bytes.
BYTE_UNITS: dict[str, int] = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
                              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
METHOD_NAMES = ("auto", "shard", "pipeshard", "data", "zero3", "manual:dp,tp,pp")


def add_plan_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", default=None, metavar="PRESET|FILE",
                   help="cluster to plan for: a preset (dgx-a100, p3.16xlarge, cpu, ...) or a .toml/.json file "
                        "(default: the local devices)")
    p.add_argument("--nodes", type=int, default=None, help="nodes of a preset cluster (default 1)")
    p.add_argument("--mesh", default=None, metavar="AxB", help="logical mesh shape, e.g. 8 or 2x4 (shard/auto)")
    p.add_argument("--method", default="auto", metavar="METHOD",
                   help="auto | shard | pipeshard | data | zero3 | manual:dp,tp,pp (default: auto)")
    p.add_argument("--memory-budget", default=None, metavar="SIZE", help="per-device budget, e.g. 40GB, 512MiB")
    p.add_argument("--microbatches", type=int, default=None, metavar="N",
                   help="pipeline microbatches, or gradient accumulation steps for shard, data and zero3")
    p.add_argument("--batch-argnums", default=None, metavar="I[,J]",
                   help="arguments holding batch data (default: every argument after the first)")
    p.add_argument("--donate-argnums", default=None, metavar="I[,J]",
                   help="arguments the step may overwrite (its train state, usually 0): their buffers are reused "
                        "for its outputs, which the memory estimate counts (default: none)")
    p.add_argument("--solver", default="ortools", choices=("ortools", "pulp"), help="ILP backend")
    p.add_argument("--time-limit", type=float, default=None, metavar="S", help="seconds per ILP solve")


def add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default=None, metavar="FILE", help="write the result as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")


def parse_mesh(text: str) -> tuple[int, ...]:
    parts = re.split(r"[x,*]", text.strip().lower())
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"--mesh {text!r}: expected positive sizes joined by 'x', e.g. 8, 2x4 or 2x2x2")
    return shape


def parse_bytes(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).upper() if m else None
    if m is None or unit not in BYTE_UNITS:
        raise ValueError(f"--memory-budget {text!r}: expected a size such as 40GB, 512MiB or 1e9 "
                         f"(units: {', '.join(u for u in BYTE_UNITS if u)})")
    return float(m.group(1)) * BYTE_UNITS[unit]


def parse_argnums(text: str | None, flag: str = "--batch-argnums") -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        nums = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        nums = (-1,)
    if any(n < 0 for n in nums):
        raise ValueError(f"{flag} {text!r}: expected argument positions such as 1 or 1,2")
    return nums


def method_from_args(args: argparse.Namespace) -> Any:
    from autopar.methods import DataParallel, Manual3D, PipeshardParallel, ShardParallel, ZeroParallel

    name = args.method.strip().lower()
    mesh = parse_mesh(args.mesh) if args.mesh else None
    mb = args.microbatches
    if mb is not None and mb < 1:
        raise ValueError(f"--microbatches {mb}: must be >= 1")
    if mesh is not None and name not in ("auto", "shard"):
        raise ValueError(f"--mesh applies to --method shard or auto, not {args.method!r}")
    if name.startswith("manual"):
        m = re.fullmatch(r"manual:(\d+),(\d+),(\d+)", name)
        if m is None:
            raise ValueError(f"--method {args.method!r}: write manual:dp,tp,pp, e.g. manual:2,4,1")
        dp, tp, pp = (int(g) for g in m.groups())
        return Manual3D(dp=dp, tp=tp, pp=pp, num_microbatches=mb)
    if name == "pipeshard":
        return PipeshardParallel(num_microbatches=mb)
    table: dict[str, Any] = {"data": lambda: DataParallel(num_microbatches=mb),
                             "zero3": lambda: ZeroParallel(stage=3, num_microbatches=mb),
                             "zero": lambda: ZeroParallel(stage=3, num_microbatches=mb)}
    if name in table:
        return table[name]()
    if name == "auto" and mesh is None and mb is None:
        return "auto"
    if name in ("auto", "shard"):
        return ShardParallel(mesh_shape=mesh, num_microbatches=mb)
    raise ValueError(f"--method {args.method!r} is unknown: use one of {', '.join(METHOD_NAMES)}")


def cluster_from_args(args: argparse.Namespace) -> Any:
    """The ClusterSpec to plan for; None means the local devices."""
    from autopar.cost_models.cluster import PRESETS, ClusterSpec

    if args.nodes is not None and args.nodes < 1:
        raise ValueError(f"--nodes {args.nodes}: must be >= 1")
    if args.cluster is None:
        if args.nodes not in (None, 1):
            raise ValueError("--nodes needs --cluster PRESET")
        return None
    path = Path(args.cluster)
    if path.suffix.lower() in (".toml", ".json"):
        if args.nodes is not None:
            raise ValueError("--nodes applies to a preset; a cluster file states its own nodes")
        return ClusterSpec.from_file(path)
    if args.cluster not in PRESETS:
        raise ValueError(f"--cluster {args.cluster!r}: unknown preset; presets: {', '.join(PRESETS)}, or a "
                         ".toml/.json cluster file")
    return ClusterSpec.preset(args.cluster, nodes=args.nodes or 1)


def plan_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``autopar.plan`` / ``autopar.audit`` from the planning flags (cluster aside)."""
    return {"method": method_from_args(args), "batch_argnums": parse_argnums(args.batch_argnums),
            "donate_argnums": parse_argnums(args.donate_argnums, "--donate-argnums") or (),
            "memory_budget": parse_bytes(args.memory_budget) if args.memory_budget else None,
            "solver": args.solver, "time_limit_s": args.time_limit}
