"""Pipeline schedules: the order in which each stage runs its forward and backward work per microbatch.

Consumes: the number of stages p and of microbatches m. Produces: per stage, a list of ``(phase,
microbatch)`` — GPipe (all forwards, then all backwards) or 1F1B (p - s - 1 warm-up forwards, then one
forward / one backward, then the remaining backwards), plus the analytic bubble and the number of
microbatches each stage keeps in flight (whose activations it stores).
"""

from __future__ import annotations

from typing import Callable

SCHEDULES = ("1f1b", "gpipe")

Order = list[tuple[str, int]]


def gpipe(p: int, m: int, stage: int) -> Order:
    return [("forward", i) for i in range(m)] + [("backward", i) for i in range(m)]


def one_f_one_b(p: int, m: int, stage: int) -> Order:
    warmup = min(p - stage - 1, m)
    order: Order = [("forward", i) for i in range(warmup)]
    f, b = warmup, 0
    while b < m:
        if f < m:
            order.append(("forward", f))
            f += 1
        order.append(("backward", b))
        b += 1
    return order


SCHEDULE_ORDERS: dict[str, Callable[[int, int, int], Order]] = {"gpipe": gpipe, "1f1b": one_f_one_b}


def stage_order(schedule: str, p: int, m: int, stage: int) -> Order:
    if schedule not in SCHEDULE_ORDERS:
        raise ValueError(f"schedule {schedule!r} is not known; use one of {', '.join(SCHEDULES)}")
    return SCHEDULE_ORDERS[schedule](p, m, stage)


def max_in_flight(order: Order) -> int:
    """The most microbatches whose forward ran and whose backward has not (activations stored at once)."""
    live, most = 0, 0
    for phase, _ in order:
        live += 1 if phase == "forward" else -1
        most = max(most, live)
    return most


def in_flight(schedule: str, p: int, m: int, stage: int) -> int:
    return max_in_flight(stage_order(schedule, p, m, stage))


def bubble_fraction(p: int, m: int) -> float:
    """Idle share of a synchronous pipeline with equal stages: (p - 1) / (m + p - 1)."""
    return (p - 1) / (m + p - 1)


def bubble_of(stage_times: list[float], m: int) -> float:
    """Idle share of the devices over the forward/backward part: 1 - busy / (p x span); equals
    ``bubble_fraction(p, m)`` when the stages are equal."""
    p = len(stage_times)
    span = pipeline_time(stage_times, m)
    return max(0.0, 1.0 - sum(stage_times) * m / (p * span)) if span > 0 and p > 1 else 0.0


def pipeline_time(stage_times: list[float], m: int) -> float:
    """Step time of the forward/backward part: sum of stage times + (m - 1) x the slowest stage."""
    if not stage_times:
        return 0.0
    return sum(stage_times) + (m - 1) * max(stage_times)
