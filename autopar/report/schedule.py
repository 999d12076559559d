"""The predicted pipeline schedule of a Plan: when each stage runs each microbatch's forward and backward.

Consumes: a Plan (per-stage ``estimate.step_time_s``; ``method_options["num_microbatches"]`` and
``["schedule"]`` = ``"1f1b"`` | ``"gpipe"``). Produces: ``Slot``s (stage, microbatch, "F"/"B", start, end) for
the Gantt chart. A stage's time per microbatch (a pipelined plan's stage estimate; otherwise the stage's step
time / microbatches) is split forward : backward =
1 : 2 (``FORWARD_SHARE``; the backward pass does two matmuls per forward one). A single stage gives one
forward and one backward slot per microbatch, back to back.
Refuses: nothing; a plan without microbatches is drawn with one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autopar.pipeline.schedule import stage_order

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
    """The order stage ``stage`` runs its tasks (``autopar.pipeline.schedule``), as ("F" | "B", microbatch)."""
    if num_stages == 1:   # one stage: each microbatch's forward and backward back to back (1F1B with no warm-up)
        schedule = "1f1b"
    return [("F" if phase == "forward" else "B", mb) for phase, mb in stage_order(schedule, num_stages, num_micro,
                                                                                  stage)]


def pipeline_schedule(plan: Any) -> list[Slot]:
    opts = plan.method_options or {}
    micro = int(opts.get("num_microbatches") or 1)
    schedule = str(opts.get("schedule") or "1f1b")
    n = len(plan.stages)
    # pipelined plans (their method_options name stage_layers) give each stage's time per microbatch already
    per_micro = [s.estimate.step_time_s / (1 if "stage_layers" in opts else micro) for s in plan.stages]
    fwd = [t * FORWARD_SHARE for t in per_micro]
    bwd = [t * (1 - FORWARD_SHARE) for t in per_micro]
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
