"""Run a suite's planning work in worker processes (``autopar bench --jobs N``).

Consumes: the suite's cases. Produces: the same records as ``bench.runner.run_case`` (planned by the same
functions, so a case's numbers do not depend on ``jobs`` beyond what a time-limited ILP reaches in its
limit on a busier machine), handed to ``on_record`` as each case completes and returned in suite order.

A case splits into units that plan independently: its own method, each data-parallel baseline, Alpa's
plan, and the Manual3D grid per (dp, tp, pp) shape (``prune_manual3d`` prunes only within a shape, so the
split plans nothing that the sequential run would have skipped, except a shape's configurations after an
"unavailable" one, which the sequential run stops at). Workers are spawned, not forked (JAX is not
fork-safe); each keeps its own intra-op cache, so the work is the sequential run's or somewhat more, and
search times are those of a process sharing the machine with ``jobs - 1`` others.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

from bench.baselines import (Outcome, evaluate, manual3d_grid, manual3d_outcomes, manual3d_shapes, outcome_text,
                             run_baselines, summarise_manual3d)
from bench.runner import batch_size_of, build_case, case_record, warm_up
from bench.suite import Case, cluster_for, method_from_spec, method_label

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class Unit:
    """One independently planned piece of a case."""

    case: Case
    kind: str                       # "main" (the case's own method), a baseline kind, or "manual3d"
    shape: Shape | None = None      # "manual3d": the grid's (dp, tp, pp) this unit plans

    @property
    def key(self) -> tuple[str, str, Shape | None]:
        return self.case.name, self.kind, self.shape

    def describe(self) -> str:
        if self.kind == "manual3d":
            dp, tp, pp = self.shape or (0, 0, 0)
            return f"{self.case.name} [Manual3D dp {dp} tp {tp} pp {pp}]"
        return f"{self.case.name} [{method_label(self.case.method) if self.kind == 'main' else self.kind}]"


def _grid(case: Case, args: tuple[Any, ...]) -> list[Any]:
    cluster = cluster_for(case)
    return manual3d_grid(cluster.num_devices, cluster.devices_per_node, batch_size_of(args))


def units_of(case: Case, baselines: bool = True) -> list[Unit]:
    """The case's units: its own method first, then the Manual3D shapes in grid order, then the rest."""
    units = [Unit(case, "main")]
    if not baselines:
        return units
    if "manual3d" in case.baselines:
        _fn, args = build_case(case)
        units += [Unit(case, "manual3d", s) for s in manual3d_shapes(_grid(case, args))]
    units += [Unit(case, k) for k in case.baselines if k != "manual3d" and (k != "alpa" or case.alpa)]
    return units


_BUILT: dict[str, tuple[Any, tuple[Any, ...]]] = {}    # per worker process: each case is built once


def run_unit(unit: Unit) -> tuple[list[Outcome], list[str]]:
    """Plan one unit (in a worker); its outcomes (a Manual3D shape: one per configuration planned, in grid
    order) and its log lines."""
    case = unit.case
    if case.name not in _BUILT:
        _BUILT[case.name] = build_case(case)
    fn, args = _BUILT[case.name]
    cluster = cluster_for(case)
    lines: list[str] = []
    if unit.kind == "main":
        o = evaluate(fn, args, cluster, method_from_spec(case.method), method_label(case.method),
                     donate=case.donate_argnums)
        lines.append(f"  {o.label}: {outcome_text(o)}")
        return [o], lines
    if unit.kind == "manual3d":
        grid = [m for m in _grid(case, args) if (m.dp, m.tp, m.pp) == unit.shape]
        outs: list[Outcome] = []
        for o in manual3d_outcomes(fn, args, cluster, grid, case.donate_argnums, lines.append):
            outs.append(o)
            if o.status.startswith("unavailable") and not any(x.ok or x.status == "does not fit" for x in outs):
                break
        return outs, lines
    got = run_baselines((unit.kind,), fn, args, cluster, batch_size_of(args), case.alpa,
                        donate=case.donate_argnums, log=lines.append)
    return list(got.values()), lines


def _assemble(case: Case, units: list[Unit], done: dict[tuple[str, str, Shape | None], list[Outcome]],
              wall_s: float, log: Callable[[str], None]) -> dict[str, Any]:
    main = done[Unit(case, "main").key][0]
    others: dict[str, Outcome] = {}
    for kind in case.baselines:
        outs = [o for u in units if u.kind == kind for o in done[u.key]]    # Manual3D: in grid order
        if kind == "manual3d" and outs:
            others[kind] = summarise_manual3d(outs)
            log(f"  {case.name} manual3d: {others[kind].label}: {outcome_text(others[kind])}")
        elif outs:
            others[kind] = outs[0]
    return case_record(case, cluster_for(case).num_devices, main, others, wall_s)


def run_parallel(cases: tuple[Case, ...] | list[Case], *, jobs: int, baselines: bool = True,
                 log: Callable[[str], None] = lambda m: None,
                 on_record: Callable[[list[dict[str, Any]]], None] = lambda recs: None) -> list[dict[str, Any]]:
    """Plan ``cases`` with ``jobs`` worker processes; ``on_record`` gets the records completed so far (in
    suite order) each time a case completes. A record's ``wall_s`` is the time from the start of the run to
    the case's completion."""
    if jobs < 1:
        raise ValueError(f"jobs={jobs}: the number of worker processes must be at least 1")
    t0 = time.perf_counter()
    per_case = {c.name: units_of(c, baselines) for c in cases}
    remaining = {name: len(us) for name, us in per_case.items()}
    done: dict[tuple[str, str, Shape | None], list[Outcome]] = {}
    records: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=warm_up) as pool:
        # every case's own method first (usually the longest unit: the search), then the rest by case
        order = [us[0] for us in per_case.values()] + [u for us in per_case.values() for u in us[1:]]
        pending: dict[Future[tuple[list[Outcome], list[str]]], Unit] = {pool.submit(run_unit, u): u for u in order}
        log(f"{len(pending)} units of {len(cases)} case(s) on {jobs} worker process(es)")
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                unit = pending.pop(fut)
                try:
                    outs, lines = fut.result()
                except Exception as e:
                    raise RuntimeError(f"{unit.describe()} failed in its worker: {e}") from e
                done[unit.key] = outs
                log(f"{unit.describe()} ({time.perf_counter() - t0:.0f} s)")
                for line in lines:
                    log(f"  {line}")
                remaining[unit.case.name] -= 1
                if remaining[unit.case.name] == 0:
                    records[unit.case.name] = _assemble(unit.case, per_case[unit.case.name], done,
                                                       time.perf_counter() - t0, log)
                    on_record([records[c.name] for c in cases if c.name in records])
    return [records[c.name] for c in cases]
