"""``autopar calibrate``: measure the local devices and write a calibration profile (JSON).

Consumes: ``--out`` (default ``autopar-profile.json``), ``--sizes`` (matmul sizes), ``--quick``,
``--repeats``. Produces: the profile file and a description of the measured cluster on stdout; load it with
``ClusterSpec.from_file(path)`` or ``ClusterSpec.local(profile=path)``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = "measure matmul throughput, memory bandwidth and collectives on the local devices"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("calibrate", help=HELP, description=HELP + ".")
    p.add_argument("--out", default="autopar-profile.json", help="profile path (default: %(default)s)")
    p.add_argument("--sizes", type=int, nargs="+", metavar="N",
                   help="square matmul sizes to time (default: depends on platform and --quick)")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (seconds, not minutes)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per kernel, best one kept")
    return p


def run(args: argparse.Namespace) -> int:
    from autopar.cost_models.calibration import calibrate, cluster_from_profile, write_profile

    if args.sizes is not None and any(n < 1 for n in args.sizes):
        raise ValueError(f"--sizes must be positive integers, got {args.sizes}")
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    profile = calibrate(sizes=args.sizes, quick=args.quick, repeats=args.repeats,
                        log=lambda m: print(f"  measuring {m}", file=sys.stderr))
    write_profile(profile, args.out)
    cluster = cluster_from_profile(profile, where=args.out)
    print(f"wrote {args.out} ({profile['platform']}, {profile['num_devices']} device(s), "
          f"{profile['device_kind']})")
    print(cluster.describe())
    return 0
