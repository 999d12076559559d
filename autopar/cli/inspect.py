"""``autopar inspect TARGET``: plan a target and show the plan (overview, stages, inputs, ops, collectives).

Consumes: a target (``module:factory``, ``path/file.py:factory``, a bench model name) and the planning flags
of ``autopar.cli.options``. Produces: rich tables on stdout; ``--json FILE`` the plan in the documented schema
(``docs/plan_format.md``), ``--save FILE`` the same replayable plan, ``--report FILE.html`` a self-contained
HTML report. Refuses: see ``autopar.cli.targets`` and ``autopar.cli.options`` (exit status 1, message on stderr).
"""

from __future__ import annotations

import argparse
from typing import Any

from autopar.cli.options import add_output_flags, add_plan_flags

HELP = "plan a target and show the plan: cost, stages, shardings, expensive ops, collectives"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("inspect", help=HELP, description=HELP + ".")
    p.add_argument("target", help="module:factory, path/to/file.py:factory or a bench model name; the factory "
                                  "returns (fn, args)")
    add_plan_flags(p)
    add_output_flags(p)
    p.add_argument("--save", default=None, metavar="FILE", help="write the plan for replay (parallelize(plan=...))")
    p.add_argument("--report", default=None, metavar="FILE.html", help="write a self-contained HTML report")
    p.add_argument("--params", type=int, default=20, metavar="N", help="input rows to show (default 20)")
    p.add_argument("--ops", type=int, default=10, metavar="N", help="most expensive ops to show (default 10)")
    return p


def run(args: argparse.Namespace) -> int:
    from autopar.cli.options import cluster_from_args, method_from_args
    from autopar.cli.planning import plan_target
    from autopar.cli.progress import Progress
    from autopar.cli.render import make_console, print_plan
    from autopar.cli.targets import load_target

    method_from_args(args)              # flag errors before the (slow) target is loaded
    cluster_from_args(args)
    progress = Progress(args.quiet)
    with progress.phase(f"loading {args.target}"):
        target = load_target(args.target)
    plan, graph = plan_target(args, target, progress)
    console = make_console()
    print_plan(console, plan, graph, params=args.params, ops=args.ops)
    write_outputs(args, plan, graph, console, title=f"autopar plan: {args.target}")
    return 0


def write_outputs(args: argparse.Namespace, plan: Any, graph: Any, console: Any, audit: Any = None,
                  title: str = "autopar plan") -> None:
    for path in (getattr(args, "json", None), getattr(args, "save", None)):
        if path:
            plan.save(path)
            console.print(f"wrote {path}")
    if getattr(args, "report", None):
        from autopar.report.html import write_report

        write_report(args.report, plan, graph, audit, title=title)
        console.print(f"wrote {args.report}")
