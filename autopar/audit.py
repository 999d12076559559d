"""Check a plan's prediction against what XLA compiled: ``autopar.audit(fn, *args, ...) -> AuditReport``.

Consumes: a function and example arguments (real arrays or ``jax.ShapeDtypeStruct``) plus the planning options
of ``autopar.plan`` (or a ready ``plan``). Produces: an ``AuditReport`` holding, per stage and for the whole
program, the predicted ``ProgramCost`` (from the plan's ``Estimate``) and the compiled one, read from the
emitted program compiled on the local devices (fake CPU devices are enough): XLA's ``memory_analysis()``
(arguments + outputs + temporaries - aliased, per device), ``cost_analysis()`` flops, and the collectives in
``as_text()`` with their wire bytes under the same ring conventions the planner uses
(``autopar.cost_models.collectives.bytes_sent``). The prediction is first rewritten the way the compiling
platform lowers collectives (``backend_lowering_rules``: XLA:CPU turns a reduce-scatter into an all-reduce),
so a plan checked on fake CPU devices is compared with what that CPU program can show.
Refuses: a plan needing more devices than are local (ValueError naming both numbers).

Pipelined and microbatched plans (``stage_layers`` in the method options) run several programs per stage: a
forward and a backward piece per microbatch (in their accumulating form when m > 1) and update pieces once per
step (``ParallelFunction.lower_pieces``). Their stage Estimate means one microbatch's forward + backward plus the
update once, so the compiled side of a stage is defined to match:
- comm bytes and collective counts (and flops): the sum over the stage's programs, each counted once;
- peak memory per device: the largest footprint of the stage's programs (arguments + outputs + temporaries -
  aliased, plus the stage's resident state — the step's non-batch inputs its programs read, parameters and
  optimizer state — that is not an argument of that program: it stays on the devices while, say, the backward
  runs, as it does inside the one-program peak the stage's Estimate starts from), plus ``(in_flight - 1) x stash`` — ``in_flight`` the microbatches the schedule keeps at once on
  the stage (``autopar.pipeline.schedule.in_flight``), ``stash`` the per-device bytes of the forward program's
  compiled outputs the backward reads (a rematerialized stage: the forward's batch-dependent inputs it reads) —
  plus, when m > 1, the averaged-gradient accumulator (the compiled sizes of the pieces' summed outputs).
The parts are kept in ``StageAudit.memory_parts``. The whole program is combined as for several stages: the
worst stage's memory, bytes, counts and flops summed over stages.

The HLO reading lives here (``collective_lines``, ``count_collectives``, ``collective_bytes``, ``describe``);
``tests/hlo.py`` re-exports it. Async pairs count once (the ``-start``); instructions in every computation
count once (a collective in a loop body counts once, not once per trip); combined (tuple) all-reduce,
all-gather and reduce-scatter count once per tuple element, as a plan counts one collective per tensor.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

__all__ = ["AuditReport", "ProgramCost", "StageAudit", "audit", "backend_lowering_rules", "collective_bytes",
           "collective_lines", "compiled_cost", "count_collectives", "describe", "lowered_for", "predicted_cost",
           "ratio"]

KINDS: tuple[str, ...] = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
COMBINABLE = frozenset({"all-reduce", "all-gather", "reduce-scatter"})

# `%name = <type> <opcode>(` where opcode is a kind, optionally with `-start`; `-done` does not match.
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\s(" + "|".join(KINDS) + r")(-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9](?:fn|fnuz|b11fnuz)?)?)\[([0-9,]*)\]")

# Bytes per element of HLO primitive types, with a default of 4 for types not listed.
DTYPE_BYTES: dict[str, float] = {
    "pred": 1, "s2": 0.25, "u2": 0.25, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
    "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}
_DEFAULT_DTYPE_BYTES = 4.0


def _dtype_bytes(name: str) -> float:
    if name.startswith("f8") or name.startswith("f4"):
        return 1.0 if name.startswith("f8") else 0.5
    return float(DTYPE_BYTES.get(name, _DEFAULT_DTYPE_BYTES))


# ---- reading HLO text ------------------------------------------------------------------------------
def collective_lines(hlo_text: str) -> list[tuple[str, str]]:
    """(kind, instruction line) of every collective instruction in ``hlo_text``."""
    out = []
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if m:
            out.append((m.group(1), line.strip()))
    return out


def _result_type(line: str, kind: str) -> str:
    return line.split("=", 1)[1].strip().split(f" {kind}", 1)[0]


def _top_level_elements(rtype: str) -> list[str]:
    """The elements of a tuple type ``(a, b, ...)``, or ``[rtype]`` for an array type."""
    if not rtype.startswith("("):
        return [rtype]
    depth, start, parts = 0, 1, []
    for i, ch in enumerate(rtype):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 1:
            parts.append(rtype[start:i].strip())
            start = i + 1
        if depth == 0 and i > 0:
            parts.append(rtype[start:i].strip())
            break
    return [p for p in parts if p]


def _type_bytes(t: str) -> float:
    total = 0.0
    for dtype, dims in _ARRAY.findall(t):
        total += _dtype_bytes(dtype) * math.prod(int(d) for d in dims.split(",") if d)
    return total


def count_collectives(hlo_text: str) -> Counter[str]:
    """Number of collectives per kind (only kinds that occur); combined tuple collectives count per element."""
    out: Counter[str] = Counter()
    for kind, line in collective_lines(hlo_text):
        start = f"{kind}-start(" in line
        n = len(_top_level_elements(_result_type(line, kind)))
        out[kind] += n if kind in COMBINABLE and not start else 1
    return out


def group_size(line: str, num_devices: int) -> int:
    """Devices in one replica group of a collective instruction (every device when the groups are empty)."""
    m = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", line)   # device_ids=(...) may sit between
    if m:
        sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
        return math.prod(sizes[a] for a in re.findall(r"'([^']+)'", m.group(2)))
    m = re.search(r"replica_groups=\[([0-9,]+)\]<=", line)
    if m:
        return int(m.group(1).split(",")[-1])
    m = re.search(r"replica_groups=\{\{([0-9,\s]*)\}", line)
    if m:
        return len([x for x in m.group(1).split(",") if x.strip()])
    if "source_target_pairs" in line:
        return 2
    return num_devices


def _payload_bytes(kind: str, line: str, start: bool, n: int) -> float:
    """``nbytes`` in the planner's convention (``autopar.cost_models.collectives``) of one instruction."""
    parts = _top_level_elements(_result_type(line, kind))
    if start and kind == "all-gather":            # (operands..., results...)
        parts = parts[len(parts) // 2:]
    elif start and kind == "collective-permute":   # (operand, result, context...)
        parts = parts[:1]
    size = sum(_type_bytes(p) for p in parts)
    return size * n if kind == "reduce-scatter" else size   # reduce-scatter: S is the input


def collective_bytes(hlo_text: str, num_devices: int) -> dict[str, float]:
    """Per-device wire bytes by kind (ring implementation, ``bytes_sent``) of every collective in the text."""
    from autopar.cost_models.collectives import bytes_sent

    out: Counter[str] = Counter()
    for kind, line in collective_lines(hlo_text):
        n = group_size(line, num_devices)
        if n <= 1:
            continue
        out[kind] += bytes_sent(kind, _payload_bytes(kind, line, f"{kind}-start(" in line, n), n)
    return dict(out)


def describe(hlo_text: str) -> str:
    """One line per collective: kind, result type and the op_name from the metadata (for failure messages)."""
    rows = []
    for kind, line in collective_lines(hlo_text):
        name = re.search(r'op_name="([^"]*)"', line)
        rows.append(f"{kind:<18} {_result_type(line, kind):<28} {name.group(1) if name else ''}")
    return "\n".join(rows)


# ---- costs side by side ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ProgramCost:
    """What one program costs: per-device peak memory and wire bytes by kind, collective counts, flops
    executed over all devices of the program."""

    peak_memory_bytes: float
    comm_bytes: Mapping[str, float] = field(default_factory=dict)
    collective_counts: Mapping[str, int] = field(default_factory=dict)
    flops: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"peak_memory_bytes": self.peak_memory_bytes, "comm_bytes": dict(sorted(self.comm_bytes.items())),
                "collective_counts": dict(sorted(self.collective_counts.items())), "flops": self.flops}


def predicted_cost(estimate: Any) -> ProgramCost:
    """The ProgramCost an ``Estimate`` predicts."""
    return ProgramCost(float(estimate.peak_memory_bytes), dict(estimate.comm_bytes),
                       dict(estimate.collective_counts), float(estimate.flops))


def _reduce_scatter_as_all_reduce(cost: ProgramCost) -> ProgramCost:
    """XLA:CPU has no reduce-scatter: it lowers one to an all-reduce of the same input plus a dynamic-slice,
    which sends ``2(n-1)/n S`` instead of ``(n-1)/n S`` bytes: twice the reduce-scatter's wire bytes."""
    comm, counts = dict(cost.comm_bytes), dict(cost.collective_counts)
    rs, n_rs = comm.pop("reduce-scatter", 0.0), counts.pop("reduce-scatter", 0)
    if rs or n_rs:
        comm["all-reduce"] = comm.get("all-reduce", 0.0) + 2 * rs
        counts["all-reduce"] = counts.get("all-reduce", 0) + n_rs
    return ProgramCost(cost.peak_memory_bytes, comm, counts, cost.flops)


# How a backend lowers the collectives a plan names (platform -> rewrite of the predicted cost); default: as is.
backend_lowering_rules: dict[str, Callable[[ProgramCost], ProgramCost]] = {
    "cpu": _reduce_scatter_as_all_reduce,
}


def lowered_for(cost: ProgramCost, platform: str) -> ProgramCost:
    """The predicted cost as ``platform``'s XLA lowers the plan's collectives (what its program can show)."""
    return backend_lowering_rules.get(platform, lambda c: c)(cost)


def compiled_cost(compiled: Any, num_devices: int) -> ProgramCost:
    """Read a compiled SPMD program (``jax.stages.Compiled``) running on ``num_devices`` devices."""
    peak = _footprint(compiled)
    costs = compiled.cost_analysis()
    costs = costs[0] if isinstance(costs, (list, tuple)) else (costs or {})
    text = compiled.as_text()
    return ProgramCost(peak, collective_bytes(text, num_devices), dict(count_collectives(text)),
                       float(costs.get("flops", 0.0)) * num_devices)


def ratio(predicted: float, compiled: float) -> float:
    """predicted / compiled; 1.0 when both are zero, inf when only the compiled value is."""
    if compiled == 0:
        return 1.0 if predicted == 0 else math.inf
    return predicted / compiled


def _ratios(p: ProgramCost, c: ProgramCost) -> dict[str, float]:
    out = {"peak_memory_bytes": ratio(p.peak_memory_bytes, c.peak_memory_bytes)}
    for kind in sorted(set(p.comm_bytes) | set(c.comm_bytes)):
        out[f"comm_bytes[{kind}]"] = ratio(p.comm_bytes.get(kind, 0.0), c.comm_bytes.get(kind, 0.0))
    return out


@dataclass(frozen=True)
class StageAudit:
    """One stage: ``planned`` is the plan's Estimate as written; ``predicted`` the same cost as the compiling
    platform lowers its collectives (``backend_lowering_rules``; equal to ``planned`` on GPU and TPU);
    ratios compare ``predicted`` with ``compiled``."""

    name: str
    num_devices: int
    predicted: ProgramCost
    compiled: ProgramCost
    hlo_collectives: str = ""      # ``describe`` of the compiled program
    planned: ProgramCost | None = None
    platform: str = ""
    # pipelined stages: each program's footprint with the resident state it does not take, by piece name, "stash" (one microbatch's kept values),
    # "in_flight" (microbatches the schedule keeps) and "accumulator" (averaged-gradient sums, m > 1)
    memory_parts: Mapping[str, float] = field(default_factory=dict)

    def ratios(self) -> dict[str, float]:
        return _ratios(self.predicted, self.compiled)


def _combine(costs: Sequence[ProgramCost]) -> ProgramCost:
    """Whole program of several stages: the largest per-device memory, summed bytes, counts and flops."""
    comm: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for c in costs:
        comm.update(c.comm_bytes)
        counts.update(c.collective_counts)
    return ProgramCost(max(c.peak_memory_bytes for c in costs), dict(comm), dict(counts),
                       sum(c.flops for c in costs))


@dataclass(frozen=True)
class AuditReport:
    """Predicted vs compiled cost. ``ratios()`` are predicted / compiled for the checked quantities
    (per-device peak memory and wire bytes per collective kind); flops and counts are informational."""

    plan: Any
    stages: tuple[StageAudit, ...]
    compile_time_s: float = 0.0

    @property
    def predicted(self) -> ProgramCost:
        if len(self.stages) == 1:
            return self.stages[0].predicted
        return _combine([s.predicted for s in self.stages])

    @property
    def compiled(self) -> ProgramCost:
        if len(self.stages) == 1:
            return self.stages[0].compiled
        return _combine([s.compiled for s in self.stages])

    def ratios(self) -> dict[str, float]:
        """Whole program ratios, and per stage (``stage1/peak_memory_bytes``) when there are several."""
        out = _ratios(self.predicted, self.compiled)
        if len(self.stages) > 1:
            for s in self.stages:
                out.update({f"{s.name}/{k}": v for k, v in s.ratios().items()})
        return out

    def failures(self, tolerance: float = 0.1) -> dict[str, float]:
        """The ratios outside ``[1 - tolerance, 1 + tolerance]``."""
        if not 0 <= tolerance:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        return {k: v for k, v in self.ratios().items() if not (1 - tolerance <= v <= 1 + tolerance)}

    def to_dict(self) -> dict[str, Any]:
        return {"predicted": self.predicted.to_dict(), "compiled": self.compiled.to_dict(),
                "ratios": _finite(self.ratios()), "compile_time_s": self.compile_time_s,
                "stages": [{"name": s.name, "num_devices": s.num_devices, "platform": s.platform,
                            "planned": (s.planned or s.predicted).to_dict(), "predicted": s.predicted.to_dict(),
                            "compiled": s.compiled.to_dict(), "ratios": _finite(s.ratios()),
                            **({"memory_parts": dict(s.memory_parts)} if s.memory_parts else {})}
                           for s in self.stages]}


def _finite(ratios: Mapping[str, float]) -> dict[str, float | None]:
    """JSON has no infinity: a ratio with nothing compiled to compare against becomes None."""
    return {k: (v if math.isfinite(v) else None) for k, v in ratios.items()}


# ---- the library call ------------------------------------------------------------------------------
def _footprint(compiled: Any) -> float:
    """XLA's per-device footprint of one program: arguments + outputs + temporaries - aliased."""
    mem = compiled.memory_analysis()
    return float(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                 - mem.alias_size_in_bytes)


def _shard_bytes(info: Any, sharding: Any) -> float:
    """Per-device bytes of one value of a compiled program (its shape and dtype under its sharding)."""
    shape = sharding.shard_shape(tuple(info.shape)) if sharding is not None else tuple(info.shape)
    return float(math.prod(shape)) * info.dtype.itemsize


def _flat_values(compiled: Any, side: str) -> list[tuple[Any, Any]]:
    """(ShapeDtypeStruct, sharding) of each flat input (``side="in"``) or output of a compiled program."""
    import jax

    if side == "in":
        infos = jax.tree.leaves(compiled.args_info, is_leaf=lambda x: hasattr(x, "shape"))
        shardings = jax.tree.leaves(compiled.input_shardings)
    else:
        infos = jax.tree.leaves(compiled.out_info, is_leaf=lambda x: hasattr(x, "shape"))
        shardings = jax.tree.leaves(compiled.output_shardings)
    if len(infos) != len(shardings):
        raise ValueError(f"a compiled program lists {len(infos)} {side}puts but {len(shardings)} shardings")
    return list(zip(infos, shardings))


def _kept_values(runtime: Any, stage: int) -> list[tuple[str, str, int]]:
    """Where the values one microbatch keeps on ``stage`` between its forward and its backward sit, as
    (piece name, "in" | "out", flat position): the forward program's outputs the backward reads, or, for a
    rematerialized stage, the forward program's batch-dependent inputs (the backward recomputes the rest)."""
    progs = {pp.piece.phase: pp for pp in runtime.programs if pp.piece.stage == stage and pp.piece.per_microbatch}
    fwd, bwd = progs.get("forward"), progs.get("backward")
    if fwd is None or bwd is None:
        return []
    read = set(bwd.inputs)
    if runtime.remat[stage]:
        split = runtime.split
        return [(fwd.piece.name, "in", j) for j, t in enumerate(fwd.inputs)
                if t in read and t in split.batch_dependent]
    return [(fwd.piece.name, "out", j) for j, t in enumerate(fwd.outputs) if t in read]


def _resident_state(runtime: Any, programs: Sequence[Any], compiled: Mapping[str, Any]) -> dict[int, float]:
    """Per-device bytes of the step's non-batch inputs (parameters, optimizer state) the stage's programs read:
    they stay on the stage's devices for the whole step, arguments of some programs and not of others."""
    from autopar.ir.graph import Role

    g = runtime.split.graph
    state = {t for t in g.inputs if g.tensors[t].role is not Role.BATCH}
    out: dict[int, float] = {}
    for pp in programs:
        values = _flat_values(compiled[pp.piece.name], "in")
        for j, t in enumerate(pp.inputs):
            if t in state and t not in out:
                out[t] = _shard_bytes(*values[j])
    return out


def _pipelined_stages(pf: Any, args: Sequence[Any], plan: Any, platform: str) -> list[StageAudit]:
    """One StageAudit per stage of a pipelined / microbatched plan (see the module docstring)."""
    from autopar.pipeline.schedule import in_flight

    runtime = pf._compile(args).program
    lowered = runtime.lower_pieces()
    compiled = {name: low.compile() for name, low in lowered.items()}
    m, p = runtime.m, runtime.split.num_stages
    out = []
    for s, stage in enumerate(plan.stages):
        n = len(stage.devices)
        mine = [pp for pp in runtime.programs if pp.piece.stage == s]
        costs = [compiled_cost(compiled[pp.piece.name], n) for pp in mine]
        state = _resident_state(runtime, mine, compiled)
        footprints = {pp.piece.name: _footprint(compiled[pp.piece.name])
                      + sum(b for t, b in state.items() if t not in set(pp.inputs)) for pp in mine}
        stash = sum(_shard_bytes(*_flat_values(compiled[name], side)[j]) for name, side, j in _kept_values(runtime, s))
        acc = sum(_shard_bytes(*_flat_values(compiled[pp.piece.name], "out")[j])
                  for pp in mine for j in pp.averaged) if m > 1 else 0.0
        keep = in_flight(runtime.schedule, p, m, s)
        peak = max(footprints.values(), default=0.0) + max(keep - 1, 0) * stash + acc
        summed = _combine(costs) if costs else ProgramCost(0.0)
        parts = {**footprints, "stash": stash, "in_flight": float(keep), "accumulator": acc}
        planned = predicted_cost(stage.estimate)
        text = "\n".join(describe(compiled[pp.piece.name].as_text()) for pp in mine)
        out.append(StageAudit(stage.name, n, lowered_for(planned, platform),
                              ProgramCost(peak, summed.comm_bytes, summed.collective_counts, summed.flops),
                              text.strip("\n"), planned, platform, parts))
    return out


def audit(fn: Callable[..., Any], *args: Any, method: Any = "auto", batch_argnums: Any = None,
          static_argnums: Any = (), donate_argnums: Any = (), cluster: Any = None, plan: Any = None,
          memory_budget: float | None = None, solver: str = "ortools", time_limit_s: float | None = None,
          devices: Sequence[Any] | None = None) -> AuditReport:
    """Plan ``fn(*args)`` (or take ``plan``: a Plan or a saved plan's path), compile the emitted program on the
    local devices and compare XLA's memory, collectives and flops with the plan's Estimate.

    ``cluster`` (default: the local devices) is what the plan is costed for; it may be a described cluster
    (``"dgx-a100"``) as long as it has no more devices than are local: the audit compiles for the devices at
    hand, and bytes and memory do not depend on the device type."""
    import time

    import jax

    from autopar.api import ParallelFunction
    from autopar.api import plan as make_plan
    from autopar.emit.pipeline import is_pipelined
    from autopar.plan import Plan

    local = list(devices) if devices is not None else list(jax.devices())
    if isinstance(plan, str) or hasattr(plan, "__fspath__"):
        plan = Plan.load(plan)
    if plan is None:
        from autopar.cost_models.cluster import ClusterSpec

        plan = make_plan(fn, *args, cluster=cluster if cluster is not None else ClusterSpec.local(),
                         method=method, static_argnums=static_argnums, batch_argnums=batch_argnums,
                         donate_argnums=donate_argnums, memory_budget=memory_budget, solver=solver,
                         time_limit_s=time_limit_s)
    needed = 1 + max(d for s in plan.stages for d in s.devices)
    if needed > len(local):
        raise ValueError(f"the plan needs {needed} devices but {len(local)} are local; an audit compiles on the "
                         f"local devices: plan for a cluster of at most {len(local)} devices (e.g. --nodes 1)")
    pf = ParallelFunction(fn, plan=plan, static_argnums=static_argnums, batch_argnums=batch_argnums,
                          donate_argnums=donate_argnums, devices=local)
    start = time.perf_counter()
    platform = str(local[0].platform)
    if is_pipelined(plan):
        stages = _pipelined_stages(pf, args, plan, platform)
    else:
        if len(plan.stages) != 1:
            raise ValueError(f"the plan has {len(plan.stages)} stages but is not pipelined (no stage_layers in "
                             "its method_options): it is not a plan autopar wrote; re-plan it")
        stage, lowered = plan.stages[0], pf.lower(*args)
        compiled = lowered.compile()
        n = len(stage.devices)
        planned = predicted_cost(stage.estimate)
        stages = [StageAudit(stage.name, n, lowered_for(planned, platform), compiled_cost(compiled, n),
                             describe(compiled.as_text()), planned, platform)]
    return AuditReport(plan=plan, stages=tuple(stages), compile_time_s=time.perf_counter() - start)
