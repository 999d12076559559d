"""Pipeline-search benchmark (issue 4): Auto's stage search against the best hand-picked Megatron-style layout.

    python -m bench.pipeline_search                      # every case below (long: tens of minutes on 2 cores)
    python -m bench.pipeline_search --quick              # GPT-39B and GPT-2.6B only
    python -m bench.pipeline_search --cases gpt_39b --json out.json [--full-grid] [--time-limit 20]

For each case (Alpa's suite on p3.16xlarge nodes, planned for a cluster that is not here) it plans:

* **Auto** — ``PipeshardParallel(num_microbatches=M)`` with the microbatch count of Alpa's published
  p3.16xlarge solution (``perf_test_suite`` / ``perf_test_auto_suite`` in alpa/benchmark/alpa/suite_auto_*.py
  and suite_wresnet.py), and once more with ``num_microbatches=None`` (the search picks M: the grid
  {1, batch/8, batch}, then halving/doubling from the fastest) — the Auto the ratio is taken against, since
  the Manual3D grid varies M too;
* **Manual3D** — Megatron's grid, ``bench.baselines.manual3d_grid`` (the same as ``autopar bench``'s
  baseline): dp*tp*pp = devices, tp in {1, 2, 4, 8} inside a node, pp a power of two <= the layer count,
  microbatches from the micro-batch sizes 16, 4 and 1 samples per data-parallel replica (plus none when
  pp = 1); remat "none", and "full" only when "none" does not fit (``--full-grid``: always both), pruned as
  ``bench.baselines.prune_manual3d`` says.

Everything goes through ``autopar.plan`` and the same cost model. Printed per case: the search time and the
wall time of each plan (the wall time includes tracing), the predicted step time, the layout, the best Manual3D
and ``ratio`` = best Manual3D step time / Auto step time (>= 1.00: Auto wins). Consumes nothing but the model
registry; produces a table on stdout and, with ``--json``, one record per case (written after every case, so a
run cut short keeps what it finished). Refuses unknown case names (ValueError listing the known ones).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Case:
    model: str
    nodes: int
    batch: int
    microbatches: int
    source: str          # where the microbatch count comes from


# Microbatch counts: Alpa's published search solutions for p3.16xlarge (benchmark/alpa/suite_auto_gpt.py,
# suite_auto_moe.py, suite_wresnet.py of alpa-projects/alpa).
CASES: dict[str, Case] = {
    "gpt_39b": Case("gpt_39b", 8, 1024, 1024, "Alpa perf_test_suite 64 GPUs"),
    "gpt_2_6b": Case("gpt_2_6b", 1, 1024, 1024, "Alpa's 128 (perf_test_suite 8 GPUs) fits nothing in fp32 on "
                     "16 GB; one sample per microbatch"),
    "gpt_6_7b": Case("gpt_6_7b", 2, 1024, 64, "Alpa perf_test_suite 16 GPUs"),
    "gpt_15b": Case("gpt_15b", 4, 1024, 128, "Alpa perf_test_suite 32 GPUs"),
    "moe_7_1b": Case("moe_7_1b", 2, 1024, 128, "no Alpa solution (Alpa's MoE-10B/16 GPUs M=16 fits nothing "
                     "in fp32); the search's batch/8"),
    "moe_10b": Case("moe_10b", 2, 1024, 16, "Alpa perf_test_suite 16 GPUs"),
    "wresnet_4b": Case("wresnet_4b", 2, 1536, 32, "Alpa perf_test_auto_suite 16 GPUs"),
}
DEFAULT_CASES = ("gpt_39b", "gpt_2_6b", "gpt_6_7b", "gpt_15b", "moe_7_1b", "wresnet_4b")
QUICK_CASES = ("gpt_39b", "gpt_2_6b")
SEARCH_ALL_M = tuple(CASES)           # cases also planned with num_microbatches=None (the search picks M)
TP_CHOICES = (1, 2, 4, 8)


def model_layers(model: str) -> int:
    """The number of repeated blocks of a named model (the most pipeline stages that make sense)."""
    from bench.models import gpt, moe, wide_resnet

    if model in gpt.GPT_CONFIGS:
        return gpt.GPT_CONFIGS[model][1]
    if model in moe.MOE_CONFIGS:
        return moe.MOE_CONFIGS[model][1]
    if model in wide_resnet.WRESNET_CONFIGS:
        depth = wide_resnet.WRESNET_CONFIGS[model][0]
        return {50: 16, 101: 33}.get(depth, 16)     # residual blocks, as Alpa's get_num_auto_layers
    raise ValueError(f"model {model!r}: no layer count known for it")


def layout_of(plan: Any) -> str:
    """'6x[8 L x 8 dev (8,)] ...' : consecutive identical stages grouped."""
    ranges = plan.method_options.get("stage_layers") or [[0, 0]] * len(plan.stages)
    remat = plan.method_options.get("remat") or [False] * len(plan.stages)
    if not isinstance(remat, list):
        remat = [remat] * len(plan.stages)
    items = []
    for st, (a, b), r in zip(plan.stages, ranges, remat):
        mesh = "x".join(map(str, st.mesh_shape))
        items.append(f"{b - a}L/{len(st.devices)}d/{mesh}{'/remat' if r else ''}")
    groups: list[list[Any]] = []
    for it in items:
        if groups and groups[-1][0] == it:
            groups[-1][1] += 1
        else:
            groups.append([it, 1])
    return " ".join(f"{n}x[{it}]" if n > 1 else f"[{it}]" for it, n in groups)


@functools.lru_cache(maxsize=2)
def _built(model: str, batch: int) -> tuple[Any, tuple[Any, ...]]:
    """The abstract train step, built once per case: one function object, so ``autopar.plan`` reuses its
    traces across the grid (one trace per microbatch size)."""
    from bench.models import MODELS

    return MODELS[model](batch_size=batch, abstract=True)


def plan_one(model: str, batch: int, nodes: int, method: Any, time_limit_s: float | None) -> dict[str, Any]:
    """Plan one method; a record with status ok / does not fit / error."""
    import autopar
    from autopar.planner.problem import InfeasibleMemoryError

    step, args = _built(model, batch)
    cluster = autopar.ClusterSpec.preset("p3.16xlarge", nodes=nodes)
    t0 = time.perf_counter()
    try:
        plan = autopar.plan(step, *args, cluster=cluster, batch_argnums=(1,), donate_argnums=(0,), method=method,
                            time_limit_s=time_limit_s)
    except InfeasibleMemoryError as e:
        return {"status": "does not fit", "wall_s": time.perf_counter() - t0, "why": str(e)[:300]}
    except (ValueError, RuntimeError) as e:   # RuntimeError: a time-limited ILP found no plan at all
        return {"status": f"error: {e}"[:300], "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    est = plan.estimate
    return {"status": "ok", "wall_s": wall, "search_time_s": plan.search.get("search_time_s"),
            "step_time_s": est.step_time_s, "bubble_fraction": est.bubble_fraction, "mfu": est.mfu,
            "peak_memory_bytes": est.peak_memory_bytes,
            "num_microbatches": plan.method_options.get("num_microbatches"),
            "stage_layers": plan.method_options.get("stage_layers"),
            "stage_devices": [len(s.devices) for s in plan.stages],
            "stage_meshes": [list(s.mesh_shape) for s in plan.stages],
            "stage_step_s": [s.estimate.step_time_s for s in plan.stages],
            "stage_peak_bytes": [s.estimate.peak_memory_bytes for s in plan.stages],
            "remat": plan.method_options.get("remat"), "layout": layout_of(plan),
            "stage_dp": [{k: v for k, v in e.items() if k != "layout"} for e in plan.search.get("stage_dp", [])]}


def _fmt(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return f"{r['status'][:70]} ({r['wall_s']:.1f} s)"
    return (f"step {r['step_time_s']:.2f} s, M={r['num_microbatches']}, bubble {r['bubble_fraction']:.3f}, "
            f"peak {r['peak_memory_bytes'] / 2**30:.1f} GiB, search {r['search_time_s']:.1f} s "
            f"(wall {r['wall_s']:.1f} s)")


def run_case(name: str, full_grid: bool, time_limit_s: float | None, microbatches: int | None = None,
             tps: tuple[int, ...] = TP_CHOICES, manual_only: bool = False) -> dict[str, Any]:
    import autopar
    from dataclasses import replace

    from bench.baselines import manual3d_grid, prune_manual3d

    case = CASES[name]
    if microbatches is not None:
        case = replace(case, microbatches=microbatches, source=f"--microbatches {microbatches}")
    devices = 8 * case.nodes
    print(f"\n== {name}: {case.nodes} x p3.16xlarge ({devices} V100), batch {case.batch}, "
          f"M={case.microbatches} ({case.source})", flush=True)
    rec: dict[str, Any] = {"case": name, **vars(case), "devices": devices}
    auto = ({"status": "not run (--manual-only)", "wall_s": 0.0} if manual_only else
            plan_one(case.model, case.batch, case.nodes, autopar.PipeshardParallel(num_microbatches=case.microbatches),
                     None))
    print(f"  Auto M={case.microbatches}: {_fmt(auto)}", flush=True)
    if auto["status"] == "ok":
        print(f"    layout {auto['layout']}", flush=True)
    elif "why" in auto:
        print(f"    {auto['why']}", flush=True)
    rec["auto"] = auto
    if name in SEARCH_ALL_M and not manual_only:
        free = plan_one(case.model, case.batch, case.nodes, autopar.PipeshardParallel(num_microbatches=None), None)
        print(f"  Auto M=None: {_fmt(free)}", flush=True)
        if free["status"] == "ok":
            print(f"    layout {free['layout']}", flush=True)
        rec["auto_free_m"] = free
    manual = []
    grid = [m for m in manual3d_grid(devices, 8, case.batch) if m.tp in tps and m.pp <= model_layers(case.model)]
    grid.sort(key=lambda m: tps.index(m.tp))            # stable: --tp picks the order of the tensor degrees
    plan = lambda method: plan_one(case.model, case.batch, case.nodes, method, time_limit_s)  # noqa: E731
    results = (((m, plan(m)) for m in grid) if full_grid else prune_manual3d(grid, plan, lambda r: r["status"]))
    for method, r in results:
        r.update({"dp": method.dp, "tp": method.tp, "pp": method.pp, "M": method.num_microbatches,
                  "remat_option": method.remat})
        manual.append(r)
        print(f"  Manual3D dp={method.dp} tp={method.tp} pp={method.pp} M={method.num_microbatches} "
              f"remat={method.remat}: {_fmt(r)}", flush=True)
    rec["manual"] = manual
    fits = [r for r in manual if r["status"] == "ok"]
    best = min(fits, key=lambda r: r["step_time_s"]) if fits else None
    rec["best_manual"] = best
    autos = [r for r in (auto, rec.get("auto_free_m")) if r and r["status"] == "ok"]
    best_auto = min(autos, key=lambda r: r["step_time_s"]) if autos else None
    rec["ratio"] = best["step_time_s"] / auto["step_time_s"] if best and auto["status"] == "ok" else None
    rec["ratio_best_auto"] = best["step_time_s"] / best_auto["step_time_s"] if best and best_auto else None
    rec["manual_wall_s"] = sum(r["wall_s"] for r in manual)
    if best:
        print(f"  best Manual3D dp={best['dp']} tp={best['tp']} pp={best['pp']} M={best['M']} "
              f"remat={best['remat_option']}: {_fmt(best)}; layout {best['layout']}", flush=True)
    ratio = "-" if rec["ratio"] is None else f"{rec['ratio']:.3f}"
    print(f"  ratio best Manual3D / Auto(M={case.microbatches}): {ratio}", flush=True)
    return rec


def table(records: list[dict[str, Any]]) -> str:
    lines = ["| case | devices | Auto M | Auto search s | Auto step s | Auto layout | best Manual3D | "
             "Manual3D step s | Manual3D plans (ok) / wall s | ratio |",
             "|---|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    for rec in records:
        rows = [("auto", rec["auto"])] + ([("auto_free_m", rec["auto_free_m"])] if "auto_free_m" in rec else [])
        best = rec["best_manual"]
        bm = (f"dp{best['dp']} tp{best['tp']} pp{best['pp']} M{best['M']} {best['remat_option']}"
              if best else "none fits")
        n_ok = sum(r["status"] == "ok" for r in rec["manual"])
        for key, a in rows:
            m = rec["microbatches"] if key == "auto" else "None"
            if a["status"] == "ok":
                ratio = best["step_time_s"] / a["step_time_s"] if best else math.nan
                lines.append(f"| {rec['case']} | {rec['devices']} | {m} (got {a['num_microbatches']}) | "
                             f"{a['search_time_s']:.1f} | {a['step_time_s']:.2f} | {a['layout']} | {bm} | "
                             f"{best['step_time_s'] if best else math.nan:.2f} | {len(rec['manual'])} ({n_ok}) / "
                             f"{rec['manual_wall_s']:.0f} | {ratio:.3f} |")
            else:
                lines.append(f"| {rec['case']} | {rec['devices']} | {m} | - | {a['status'][:40]} | - | {bm} | "
                             f"{best['step_time_s'] if best else math.nan:.2f} | {len(rec['manual'])} ({n_ok}) / "
                             f"{rec['manual_wall_s']:.0f} | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=None, help=f"comma-separated, from: {', '.join(CASES)}")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_CASES)}")
    ap.add_argument("--json", default=None, help="write one record per case here")
    ap.add_argument("--full-grid", action="store_true", help="plan remat='full' even where 'none' fits")
    ap.add_argument("--time-limit", type=float, default=20.0, help="time_limit_s of each Manual3D plan's ILPs")
    ap.add_argument("--tp", default=None, help="Manual3D tensor-parallel degrees, in this order (default 1,2,4,8)")
    ap.add_argument("--manual-only", action="store_true", help="skip the Auto plans (Manual3D grid only)")
    ap.add_argument("--microbatches", type=int, default=None,
                    help="override every case's microbatch count (default: Alpa's, see CASES)")
    a = ap.parse_args(argv)
    names = (a.cases.split(",") if a.cases else list(QUICK_CASES if a.quick else DEFAULT_CASES))
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"--cases: unknown {unknown}; known: {', '.join(CASES)}")
    records = []
    for name in names:
        tps = tuple(int(x) for x in a.tp.split(",")) if a.tp else TP_CHOICES
        records.append(run_case(name, a.full_grid, a.time_limit, a.microbatches, tps, a.manual_only))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(records, f, indent=1, default=str)
    print("\n" + table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
