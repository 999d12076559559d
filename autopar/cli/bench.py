"""``autopar bench``: plan a benchmark suite, compare with baselines, gate against a committed baseline.

Consumes: ``--suite ci|full|FILE`` (a TOML/JSON suite naming ``module:function`` factories, see
``bench/suite.py`` and docs/benchmarks.md), ``--case`` filters, ``--check BASELINE`` / ``--update``,
``--json``/``--markdown``/``--plots`` outputs. Produces: a terminal table, the records as JSON, a markdown
table, PNG scaling plots; exit status 0, or 1 when the check finds a regression (the offending rows are
printed). The library lives in ``bench/`` (repository root, or anywhere on ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "plan a benchmark suite against baselines; gate predicted step time, memory and search time"
DEFAULT_BASELINE = "bench/baseline.json"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help=HELP, description=HELP + ".")
    p.add_argument("--suite", default="ci", help="ci, full, or a .toml/.json suite file (default: %(default)s)")
    p.add_argument("--case", action="append", metavar="NAME", help="run only this case (repeatable)")
    p.add_argument("--check", metavar="BASELINE", help="compare with this baseline; exit 1 on a regression")
    p.add_argument("--update", nargs="?", const="", metavar="BASELINE",
                   help=f"write the results as the new baseline (default: the --check file, else {DEFAULT_BASELINE})")
    p.add_argument("--no-baselines", action="store_true", help="plan only each case's own method (faster)")
    p.add_argument("--json", metavar="FILE", help="write the per-case records as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the table as markdown")
    p.add_argument("--plots", metavar="DIR", help="write scaling plots (PNG) here (default for --suite full: "
                                                   "bench-results/)")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="allowed growth of step time and peak memory (default: %(default)s = 1%%)")
    p.add_argument("--search-factor", type=float, default=2.0,
                   help="allowed growth factor of search time (default: %(default)s)")
    p.add_argument("--search-floor", type=float, default=1.0, metavar="S",
                   help="search times below S seconds count as S (noise floor; default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="plan in N worker processes (a case's method, baselines and Manual3D shapes in parallel; "
                        "search times then include the contention; default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _import_bench() -> None:
    """Make ``bench`` (and a user's own factory modules) importable: the working directory first, then the
    repository autopar was installed from in editable mode."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "bench" / "__init__.py").exists() and str(root) not in sys.path:
            sys.path.insert(0, str(root))
            break
    if str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))
    try:
        import bench  # noqa: F401
    except ImportError as e:
        raise ValueError(f"cannot import the 'bench' package ({e}); run from the autopar repository root or "
                         "add it to PYTHONPATH") from None


def run(args: argparse.Namespace) -> int:
    if args.tolerance < 0 or args.search_factor < 1 or args.search_floor < 0:
        raise ValueError("--tolerance must be >= 0, --search-factor >= 1 and --search-floor >= 0")
    if args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: give the number of worker processes, at least 1")
    _import_bench()
    from bench.plots import markdown_table, print_table, scaling_plots
    from bench.runner import check, format_violations, load_baseline, run_case, write_baseline
    from bench.suite import load_suite

    suite = load_suite(args.suite).select(args.case)
    baseline = load_baseline(args.check) if args.check and args.update is None else None
    log = (lambda m: None) if args.quiet else (lambda m: print(f"  {m}", file=sys.stderr, flush=True))

    def save(records: list[dict[str, Any]]) -> None:
        # the JSON is rewritten after every case: a long run cut short keeps its completed cases
        if args.json:
            Path(args.json).write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")

    records: list[dict[str, Any]] = []
    if args.jobs > 1:
        from bench.parallel import run_parallel

        records = run_parallel(suite.cases, jobs=args.jobs, baselines=not args.no_baselines, log=log,
                               on_record=save)
    else:
        for case in suite.cases:
            records.append(run_case(case, baselines=not args.no_baselines, log=log))
            save(records)

    print_table(records, title=f"autopar bench --suite {suite.name}")
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(records) + "\n")
    plots_dir = args.plots or ("bench-results" if args.suite == "full" else None)
    if plots_dir:
        for path in scaling_plots(records, plots_dir):
            print(f"wrote {path}")

    if args.update is not None:
        target = args.update or args.check or DEFAULT_BASELINE
        write_baseline(target, suite, records)
        print(f"wrote baseline {target} ({len(records)} case(s))")
        return 0
    if baseline is None:
        return 0
    violations, notes = check(records, baseline, tolerance=args.tolerance, search_factor=args.search_factor,
                              search_floor_s=args.search_floor, cases=args.case)
    for n in notes:
        print(f"note: {n}")
    if violations:
        print(f"\nREGRESSION against {args.check}: {len(violations)} offending row(s)\n" +
              format_violations(violations))
        return 1
    print(f"check against {args.check}: {len(records)} case(s) within limits")
    return 0
