"""The predicted pipeline schedule of a Plan: when each stage runs each microbatch's forward and backward.

Consumes: a Plan (per-stage ``estimate.step_time_s``; ``method_options["num_microbatches"]`` and
``["schedule"]`` = ``"1f1b"`` | ``"gpipe"``). Produces: ``Slot``s (stage, microbatch, "F"/"B", start, end) for
the Gantt chart. A stage's time per microbatch is its step time / microbatches, split forward : backward =
1 : 2 (``FORWARD_SHARE``; the backward pass does two matmuls per forward one). A single stage gives one
forward and one backward slot per microbatch, back to back.
Refuses: nothing; a plan without microbatches is drawn with one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FORWARD_SHARE", "Slot", "pipeline_schedule", "task_order"]

FORWARD_SHARE = 1.0 / 3.0


@dataclass(frozen=True)
class Slot:
    stage: int
    microbatch: int
    kind: str        # "F" or "B"
    start: float
    end: float


def task_order(num_stages: int, num_micro: int, stage: int, schedule: str) -> list[tuple[str, int]]:
    """The order stage ``stage`` runs its tasks: GPipe all forwards then all backwards; 1F1B warms up with
    ``num_stages - stage - 1`` forwards, then alternates one forward and one backward, then drains."""
    if schedule == "gpipe" or num_stages == 1:
        if num_stages == 1:
            return [t for m in range(num_micro) for t in (("F", m), ("B", m))]
        return [("F", m) for m in range(num_micro)] + [("B", m) for m in range(num_micro)]
    warm = min(num_stages - stage - 1, num_micro)
    order = [("F", m) for m in range(warm)]
    f, b = warm, 0
    while f < num_micro:
        order += [("F", f), ("B", b)]
        f, b = f + 1, b + 1
    order += [("B", m) for m in range(b, num_micro)]
    return order


def pipeline_schedule(plan: Any) -> list[Slot]:
    opts = plan.method_options or {}
    micro = int(opts.get("num_microbatches") or 1)
    schedule = str(opts.get("schedule") or "1f1b")
    n = len(plan.stages)
    fwd = [s.estimate.step_time_s / micro * FORWARD_SHARE for s in plan.stages]
    bwd = [s.estimate.step_time_s / micro * (1 - FORWARD_SHARE) for s in plan.stages]
    orders = [task_order(n, micro, s, schedule) for s in range(n)]
    done: dict[tuple[int, str, int], float] = {}
    free = [0.0] * n
    pos = [0] * n
    slots: list[Slot] = []
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for s in range(n):
            if pos[s] == len(orders[s]):
                continue
            kind, m = orders[s][pos[s]]
            deps = [(s - 1, "F", m)] if kind == "F" and s > 0 else []
            if kind == "B":
                deps = [(s, "F", m)] + ([(s + 1, "B", m)] if s < n - 1 else [])
            if any(d not in done for d in deps):
                continue
            start = max([free[s]] + [done[d] for d in deps])
            end = start + (fwd[s] if kind == "F" else bwd[s])
            done[(s, kind, m)] = free[s] = end
            slots.append(Slot(s, m, kind, start, end))
            pos[s] += 1
            remaining -= 1
            progressed = True
        if not progressed:
            raise AssertionError("pipeline schedule deadlocked (bug in task_order)")
    return slots
