"""Baselines the benchmark compares autopar with, all evaluated by the same cost model via ``autopar.plan``.

Consumes: a train step and its abstract arguments, a ClusterSpec, the baseline kinds a case asks for.
Produces: one ``Outcome`` per baseline: a predicted step time / MFU / peak memory, or the reason there is
none: ``"does not fit"`` (no plan within device memory; ``min_memory_bytes`` says how much it would need) or
``"unavailable: <reason>"`` (the method is not implemented yet or cannot express the configuration).
Refuses: nothing: a baseline that fails to plan is recorded, never raised.

Baselines (``BASELINE_KINDS`` in ``bench.suite``):
- ``data``: ``autopar.DataParallel``; ``zero3``: ``autopar.ZeroParallel(stage=3)``: the fastest that fits of
  the whole batch per step and gradient accumulation at Megatron's micro-batch sizes (``accumulated``);
- ``manual3d``: the best ``autopar.Manual3D(dp, tp, pp, num_microbatches, remat)`` over Megatron's grid
  (tensor parallelism inside a node, pipeline across, a few microbatch counts, remat off/full);
- ``alpa``: the plan Alpa published for that model and cluster (``ALPA_PLANS``) as PipeshardParallel options.
Manual3D and PipeshardParallel are planned by the pipeline planner; while it raises "not available", the
grid stops at the first such answer and the baseline reads ``unavailable``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

# Exceptions whose message means "this method cannot be planned here" rather than a planner bug.
T = TypeVar("T")
_UNAVAILABLE_MARKERS = ("not available", "not implemented", "not supported", "needs the pipeline planner")


@dataclass(frozen=True)
class Outcome:
    """The predicted result of planning one method (the case's own method or a baseline)."""

    label: str                                   # the method, as text
    status: str                                  # "ok" | "does not fit" | "unavailable: ..." | "error: ..."
    step_time_s: float | None = None
    mfu: float | None = None
    peak_memory_bytes: float | None = None
    search_time_s: float | None = None
    min_memory_bytes: float | None = None        # for "does not fit": the least per-device memory needed
    mesh_shape: tuple[int, ...] | None = None
    num_stages: int | None = None
    layout: str | None = None                    # the plan in a line (``plan_layout``)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mesh_shape"] = list(self.mesh_shape) if self.mesh_shape is not None else None
        return {k: v for k, v in d.items() if v is not None}


def method_text(method: Any) -> str:
    """``Manual3D(dp=2,tp=4,pp=1,...)`` without defaults noise."""
    fields = [f for f in dataclasses.fields(method)] if dataclasses.is_dataclass(method) else []
    parts = [f"{f.name}={getattr(method, f.name)!r}" for f in fields
             if getattr(method, f.name) != f.default]
    return f"{type(method).__name__}({', '.join(parts)})"


def evaluate(fn: Callable[..., Any], args: tuple[Any, ...], cluster: Any, method: Any,
             label: str | None = None, donate: tuple[int, ...] = ()) -> Outcome:
    """Plan ``fn(*args)`` with ``method`` on ``cluster`` (``donate``: the donated arguments) and summarise the
    estimate (never raises)."""
    import autopar
    from autopar.planner.problem import InfeasibleMemoryError

    label = label or method_text(method)
    t0 = time.perf_counter()
    try:
        plan = autopar.plan(fn, *args, cluster=cluster, method=method, donate_argnums=donate)
    except InfeasibleMemoryError as e:
        return Outcome(label, "does not fit", search_time_s=time.perf_counter() - t0,
                       min_memory_bytes=float(e.min_budget_bytes))
    except (ValueError, NotImplementedError, RuntimeError) as e:   # RuntimeError: a time-limited ILP found nothing
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if any(m in text for m in _UNAVAILABLE_MARKERS) or isinstance(e, NotImplementedError):
            return Outcome(label, f"unavailable: {text}")
        return Outcome(label, f"error: {text}")
    wall = time.perf_counter() - t0
    est = plan.estimate
    search = float(plan.search.get("search_time_s", wall)) if isinstance(plan.search, Mapping) else wall
    return Outcome(label, "ok", step_time_s=float(est.step_time_s), mfu=float(est.mfu),
                   peak_memory_bytes=float(est.peak_memory_bytes), search_time_s=search,
                   mesh_shape=tuple(plan.mesh_shape), num_stages=len(plan.stages), layout=plan_layout(plan))


def plan_layout(plan: Any) -> str:
    """``2 stages: layers 0-5 on (8,) remat, 6-11 on (2, 4); m = 512`` (one program: its mesh)."""
    opts = plan.method_options or {}
    if "stage_layers" not in opts:
        return f"one program on {tuple(plan.mesh_shape)}"
    remat = list(opts.get("remat") or [False] * len(plan.stages))
    parts = [(f"{a}" if b - a == 1 else f"{a}-{b - 1}") + f" on {tuple(st.mesh_shape)}" + (" remat" if r else "")
             for (a, b), st, r in zip(opts["stage_layers"], plan.stages, remat)]
    parts[0] = "layers " + parts[0]
    n = len(parts)
    return f"{n} stage{'s' if n > 1 else ''}: {', '.join(parts)}; m = {opts.get('num_microbatches')}"


def outcome_text(o: Outcome) -> str:
    """One line: the predicted step time, memory and search time, or why there is no plan."""
    if o.ok:
        return (f"{o.step_time_s:.4g} s, peak {(o.peak_memory_bytes or 0) / 2**30:.2f} GiB, "
                f"search {o.search_time_s or 0:.1f} s")
    if o.status == "does not fit" and o.min_memory_bytes:
        return f"does not fit (needs {o.min_memory_bytes / 2**30:.1f} GiB)"
    return o.status


# ---- Manual3D grid (Megatron's recipe) -----------------------------------------------------------------
def _pow2_divisors(n: int, cap: int) -> list[int]:
    return [d for d in (2 ** i for i in range(0, 12)) if d <= cap and n % d == 0]


MICRO_BATCH_SIZES = (16, 4, 1)


def microbatch_counts(per_replica: int, at_least: int = 1) -> list[int]:
    """Megatron's microbatch counts for ``per_replica`` samples per data-parallel replica: one per micro-batch
    size in ``MICRO_BATCH_SIZES`` that divides it, largest micro-batch first, each at least max(at_least, 2)."""
    return [per_replica // size for size in MICRO_BATCH_SIZES
            if per_replica % size == 0 and per_replica // size >= max(at_least, 2)]


def manual3d_grid(num_devices: int, devices_per_node: int, batch_size: int | None,
                  max_configs: int | None = None) -> list[Any]:
    """Megatron-style configurations: tp inside a node (powers of two), pp over what is left, dp the rest;
    microbatches as Megatron sets them, by the micro-batch size (samples per data-parallel replica per
    microbatch) in {16, 4, 1} — m = (batch / dp) / size — plus no accumulation when pp = 1; each shape with
    remat none, then full. Ordered by tp, then pp, then the smallest micro-batch first (the one most likely to
    fit), cut to ``max_configs``."""
    import autopar

    shapes = []
    for tp in _pow2_divisors(num_devices, devices_per_node):
        for pp in _pow2_divisors(num_devices // tp, num_devices):
            dp = num_devices // (tp * pp)
            per_dp = batch_size // dp if batch_size else None
            if per_dp is not None and (batch_size % dp or per_dp < 1):
                continue
            last: list[int | None] = [None] if pp == 1 else []
            counts = microbatch_counts(per_dp, pp) if per_dp is not None else [4 * pp, 16 * pp, 64 * pp]
            shapes += [(dp, tp, pp, m) for m in sorted(set(counts), reverse=True) + last]
    return [autopar.Manual3D(dp=dp, tp=tp, pp=pp, num_microbatches=m, remat=remat)
            for dp, tp, pp, m in shapes for remat in ("none", "full")][:max_configs]


def prune_manual3d(grid: list[Any], plan_one: Callable[[Any], T], status: Callable[[T], str]) -> Iterator[tuple[Any, T]]:
    """Plan the grid's configurations in order with ``plan_one``, yielding ``(method, result)``; pruned without
    loss: a shape is planned with remat "full" only when it does not fit without (recomputation never makes a
    plan faster), and once a (dp, tp, pp) does not fit even rematerialized at some micro-batch size, its
    larger micro-batch sizes (more activation memory, the same state) are skipped."""
    fitted: set[tuple[int, int, int, int | None]] = set()
    hopeless: set[tuple[int, int, int]] = set()
    for method in grid:
        shape = (method.dp, method.tp, method.pp, method.num_microbatches)
        if (method.remat != "none" and shape in fitted) or shape[:3] in hopeless:
            continue
        result = plan_one(method)
        if method.remat != "none" and status(result) == "does not fit":
            hopeless.add(shape[:3])
        if status(result) == "ok":
            fitted.add(shape)
        yield method, result


def _best(outcomes: list[Outcome], empty_label: str) -> Outcome:
    """The fastest outcome that fits; else the "does not fit" one needing the least memory; else the first
    error (or ``unavailable`` for an empty list)."""
    fitted = [o for o in outcomes if o.ok]
    if fitted:
        return min(fitted, key=lambda o: o.step_time_s or math.inf)
    no_fit = [o for o in outcomes if o.status == "does not fit"]
    if no_fit:
        return min(no_fit, key=lambda o: o.min_memory_bytes or math.inf)
    return outcomes[0] if outcomes else Outcome(empty_label, "unavailable: empty grid")


def accumulated(fn: Callable[..., Any], args: tuple[Any, ...], cluster: Any, make: Callable[[int | None], Any],
                label: str, batch_size: int | None, donate: tuple[int, ...] = (),
                log: Callable[[str], None] = lambda m: None) -> Outcome:
    """A data-parallel baseline (``make(num_microbatches)``: DataParallel or ZeroParallel) as a large batch is
    trained with it: the whole batch in one step, or gradient accumulation over Megatron's micro-batch sizes
    per replica (``microbatch_counts``); the fastest that fits."""
    tried = [evaluate(fn, args, cluster, make(None), label, donate)]
    per_replica = batch_size // cluster.num_devices if batch_size and batch_size % cluster.num_devices == 0 else 0
    for m in microbatch_counts(per_replica) if tried[0].status in ("ok", "does not fit") else []:
        tried.append(evaluate(fn, args, cluster, make(m), f"{label} (accumulating {m} microbatches)", donate))
    for o in tried:
        log(f"    {o.label}: {outcome_text(o)}")
    return _best(tried, label)


def best_manual3d(fn: Callable[..., Any], args: tuple[Any, ...], cluster: Any,
                  batch_size: int | None, max_configs: int | None = None, donate: tuple[int, ...] = (),
                  log: Callable[[str], None] = lambda m: None) -> Outcome:
    """The fastest Manual3D of the grid (``prune_manual3d``; ``log`` gets one line per configuration planned);
    ``unavailable`` as soon as the planner says Manual3D is."""
    grid = manual3d_grid(cluster.num_devices, cluster.devices_per_node, batch_size, max_configs)
    return summarise_manual3d(manual3d_outcomes(fn, args, cluster, grid, donate, log))


def manual3d_outcomes(fn: Callable[..., Any], args: tuple[Any, ...], cluster: Any, grid: list[Any],
                      donate: tuple[int, ...] = (), log: Callable[[str], None] = lambda m: None) -> Iterator[Outcome]:
    """The outcomes of the grid's configurations as ``prune_manual3d`` plans them (lazily: a consumer that
    stops early plans no more)."""
    for _method, o in prune_manual3d(grid, lambda m: evaluate(fn, args, cluster, m, donate=donate),
                                     lambda o: o.status):
        log(f"    {o.label}: {outcome_text(o)}")
        yield o


def summarise_manual3d(outcomes: Iterable[Outcome]) -> Outcome:
    """The grid's result from its outcomes in grid order: ``unavailable`` (labelled "Manual3D grid") when the
    first configurations are unavailable before any planned or fell short of memory — it stops reading there —
    else the fastest that fits, else the one needing the least memory."""
    seen: list[Outcome] = []
    for o in outcomes:
        if o.status.startswith("unavailable") and not any(x.ok or x.status == "does not fit" for x in seen):
            return dataclasses.replace(o, label="Manual3D grid")
        seen.append(o)
    best = _best(seen, "Manual3D grid")
    return best if best.ok or best.status == "does not fit" else dataclasses.replace(best, label="Manual3D grid")


def manual3d_shapes(grid: list[Any]) -> list[tuple[int, int, int]]:
    """The grid's (dp, tp, pp) shapes in grid order: ``prune_manual3d`` prunes within a shape only, so each
    shape's configurations can be planned apart (``bench.parallel``) without planning more."""
    return list(dict.fromkeys((m.dp, m.tp, m.pp) for m in grid))


# ---- Alpa's published plans (Alpa, OSDI'22, section 8 / Fig. 7, and the solutions its artifact loads for
# p3.16xlarge: benchmark/alpa/suite_auto_{gpt,moe}.py and suite_wresnet.py, ``perf_test_suite``) ----
@dataclass(frozen=True)
class AlpaPlan:
    model: str                                   # the bench.models registry name
    num_devices: int
    num_stages: int
    submesh_shapes: tuple[tuple[int, int], ...]  # per stage: (hosts, devices per host)
    logical_mesh_shapes: tuple[tuple[int, int], ...] | None
    num_microbatches: int | None
    source: str
    stage_layers: tuple[int, ...] | None = None  # layers per stage where the split was not an even one

    def options(self) -> dict[str, Any]:
        """Every option the plan fixes, named as PipeshardParallel would take them."""
        return {"num_microbatches": self.num_microbatches,
                "stages": list(self.stage_layers) if self.stage_layers else self.num_stages,
                "submeshes": [h * d for h, d in self.submesh_shapes],
                "logical_meshes": [list(s) for s in self.logical_mesh_shapes] if self.logical_mesh_shapes else None}


ALPA_PLANS: dict[str, AlpaPlan] = {
    "gpt_39b_64": AlpaPlan("gpt_39b", 64, 16, ((1, 4),) * 16, None, 1024,
                           "Alpa OSDI'22 sec. 8.1: GPT-39B on 64 GPUs, 16 stages of (1,4), 1024 microbatches"),
    "gpt_15b_32": AlpaPlan("gpt_15b", 32, 4, ((1, 8),) * 4, ((2, 4),) * 4, 128,
                           "Alpa OSDI'22 sec. 8.1: GPT-15B on 32 GPUs, 4 stages of (1,8), logical mesh (2,4); "
                           "128 microbatches as its artifact's solution (suite_auto_gpt.py) loads it"),
    "moe_70b_64": AlpaPlan("moe_70b", 64, 8, ((1, 8),) * 8, ((8, 1),) * 8, 64,
                           "Alpa OSDI'22 sec. 8.1: MoE-70B on 64 GPUs, 8 stages of (1,8), logical (8,1), 64 mb"),
    "wresnet_4b_16": AlpaPlan("wresnet_4b", 16, 3, ((1, 4), (1, 4), (1, 8)), ((4, 1), (4, 1), (8, 1)), 32,
                              "Alpa OSDI'22 sec. 8.1: Wide-ResNet-4B on 16 GPUs, 3 stages on 4+4+8 GPUs; its "
                              "artifact's solution (suite_wresnet.py): 5, 4 and 7 of the 16 blocks (the head "
                              "after the last block is our 17th layer), logical (4,1), (4,1), (8,1), 32 microbatches",
                              stage_layers=(5, 4, 8)),
}


def alpa_method(key: str) -> tuple[Any, list[str]]:
    """PipeshardParallel with the options of Alpa's plan that it accepts, and the names of those it cannot
    express (recorded in the baseline's label, so a partial plan is never mistaken for Alpa's)."""
    import autopar

    if key not in ALPA_PLANS:
        raise ValueError(f"alpa = {key!r}: no published plan by that name; known: {', '.join(ALPA_PLANS)}")
    accepted = {f.name for f in dataclasses.fields(autopar.PipeshardParallel)}
    opts = {k: v for k, v in ALPA_PLANS[key].options().items() if v is not None}
    dropped = sorted(k for k in opts if k not in accepted)
    return autopar.PipeshardParallel(**{k: v for k, v in opts.items() if k in accepted}), dropped


def alpa_outcome(fn: Callable[..., Any], args: tuple[Any, ...], cluster: Any, method: Any, label: str,
                 batch_size: int | None, donate: tuple[int, ...] = (),
                 log: Callable[[str], None] = lambda m: None, most: int = 3) -> Outcome:
    """Alpa's plan as published; where its microbatch count does not fit our memory model (Alpa rematerializes
    layer by layer, our pipelines stage by stage) the fastest of its layout with up to ``most`` doublings of
    the count that divide the batch, labelled with the count it ran (each try is logged)."""
    first = evaluate(fn, args, cluster, method, label, donate)
    m = method.num_microbatches
    if first.status != "does not fit" or not m or not batch_size:
        return first
    log(f"    {label}: {outcome_text(first)}")
    tried = []
    for _ in range(most):
        m *= 2
        if m > batch_size or batch_size % m:
            break
        tried.append(evaluate(fn, args, cluster, dataclasses.replace(method, num_microbatches=m),
                              f"{label} with {m} microbatches ({method.num_microbatches} do not fit)", donate))
        log(f"    {tried[-1].label}: {outcome_text(tried[-1])}")
    return _best([o for o in tried if o.ok] or [first], label)


def run_baselines(kinds: tuple[str, ...], fn: Callable[..., Any], args: tuple[Any, ...], cluster: Any,
                  batch_size: int | None, alpa: str | None = None, donate: tuple[int, ...] = (),
                  log: Callable[[str], None] = lambda m: None) -> dict[str, Outcome]:
    """Evaluate each requested baseline kind (``alpa`` only when the case names a published plan); ``log``
    gets a line per result."""
    import autopar

    out: dict[str, Outcome] = {}
    for kind in kinds:
        if kind == "data":
            out[kind] = accumulated(fn, args, cluster, lambda m: autopar.DataParallel(num_microbatches=m),
                                    "DataParallel", batch_size, donate, log)
        elif kind == "zero3":
            out[kind] = accumulated(fn, args, cluster, lambda m: autopar.ZeroParallel(stage=3, num_microbatches=m),
                                    "ZeRO-3", batch_size, donate, log)
        elif kind == "manual3d":
            out[kind] = best_manual3d(fn, args, cluster, batch_size, donate=donate, log=log)
        elif kind == "alpa" and alpa is not None:
            plan = ALPA_PLANS.get(alpa)
            if plan is None:
                raise ValueError(f"alpa = {alpa!r}: no published plan by that name; known: {', '.join(ALPA_PLANS)}")
            if plan.num_devices != cluster.num_devices:
                out[kind] = Outcome(f"Alpa {alpa}", f"unavailable: the plan is for {plan.num_devices} devices, "
                                    f"the case has {cluster.num_devices}")
                continue
            try:
                method, dropped = alpa_method(alpa)
            except (ValueError, TypeError) as e:
                out[kind] = Outcome(f"Alpa {alpa}", f"unavailable: {e}")
                continue
            label = f"Alpa {alpa}" + (f" (without {', '.join(dropped)})" if dropped else "")
            out[kind] = alpa_outcome(fn, args, cluster, method, label, batch_size, donate, log)
        if kind in out:
            log(f"  {kind}: {out[kind].label}: {outcome_text(out[kind])}")
    return out
