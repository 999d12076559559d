"""Which temporaries XLA's buffer assignment puts into the program outputs' allocations.

Consumes: the temporaries of one program as (bytes, first op, last op) intervals and the program outputs'
allocations as (bytes, occupied intervals). Produces: the temporaries left for the temp allocation (the rest
share an output's allocation and cost nothing in ``memory_analysis().temp_size_in_bytes``).

XLA's ``BufferAssigner`` (xla/service/buffer_assignment.cc, ``AssignBuffersForComputations`` with the default
``kBiggestFirst`` order) visits the buffers largest first, live-out ones first among equal sizes. A live-out
value gets an allocation of its own, which is reported as output bytes; a temporary first tries the
allocations that already exist (``MaybeAssignBuffer``: no larger than the allocation, a reusable allocation —
not an undonated parameter nor a constant — and no live range overlapping a value already assigned there),
the smallest first, and only when none takes it is it left to the heap simulation of the temp allocation.
Output allocations are free until their values are written (a train step's new weights and optimizer state:
the update, at the program's end), so activations and gradients no larger than a weight go into them: XLA:CPU
reports 0.25 MiB of temporaries for gpt_tiny at batch 4, with 1 MiB of activations live at the end of the
forward (``maybe-live-out`` allocations in ``*buffer-assignment.txt`` list them).
Refuses nothing; intervals are closed (a value read by op ``k`` interferes with one written by op ``k``).
"""

from __future__ import annotations

import bisect
from typing import Sequence

Interval = tuple[float, int, int]                      # (bytes, first op, last op)
Allocation = tuple[float, list[tuple[int, int]]]       # (bytes, occupied op ranges)


def _overlaps(first: int, last: int, taken: Sequence[tuple[int, int]]) -> bool:
    return any(first <= b and a <= last for a, b in taken)


def place_in_outputs(temps: Sequence[Interval], outputs: Sequence[Allocation]) -> list[Interval]:
    """The temporaries that stay in the temp allocation after XLA's largest-first reuse of the output
    allocations (``outputs``: each allocation's bytes and the op ranges its own value already occupies)."""
    allocs = sorted(((b, list(taken)) for b, taken in outputs if b > 0), key=lambda a: a[0])
    sizes = [b for b, _ in allocs]
    left: list[Interval] = []
    for nbytes, first, last in sorted(temps, key=lambda t: (-t[0], t[1])):
        placed = False
        if nbytes > 0:
            for _, taken in allocs[bisect.bisect_left(sizes, nbytes):]:   # the smallest that fits first
                if not _overlaps(first, last, taken):
                    taken.append((first, last))
                    placed = True
                    break
        if not placed:
            left.append((nbytes, first, last))
    return left
