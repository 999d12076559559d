"""``autopar show PLAN.json``: print a saved plan with the inspector's tables (no program needed).

Consumes: a plan file. Produces: the overview, stage, input and collective tables (shapes and the op table
need the traced program: use ``autopar inspect``); ``--report FILE.html`` an HTML report without sharding
maps. Refuses: a missing file or an unsupported schema version (exit status 1).
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "print a saved plan (JSON) as tables"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("show", help=HELP, description=HELP + ".")
    p.add_argument("plan", help="a plan saved by Plan.save / autopar inspect --save")
    p.add_argument("--params", type=int, default=20, metavar="N", help="input rows to show (default 20)")
    p.add_argument("--report", default=None, metavar="FILE.html", help="write a self-contained HTML report")
    return p


def run(args: argparse.Namespace) -> int:
    from autopar.cli.render import make_console, print_plan
    from autopar.plan import Plan

    plan = Plan.load(args.plan)
    console = make_console()
    print_plan(console, plan, None, params=args.params)
    if args.report:
        from autopar.report.html import write_report

        write_report(args.report, plan, title=f"autopar plan: {args.plan}")
        console.print(f"wrote {args.report}")
    return 0
