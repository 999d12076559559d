"""``autopar audit TARGET|PLAN.json``: compile the planned program on the local devices and compare XLA's
per-device memory, collective bytes and counts, and flops with the plan's prediction.

Consumes: a target and the planning flags (plans it, as ``inspect``), or a plan file written by ``autopar
inspect --save`` (it records its target and batch_argnums; otherwise give ``--target``). Produces: the
predicted / compiled table with ratios (predicted / compiled) on stdout; ``--json FILE`` the
``AuditReport.to_dict()``; ``--report FILE.html``. With ``--strict``, exit status 1 when a checked ratio
(memory, bytes per collective kind) is outside ``1 +- --tolerance``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from autopar.cli.options import add_output_flags, add_plan_flags

HELP = "compile a plan's program on the local devices and check the prediction against XLA"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("audit", help=HELP, description=HELP + ".")
    p.add_argument("target", help="module:factory, path/to/file.py:factory, a bench model name, or a plan .json")
    p.add_argument("--target", dest="program", default=None, metavar="TARGET",
                   help="the program of a plan file (default: the target the plan records)")
    add_plan_flags(p)
    add_output_flags(p)
    p.add_argument("--report", default=None, metavar="FILE.html", help="write an HTML report with the audit")
    p.add_argument("--strict", action="store_true", help="exit 1 when a ratio is outside 1 +- tolerance")
    p.add_argument("--tolerance", type=float, default=0.1, help="allowed |ratio - 1| (default 0.1)")
    return p


def run(args: argparse.Namespace) -> int:
    import autopar
    from autopar.audit import audit
    from autopar.cli.options import cluster_from_args, parse_argnums, plan_kwargs
    from autopar.cli.planning import plan_target
    from autopar.cli.progress import Progress
    from autopar.cli.render import audit_table, make_console
    from autopar.cli.targets import load_target

    if args.tolerance < 0:
        raise ValueError(f"--tolerance {args.tolerance}: must be >= 0")
    progress = Progress(args.quiet)
    console = make_console()
    graph = None
    if args.target.endswith(".json"):
        plan = autopar.Plan.load(args.target)
        record = (plan.search or {}).get("cli", {})
        program = args.program or record.get("target")
        if not program:
            raise ValueError(f"{args.target} does not record its target (it was not written by autopar inspect); "
                             "give --target module:factory")
        batch = parse_argnums(args.batch_argnums) if args.batch_argnums else record.get("batch_argnums")
        with progress.phase(f"loading {program}"):
            target = load_target(program)
    else:
        kw = plan_kwargs(args)
        cluster_from_args(args)
        with progress.phase(f"loading {args.target}"):
            target = load_target(args.target)
        plan, graph = plan_target(args, target, progress)
        batch = kw["batch_argnums"]
    with progress.phase("compiling the emitted program"):
        report = audit(target.fn, *target.args, plan=plan,
                       batch_argnums=tuple(batch) if batch is not None else None,
                       donate_argnums=parse_argnums(args.donate_argnums, "--donate-argnums") or ())
    console.print(audit_table(report, args.tolerance))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1, default=_json_number))
        console.print(f"wrote {args.json}")
    if args.report:
        from autopar.report.html import write_report

        write_report(args.report, plan, graph, report, title=f"autopar audit: {args.target}")
        console.print(f"wrote {args.report}")
    bad = report.failures(args.tolerance)
    if bad:
        text = ", ".join(f"{k} {v:.3f}" for k, v in bad.items())
        print(f"autopar audit: {len(bad)} ratio(s) outside 1 +- {args.tolerance}: {text}", file=sys.stderr)
        return 1 if args.strict else 0
    return 0


def _json_number(x: Any) -> Any:
    return float(x)
