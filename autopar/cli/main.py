"""``autopar`` command-line entry point.

Consumes: argv. Produces: an exit status (0 success, 2 usage error, 1 a failure reported on stderr).
Subcommands live in their own modules, registered in ``SUBCOMMANDS`` (name -> module path). Each module
exposes ``HELP: str``, ``add_parser(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``;
modules are imported when the parser is built, so they must not import jax at module level.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Sequence

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

# subcommand name -> module implementing it.
SUBCOMMANDS: dict[str, str] = {
    "calibrate": "autopar.cli.calibrate",
    "inspect": "autopar.cli.inspect",
    "show": "autopar.cli.show",
    "diff": "autopar.cli.diff",
    "audit": "autopar.cli.audit",
    "run": "autopar.cli.run",
    "bench": "autopar.cli.bench",
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(SUBCOMMANDS[name])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autopar", description="autopar: auto-parallelizing compiler for JAX.")
    sub = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    for name in SUBCOMMANDS:
        p = _module(name).add_parser(sub)
        p.set_defaults(_command=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if getattr(args, "_command", None) is None:
        parser.print_help()
        return 2
    try:
        return int(_module(args._command).run(args))
    except (ValueError, KeyError, OSError) as e:
        print(f"autopar {args._command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
