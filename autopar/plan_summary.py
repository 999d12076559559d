"""Human-readable text of a Plan (the CLI inspector renders richer tables from the same data).

Consumes a ``Plan``; produces lines of text headed by the plan's ``fingerprint()`` (its identity without
wall-clock timings, see docs/plan_format.md). Refuses nothing: absent search fields print as ``?``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autopar.ir.printing import human_bytes

if TYPE_CHECKING:
    from autopar.plan import Plan


def _spec_text(spec: tuple[tuple[str, ...], ...]) -> str:
    parts = [("(" + ",".join(a) + ")" if len(a) > 1 else a[0]) if a else "-" for a in spec]
    return "[" + ", ".join(parts) + "]"


def plan_summary(plan: "Plan", max_inputs: int = 12) -> str:
    e = plan.estimate
    mesh = " x ".join(f"{n}={s}" for n, s in zip(plan.axis_names, plan.mesh_shape))
    lines = [
        f"autopar plan {plan.fingerprint()}: method {plan.method}, mesh {mesh}, "
        f"cluster {plan.cluster.get('name', '?')} "
        f"({plan.cluster.get('nodes', '?')} node(s) x {plan.cluster.get('devices_per_node', '?')})",
        _step_line(plan),
        f"  peak memory per device {human_bytes(e.peak_memory_bytes)}; flops {e.flops:.3e}",
    ]
    if e.comm_bytes:
        coll = ", ".join(f"{k} x{e.collective_counts.get(k, 0)} {human_bytes(v)}"
                         for k, v in sorted(e.comm_bytes.items()))
        lines.append(f"  collectives per device: {coll}")
    search = plan.search or {}
    opts = plan.method_options or {}
    if "stage_layers" in opts and "search_time_s" in search:
        lines.append(f"  search {search['search_time_s']:.2f} s; {len(plan.stages)} stage(s), layers "
                     f"{opts['stage_layers']}, {opts.get('num_microbatches')} microbatches, {opts.get('schedule')}, "
                     f"rematerialized stages {[i for i, r in enumerate(opts.get('remat', [])) if r]}")
    elif "search_time_s" in search:
        ilp = search.get("ilp", {})
        lines.append(f"  search {search['search_time_s']:.2f} s over {len(search.get('meshes', []))} mesh(es); "
                     f"ILP {ilp.get('nodes', '?')} nodes, {ilp.get('variables', '?')} variables "
                     f"({search.get('solver', '?')}, {ilp.get('status', '?')})")
    for stage in plan.stages:
        per_mb = f"; {stage.estimate.step_time_s * 1e3:.3f} ms per microbatch, peak " \
            f"{human_bytes(stage.estimate.peak_memory_bytes)}" if "stage_layers" in opts else ""
        lines.append(f"  {stage.name}: mesh {stage.mesh_shape} devices {stage.devices[0]}..{stage.devices[-1]}"
                     f"{per_mb}")
        for name, spec in stage.input_specs[:max_inputs]:
            lines.append(f"    {name:<48} {_spec_text(spec)}")
        if len(stage.input_specs) > max_inputs:
            lines.append(f"    ... {len(stage.input_specs) - max_inputs} more inputs")
    return "\n".join(lines)


def _step_line(plan: "Plan") -> str:
    e = plan.estimate
    tail = f"bubble {e.bubble_fraction:.1%}; MFU {e.mfu:.1%}"
    if "stage_layers" in (plan.method_options or {}):   # totals over stages and microbatches do not add up to it
        return (f"  step {e.step_time_s * 1e3:.3f} ms (pipeline: sum of stage times + (m - 1) x the slowest + the "
                f"slowest update; device-time totals: compute {e.compute_time_s * 1e3:.3f} ms, communication "
                f"{e.comm_time_s * 1e3:.3f} ms); {tail}")
    return (f"  step {e.step_time_s * 1e3:.3f} ms = compute {e.compute_time_s * 1e3:.3f} ms + communication "
            f"{e.comm_time_s * 1e3:.3f} ms; {tail}")
