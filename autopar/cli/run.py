"""``autopar run TARGET``: plan a small target for the local devices, run a few steps, and print the plan,
the audit of the compiled program and the measured step time next to the predicted one.

Consumes: a target and the planning flags (``--cluster`` must describe as many devices as are local;
default: the local devices), ``--steps N`` (timed calls after one warm-up call). Produces: tables on stdout;
``--json FILE`` ``{"plan", "audit", "measured_step_time_s", "predicted_step_time_s"}``. Abstract arguments
(``ShapeDtypeStruct``) are run as zeros. Refuses: what ``inspect`` refuses; ``--steps`` < 1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from autopar.cli.options import add_output_flags, add_plan_flags

HELP = "plan and run a small target on the local devices: plan, audit, measured step time"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("run", help=HELP, description=HELP + ".")
    p.add_argument("target", help="module:factory, path/to/file.py:factory or a bench model name")
    add_plan_flags(p)
    add_output_flags(p)
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (default 3)")
    return p


def _concrete(args: tuple[Any, ...]) -> tuple[Any, ...]:
    import jax
    import jax.numpy as jnp

    def real(x: Any) -> Any:
        return jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x

    return tuple(jax.tree.map(real, a) for a in args)


def run(args: argparse.Namespace) -> int:
    import jax

    import autopar
    from autopar.audit import audit
    from autopar.cli.options import cluster_from_args, plan_kwargs
    from autopar.cli.planning import plan_target
    from autopar.cli.progress import Progress
    from autopar.cli.render import audit_table, make_console, overview_table, stages_table, collectives_table
    from autopar.cli.targets import load_target

    if args.steps < 1:
        raise ValueError(f"--steps {args.steps}: must be >= 1")
    kw = plan_kwargs(args)
    cluster = cluster_from_args(args)
    if cluster is not None and cluster.num_devices != len(jax.devices()):
        raise ValueError(f"--cluster {args.cluster} has {cluster.num_devices} devices but {len(jax.devices())} are "
                         "local; run needs a cluster of the local devices (leave --cluster out)")
    progress = Progress(args.quiet)
    with progress.phase(f"loading {args.target}"):
        target = load_target(args.target)
    plan, graph = plan_target(args, target, progress)
    console = make_console()
    for table in (overview_table(plan), stages_table(plan, graph), collectives_table(plan)):
        console.print(table)
    batch = kw["batch_argnums"]
    with progress.phase("compiling for the audit"):
        report = audit(target.fn, *target.args, plan=plan, batch_argnums=batch)
    console.print(audit_table(report))
    step = autopar.parallelize(target.fn, plan=plan, batch_argnums=batch)
    real = _concrete(target.args)
    with progress.phase(f"running 1 + {args.steps} steps"):
        jax.block_until_ready(step(*real))
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            jax.block_until_ready(step(*real))
            times.append(time.perf_counter() - start)
    measured = min(times)
    predicted = plan.estimate.step_time_s
    console.print(f"step time: measured {measured * 1e3:.3f} ms (best of {args.steps}), predicted "
                  f"{predicted * 1e3:.3f} ms (ratio predicted / measured {predicted / measured:.3f}) on "
                  f"{len(jax.devices())} {jax.devices()[0].platform} device(s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"plan": plan.to_dict(), "audit": report.to_dict(),
                                               "measured_step_time_s": measured, "predicted_step_time_s": predicted,
                                               "step_times_s": times}, indent=1))
        console.print(f"wrote {args.json}")
    return 0
