"""Count communication collectives in XLA HLO text (``compiled.as_text()``), for tests that check plans.

Consumes: HLO module text. Produces: ``Counter`` of collective kind -> number of instructions, and the
instruction lines themselves (to report which ops differ from a prediction).
Kinds: all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute. Async pairs count once: the
``-start`` instruction is counted, its ``-done`` is not. Instructions in every computation count once each
(a collective in a loop body counts once, not once per trip). XLA's combiners merge several all-reduces
(all-gathers, reduce-scatters) into one instruction with a tuple result: ``count_collectives`` counts each
tuple element, so the count is per tensor communicated, as a plan predicts it (an all-to-all's tuple holds
the pieces of one exchange and counts once).
"""

from __future__ import annotations

import re
from collections import Counter

KINDS: tuple[str, ...] = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

# `%name = <type> <opcode>(` where opcode is a kind, optionally with `-start`; `-done` does not match.
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\s(" + "|".join(KINDS) + r")(-start)?\(")


def collective_lines(hlo_text: str) -> list[tuple[str, str]]:
    """(kind, instruction line) of every collective instruction in ``hlo_text``."""
    out = []
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if m:
            out.append((m.group(1), line.strip()))
    return out


COMBINABLE = frozenset({"all-reduce", "all-gather", "reduce-scatter"})


def _tuple_size(line: str, kind: str) -> int:
    rtype = line.split("=", 1)[1].strip()
    if not rtype.startswith("("):
        return 1
    depth, n = 0, 1
    for ch in rtype:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 1:
            n += 1
        if depth == 0:
            break
    return n


def count_collectives(hlo_text: str) -> Counter[str]:
    """Number of collectives per kind (only kinds that occur); combined tuple collectives count per element."""
    out: Counter[str] = Counter()
    for kind, line in collective_lines(hlo_text):
        start = f"{kind}-start(" in line
        out[kind] += _tuple_size(line, kind) if kind in COMBINABLE and not start else 1
    return out


def describe(hlo_text: str) -> str:
    """One line per collective: kind, result type and the op_name from the metadata (for failure messages)."""
    rows = []
    for kind, line in collective_lines(hlo_text):
        rtype = line.split("=", 1)[1].strip().split(f" {kind}", 1)[0]
        name = re.search(r'op_name="([^"]*)"', line)
        rows.append(f"{kind:<18} {rtype:<28} {name.group(1) if name else ''}")
    return "\n".join(rows)
