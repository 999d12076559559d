"""Stage construction for ``PipeshardParallel(stages="auto")``: a DP over layer ranges x sub-meshes.

Consumes: ``trace_at(m)``, the full batch size, a ClusterSpec and the method. Produces: the best
``StagedResult`` found.

1. Layer costs. Each layer (its forward, backward and update ops) is planned by the intra-op ILP on every
   candidate sub-mesh (``submesh_options``: powers of two inside a node with a 1-D mesh, whole nodes across
   as a (nodes, node) mesh, and every stage mesh Manual3D builds, with the batch on its first axis) — once
   per distinct layer structure, so the work grows with the kinds of layer, not with depth. A layer records
   its time per microbatch, its forward time (recomputed when rematerialized), its update time, its
   one-microbatch memory peak, the activations it stashes per microbatch and the bytes of its inputs.
2. The DP (Alpa's, with memory): for a bound t_max on any stage's time, F[s][k][d] is the least sum of stage
   times placing layers k.. into s stages on devices d..N-1, where a stage of n devices starts at a multiple of
   n (inside a node) or of a node; a stage is allowed when its memory with the microbatches it keeps in flight
   (min(s, m) for 1F1B, m for GPipe; a rematerialized stage keeps only its inputs for the others, and
   recomputes its forward) fits. The objective is
   F[s][0][0] + (m - 1) t_max; t_max runs over a geometric grid of the stage times.
3. Exact plans (``plan_stages``: one ILP per distinct stage) of the DP's layout, of the same stages with
   flops-balanced layer ranges, and of the Megatron-shaped layouts (what ``Manual3D`` would build) whose
   layer-cost estimate is within ``UNIFORM_MARGIN`` of the fastest exact plan (at most ``UNIFORM_MAX_TRIES``);
   the fastest plan of every microbatch count is kept.
Stage costs add the layers' costs (resharding between layers inside a stage is not counted by the DP; the
exact stage plan of step 3 counts it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from autopar.cost_models.cluster import ClusterSpec
from autopar.ir.graph import Graph, Section
from autopar.ir.subgraph import structure_key
from autopar.methods import PipeshardParallel, ShardParallel
from autopar.pipeline.layers import balanced_split, layer_flops, op_layers
from autopar.pipeline.partition import split_stages
from autopar.planner.pipeshard import (SHARED_CACHE, DataTensorShard, IntraOpCache, StagedResult, _compute_of,
                                       _parent_specs, _stash_bytes, stage_subgraph, submesh_cluster)
from autopar.planner.problem import InfeasibleMemoryError, SolverTimeLimitError, format_bytes

INF = float("inf")
T_MAX_GRID = 24


@dataclass(frozen=True)
class LayerCost:
    t_mb: float        # forward + backward per microbatch
    t_fwd: float       # forward compute (added when the stage is rematerialized)
    t_apply: float
    peak: float        # one-microbatch peak of the layer alone
    stash: float       # activations kept from forward to backward, per microbatch
    inputs: float      # its inputs' bytes per microbatch (what a rematerialized stage keeps)


class MeshOption(NamedTuple):
    """A sub-mesh a stage may use: its device count, its logical mesh, and whether the batch is split over the
    first axis only (Megatron's (dp, tp) stage, as ``Manual3D`` builds it) or the ILP splits each op freely."""

    devices: int
    mesh: tuple[int, ...]
    batch_first: bool = False


def submesh_options(cluster: ClusterSpec, megatron: bool = True) -> list[MeshOption]:
    """Sub-meshes a stage may use: inside a node a power of two with a 1-D mesh (the ILP splits each op over it
    as it likes: data, tensor or mixed), across nodes whole nodes as (nodes, node). With ``megatron``, also
    every stage ``Manual3D`` can build, with the batch on the first axis: each size as a data-parallel (n, 1)
    mesh (its constrained ILP is quick, and often better than what a memory-limited free ILP finds in its
    time) and as every (n / tp, tp) with tp a power of two inside a node and n / tp >= 2 (Manual3D's (1, tp) is
    the free (tp,) mesh with fewer choices). Without the mixed meshes below a whole node Wide-ResNet-4B on 16
    GPUs missed Manual3D's 4 stages on (2, 2) (32.053 s against 32.064 s on (4,)); each mixed mesh costs a 2-D
    layer ILP per layer kind (Wide-ResNet-4B's 17 kinds: 14 s on (2, 2), 6.5 s on (8, 2) here).
    ``search_stages`` drops the batch-first meshes whose dp does not divide the microbatch."""
    dpn, n_all = cluster.devices_per_node, cluster.num_devices
    inside = [1 << i for i in range(int(math.log2(dpn)) + 1) if dpn % (1 << i) == 0 and (1 << i) <= n_all]
    across = [k * dpn for k in range(2, cluster.nodes + 1) if cluster.nodes % k == 0]
    out = [MeshOption(n, (n,)) for n in inside] + [MeshOption(n, (n // dpn, dpn)) for n in across]
    if megatron:
        sizes = [n for n in inside + across if n >= 2]
        out += [MeshOption(n, (n, 1), True) for n in sizes]
        out += [MeshOption(n, (n // tp, tp), True) for n in sizes for tp in inside if 2 <= tp <= n // 2]
    return out


def layer_costs(graph: Graph, layers: list[int | None], cluster: ClusterSpec, options: list[MeshOption],
                limit: float, solver: str, time_limit_s: float | None,
                cache: IntraOpCache | None = None,
                num_microbatches: int = 1) -> tuple[list[list[LayerCost | None]], int]:
    """costs[layer][option variant] (None where the layer does not fit), and the number of ILPs solved.

    Each (devices, mesh) option has two variants: the layer's fastest plan, and its plan within its fair share
    of device memory (``limit`` x the layer's share of the model state / the share of the devices), which a
    stage holding many layers needs. The second is solved only when the fastest plan exceeds the share."""
    k = max((l for l in layers if l is not None), default=-1) + 1
    split = split_stages(graph, {l: l for l in range(k)}, k, op_layer=layers)
    state_total = float(sum(graph.tensors[t].nbytes for t in graph.inputs
                            if graph.tensors[t].role.value == "parameter")) or 1.0
    memo: dict[tuple[str, int, float], LayerCost | None] = {}
    solved = 0
    cache = cache if cache is not None else SHARED_CACHE

    def cost(sub: Any, key: str, l: int, oi: int, budget: float) -> LayerCost | None:
        nonlocal solved
        if (key, oi, budget) not in memo:
            solved += 1
            opt = options[oi]
            method = DataTensorShard(mesh_shape=opt.mesh) if opt.batch_first else ShardParallel(mesh_shape=opt.mesh)
            try:
                res = cache.plan(key, sub.graph, submesh_cluster(cluster, opt.devices), method, budget, solver,
                                 time_limit_s)
            except (InfeasibleMemoryError, ValueError, SolverTimeLimitError):   # a timeout counts as no plan
                memo[(key, oi, budget)] = None
            else:
                specs = _parent_specs(sub, res)
                apply_t = _compute_of(res, sub, lambda o: o not in split.microbatched)
                est = res.plan.estimate
                memo[(key, oi, budget)] = LayerCost(
                    t_mb=max(est.step_time_s - apply_t, 0.0),
                    t_fwd=_compute_of(res, sub, lambda o: graph.ops[o].section is Section.FORWARD),
                    t_apply=apply_t, peak=est.peak_memory_bytes,
                    stash=_stash_bytes(split, l, specs, res, False), inputs=_stash_bytes(split, l, specs, res, True))
        return memo[(key, oi, budget)]

    out: list[list[LayerCost | None]] = []
    for l in range(k):
        # a layer's memory as in one program per microbatch (a lone stage runs its forward and backward so):
        # the layer peaks then add up as the screen of ``uniform_ranking`` and the DP assume, with its slack; a
        # pipelined stage's forward outputs, written for its backward program, are counted by its exact plan
        # (Wide-ResNet-1B on 4 V100s at 24 microbatches: with the layers costed as two programs no layout passed
        # the screen, and Auto missed Manual3D's dp 4 stage, 29.32 s)
        sub = stage_subgraph(split, l, num_microbatches, one_microbatch_program=True)
        key = structure_key(sub.graph)
        state = float(sum(sub.graph.tensors[t].nbytes for t in sub.graph.inputs
                          if sub.graph.tensors[t].role.value == "parameter"))
        row: list[LayerCost | None] = []
        for oi, n in enumerate(o.devices for o in options):
            fast = cost(sub, key, l, oi, INF)
            share = limit * state / (state_total * n / cluster.num_devices)
            # a multi-node stage shares its state over many devices already: its lean plan is left out (it is
            # the slowest ILP of the search and rarely chosen)
            lean = fast if fast is None or fast.peak <= share or n > cluster.devices_per_node \
                else cost(sub, key, l, oi, round(share, -3))
            row += [fast, lean]
        out.append(row)
    return out, solved


def _range_tables(costs: list[list[LayerCost | None]], options: Sequence[MeshOption], m: int,
                  schedule: str, limit: float, max_stages: int) -> tuple[np.ndarray, np.ndarray]:
    """time[remat, o, k, j] of layers [k, j) as one stage, and fits[remat, o, k, j, s]: whether it fits with
    s stages from it to the end (s = 1..max_stages)."""
    k_all, n_opt = len(costs), len(options)
    times = np.full((2, n_opt, k_all + 1, k_all + 1), INF)
    fits = np.zeros((2, n_opt, k_all + 1, k_all + 1, max_stages + 1), dtype=bool)
    for o in range(n_opt):
        for k in range(k_all):
            t = fwd = peak = stash = 0.0
            for j in range(k + 1, k_all + 1):
                c = costs[j - 1][o]
                if c is None:
                    break
                t, fwd, peak, stash = t + c.t_mb, fwd + c.t_fwd, peak + c.peak, stash + c.stash
                inputs = costs[k][o].inputs  # type: ignore[union-attr]
                times[0, o, k, j], times[1, o, k, j] = t, t + fwd
                for s in range(1, max_stages + 1):
                    keep = m if schedule == "gpipe" else min(s, m)
                    fits[0, o, k, j, s] = peak + (keep - 1) * stash <= limit
                    fits[1, o, k, j, s] = peak + (keep - 1) * inputs <= limit
    return times, fits


def stage_dp(costs: list[list[LayerCost | None]], options: Sequence[MeshOption], n_devices: int,
             dpn: int, m: int, schedule: str, limit: float,
             remat_choices: tuple[int, ...] = (0, 1)) -> list[tuple[int, int, int, bool]] | None:
    """The best layout: a list of (first layer, end layer, option index, remat), or None when nothing fits."""
    k_all = len(costs)
    max_stages = min(k_all, n_devices)
    times, fits = _range_tables(costs, options, m, schedule, limit, max_stages)
    finite = np.unique(times[np.isfinite(times)])
    if finite.size == 0:
        return None
    if finite.size > T_MAX_GRID:     # a range of layers without compute costs 0, which no geometric grid holds
        positive = finite[finite > 0]
        grid = np.unique(np.concatenate([finite[finite <= 0],
                                         np.geomspace(positive.min(), positive.max(), T_MAX_GRID)]) * (1 + 1e-9))
    else:
        grid = finite * (1 + 1e-9)
    d_idx = np.arange(n_devices + 1)
    best: tuple[float, Any] | None = None
    for t_max in grid:               # ascending: once (m - 1) t_max alone exceeds the best, nothing can win
        if best is not None and (m - 1) * t_max >= best[0]:
            break
        total, choice = _dp_for(times, fits, options, n_devices, dpn, max_stages, t_max, d_idx, remat_choices)
        for s in range(1, max_stages + 1):
            v = total[s][0, 0]
            if np.isfinite(v):
                obj = v + (m - 1) * t_max
                if best is None or obj < best[0]:
                    best = (obj, (s, choice))
    if best is None:
        return None
    s, choice = best[1]
    layout, k, d = [], 0, 0
    while s > 0:
        j, o, r = choice[s][k, d]
        layout.append((k, int(j), int(o), bool(r)))
        k, d, s = int(j), d + options[int(o)][0], s - 1
    return layout


def _dp_for(times: np.ndarray, fits: np.ndarray, options: Sequence[MeshOption], n_devices: int,
            dpn: int, max_stages: int, t_max: float, d_idx: np.ndarray,
            remat_choices: tuple[int, ...] = (0, 1)) -> tuple[list[np.ndarray], list[np.ndarray]]:
    k_all = times.shape[2] - 1
    total = [np.full((k_all + 1, n_devices + 1), INF)]
    total[0][k_all, n_devices] = 0.0
    choice: list[Any] = [None]
    for s in range(1, max_stages + 1):
        cur = np.full((k_all + 1, n_devices + 1), INF)
        arg = np.zeros((k_all + 1, n_devices + 1, 3), dtype=np.int64)
        prev = total[s - 1]
        if not np.isfinite(prev).any():
            total.append(cur)
            choice.append(arg)
            continue
        for o, n in enumerate(opt[0] for opt in options):
            aligned = (d_idx % (n if n <= dpn else dpn) == 0) & (d_idx + n <= n_devices)
            shifted = np.full((k_all + 1, n_devices + 1), INF)
            shifted[:, :n_devices + 1 - n] = prev[:, n:]
            shifted[:, ~aligned] = INF
            for r in remat_choices:
                ok = fits[r, o, :, :, s] & (times[r, o] <= t_max)
                if not ok.any():
                    continue
                a = np.where(ok, times[r, o], INF)
                cand = a[:, :, None] + shifted[None, :, :]          # [k, j, d]
                j_best = np.argmin(cand, axis=1)
                v = np.take_along_axis(cand, j_best[:, None, :], axis=1)[:, 0, :]
                better = v < cur
                cur = np.where(better, v, cur)
                arg[better] = np.stack([j_best, np.full_like(j_best, o), np.full_like(j_best, r)], axis=-1)[better]
        total.append(cur)
        choice.append(arg)
    return total, choice


def search_stages(trace_at: Callable[[int], Graph], batch: int, cluster: ClusterSpec, method: PipeshardParallel, *,
                  memory_budget: float | None, solver: str, time_limit_s: float | None) -> StagedResult:
    start = time.perf_counter()
    limit = memory_budget if memory_budget is not None else float(cluster.device.memory_bytes)
    ms = [method.num_microbatches] if method.num_microbatches else microbatch_grid(batch)
    best: StagedResult | None = None
    log: list[dict[str, Any]] = []
    tried: dict[int, float] = {}
    by_layout: dict[tuple[Any, ...], dict[int, float]] = {}      # Megatron-shaped layout -> count -> step time
    least_need = INF               # the least memory per device of the layouts planned exactly that did not fit
    while ms:
        m = ms.pop(0)
        # a batch-first mesh whose dp axis does not divide the microbatch is the free mesh again
        options = [o for o in submesh_options(cluster) if not o.batch_first or (batch // m) % o.mesh[0] == 0]
        variants = [o for o in options for _ in ("fast", "lean")]
        t0 = time.perf_counter()
        graph = trace_at(m)
        t1 = time.perf_counter()
        layers = op_layers(graph, method.layers)
        cache, before = SHARED_CACHE, SHARED_CACHE.solved   # layer and stage plans shared by every layout
        costs, solved = layer_costs(graph, layers, cluster, options, limit, solver, time_limit_s, cache, m)
        t2 = time.perf_counter()
        search = _LayoutSearch(graph, cluster, method, costs, variants, m, limit, memory_budget, solver, time_limit_s,
                               cache)
        res = search.best(list(layer_flops(graph, layers)))
        log.append({"num_microbatches": m, "layer_ilps": solved, "ilps": cache.solved - before, "trace_time_s": t1 - t0,
                    "layer_time_s": t2 - t1,
                    "stage_plan_time_s": time.perf_counter() - t2, **search.entry})
        least_need = min(least_need, search.least_need)
        tried[m] = res.plan.estimate.step_time_s if res is not None else INF
        for kind, t in search.layout_times().items():
            by_layout.setdefault(kind, {})[m] = t
        if res is not None and (best is None
                                or res.plan.estimate.step_time_s < best.plan.estimate.step_time_s * (1 - 1e-9)):
            best = res
        if not ms and not method.num_microbatches:
            ms = (next_microbatch_count(tried, batch) or next_layout_count(tried, by_layout, batch)
                  or next_fitting_count(tried, batch))
    if best is None:
        why = "; ".join(f"{e['num_microbatches']} microbatches: {e.get('error', 'no layout fits')}" for e in log)
        least = f"; the least demanding layout planned needs {format_bytes(least_need)} per device" \
            if math.isfinite(least_need) else ""
        raise InfeasibleMemoryError(f"no pipeline layout fits in {limit / 2**30:.3g} GiB per device ({why}{least}): "
                                    "use more devices, a larger budget or a smaller batch", least_need, limit)
    search_log = dict(best.plan.search)
    search_log.update({"search_time_s": time.perf_counter() - start, "stage_dp": log})
    from dataclasses import replace

    return replace(best, plan=replace(best.plan, search=search_log))


DP_MEMORY_ROUNDS = 4
UNIFORM_MAX_TRIES = 6
UNIFORM_MARGIN = 0.12
# Summed layer peaks over-count a stage's memory (each layer's peak holds its own transient temporaries):
# MoE-380M on one V100 at 256 microbatches sums to more than 16 GB but plans exactly within it. Candidates
# that fit by the layer costs come first, then those within this much more than the limit; every exact plan
# is checked against the limit itself.
UNIFORM_MEMORY_SLACK = 1.5
# Summed layer costs over-estimate a lone stage on a whole 1-D mesh most: Llama-3-8B on 8 H100s at 64
# microbatches, one stage on (8,): 21.0 s by the layer costs, 16.65 s exact (each layer planned alone pays
# its own boundary layouts). Lone stages are one ILP each (5 s there), so they are planned within this wider
# margin of the fastest exact plan.
LONE_STAGE_MARGIN = 0.3


@dataclass
class _LayoutSearch:
    """Exact plans of the layouts the layer costs point to, for one microbatch count: the DP's layout, the same
    stages with flops-balanced layer ranges, and the best Megatron-shaped layouts (p equal stages on one kind
    of sub-mesh, as ``Manual3D`` builds them). ``best`` returns the fastest that fits; ``entry`` logs each."""

    graph: Graph
    cluster: ClusterSpec
    method: PipeshardParallel
    costs: list[list[LayerCost | None]]
    variants: list[MeshOption]
    m: int
    limit: float
    memory_budget: float | None
    solver: str
    time_limit_s: float | None
    cache: IntraOpCache

    def __post_init__(self) -> None:
        self.entry: dict[str, Any] = {"rounds": 0}
        self.least_need = INF          # the least per-device memory an exactly planned layout that did not fit needs
        self.tried: set[tuple[Any, ...]] = set()
        self.estimated: dict[tuple[Any, ...], float] = {}     # uniform layout kind -> layer-cost estimate
        self.exact_times: dict[tuple[Any, ...], float] = {}   # uniform layout kind -> exact step time

    def remat_choices(self) -> tuple[int, ...]:
        remat = self.method.remat
        if remat == "auto":
            return (0, 1)
        if remat is True or remat is False:
            return (int(remat),)
        raise ValueError(f"remat={remat!r} with stages='auto': give 'auto', True or False (a per-stage list "
                         "needs a fixed stage count)")

    @staticmethod
    def _key(stages: list[int] | int, opts: list[MeshOption], remat: list[bool]) -> tuple[Any, ...]:
        return (tuple(stages) if isinstance(stages, list) else stages, tuple(opts), tuple(remat))

    def planned(self, stages: list[int] | int, opts: list[MeshOption], remat: list[bool]) -> bool:
        return self._key(stages, opts, remat) in self.tried

    def exact(self, stages: list[int] | int, opts: list[MeshOption], remat: list[bool]) -> StagedResult:
        """One layout planned exactly (``plan_stages``); raises InfeasibleMemoryError when it does not fit."""
        from autopar.planner.pipelined import plan_fixed

        self.tried.add(self._key(stages, opts, remat))
        return plan_fixed(self.graph, self.cluster, self.method.layers, stages, [o.devices for o in opts],
                          [o.mesh for o in opts], remat, self.m, self.method.schedule, self.memory_budget,
                          self.solver, self.time_limit_s, self.method,
                          batch_on_first_axis=tuple(o.batch_first for o in opts), cache=self.cache)

    def plan(self, stages: list[int] | int, opts: list[MeshOption], remat: list[bool]) -> StagedResult | None:
        """``exact``, or None when it does not fit or was planned already."""
        if self.planned(stages, opts, remat):
            return None
        try:
            return self.exact(stages, opts, remat)
        except (InfeasibleMemoryError, SolverTimeLimitError) as e:
            self.entry.setdefault("errors", []).append(str(e)[:200])
            self.note_need(e)
            return None

    def note_need(self, e: Exception) -> None:
        if isinstance(e, InfeasibleMemoryError) and math.isfinite(e.min_budget_bytes) and e.min_budget_bytes > 0:
            self.least_need = min(self.least_need, e.min_budget_bytes)

    def best(self, flops: list[float]) -> StagedResult | None:
        first = self.dp_layout()
        found = [r for r in (first, *self.uniform_layouts(flops, INF if first is None else
                                                           first.plan.estimate.step_time_s)) if r is not None]
        if not found:
            self.entry.setdefault("error", "no layout fits")
            return None
        self.entry.pop("error", None)
        return min(found, key=lambda r: r.plan.estimate.step_time_s)

    def dp_layout(self) -> StagedResult | None:
        """The DP's layout planned exactly. The DP adds layers' memory; when the exact stage plan needs more than
        the limit, the DP runs again with its limit lowered by the overshoot (a few rounds). Then the same
        stages with flops-balanced layer ranges, when they use equal sub-meshes (the DP adds per-layer costs,
        which the exact stage plans do not always follow)."""
        dp_limit = self.limit
        for _ in range(DP_MEMORY_ROUNDS):
            self.entry["rounds"] += 1
            layout = stage_dp(self.costs, self.variants, self.cluster.num_devices, self.cluster.devices_per_node,
                              self.m, self.method.schedule, dp_limit, self.remat_choices())
            self.entry.setdefault("layouts", []).append(layout)
            if layout is None:
                self.entry["error"] = "no layout fits"
                return None
            opts = [self.variants[o] for _, _, o, _ in layout]
            remat = [r for *_, r in layout]
            try:
                res = self.exact([j - k for k, j, _, _ in layout], opts, remat)
            except InfeasibleMemoryError as e:
                self.entry["error"] = str(e)
                self.note_need(e)
                need = e.min_budget_bytes if math.isfinite(e.min_budget_bytes) and e.min_budget_bytes > 0 \
                    else 2 * self.limit
                dp_limit *= min(self.limit / need, 0.95)
                continue
            except SolverTimeLimitError as e:            # the uniform layouts are still tried
                self.entry["error"] = str(e)[:200]
                return None
            self.entry.pop("error", None)
            if len(layout) >= 2 and len(set(opts)) == 1:
                alt = self.plan(len(layout), opts, remat)
                if alt is not None:
                    self.entry["balanced_step_time_s"] = alt.plan.estimate.step_time_s
                    if alt.plan.estimate.step_time_s < res.plan.estimate.step_time_s * (1 - 1e-9):
                        return alt
            return res
        return None

    def uniform_layouts(self, flops: list[float], first: float) -> list[StagedResult | None]:
        """Megatron-shaped layouts by their layer-cost estimate, fastest first, planned exactly while the estimate
        is within ``UNIFORM_MARGIN`` of the fastest exact plan so far (``first``: the DP's; no bound before any
        plan fits), at most ``UNIFORM_MAX_TRIES`` of them. Layouts planned already are passed over. The bound
        follows the fastest exact plan, not the DP's alone, and a layout that does not fit only uses a try:
        the layer costs can misjudge a stage's memory (its exact ILP, on a 2-D mesh under a time limit, may
        not find the layers' plans; MoE-2.4B at 128 microbatches: two (2, 4) / (4, 2) stages fit by the layer
        costs, needed 54 GiB exactly, and used up the two candidates the search had, so the (8, 1) stage
        Manual3D picks, 44.91 s, was never planned and Auto reported 48.08 s). A candidate over the bound is
        passed over, not the end of the list: the slack candidates come after those that fit and may be faster
        (Wide-ResNet-2B at 24 microbatches: only a rematerialized (4, 1) layout fits by the layer costs, 41.9 s
        estimated, over the DP's 36.0 s; the (8, 1) and (4, 2) ones at 29.2 s, within the slack, were never
        planned, and Auto reported 29.12 s at 48 microbatches against Manual3D's 28.58 s). The margin covers
        the layer costs' error: within 1 % of the exact plan for 1-D stages, up to 10 % either way for 2-D or
        batch-first ones (GPT-2.6B on a (2, 4) stage: 293.2 s estimated, 278.7 s exact; GPT-39B on 64 H100s,
        8 stages on (4, 2) at 256 microbatches: 22.81 s estimated, 20.75 s exact, which a 6 % margin over the
        DP's 20.91 s passed over)."""
        def ranking(limit: float) -> list[tuple[float, int, bool]]:
            return uniform_ranking(self.costs, self.variants, flops, self.cluster.num_devices, self.m,
                                   self.method.schedule, limit, self.remat_choices())

        fits = ranking(self.limit)         # those that fit by the layer costs first, then those within the slack
        ranked = fits + [r for r in ranking(self.limit * UNIFORM_MEMORY_SLACK) if r not in fits]
        self.estimated = {self._kind(o, remat): est for est, o, remat in fits}
        out: list[StagedResult | None] = []
        log = self.entry.setdefault("uniform", [])
        fastest = first
        for est, o, remat in ranked:
            opt = self.variants[o]
            p = self.cluster.num_devices // opt.devices
            if len(log) >= UNIFORM_MAX_TRIES:
                break
            margin = LONE_STAGE_MARGIN if p == 1 else UNIFORM_MARGIN
            if est > fastest * (1 + margin) or self.planned(p, [opt] * p, [remat] * p):
                continue       # not break: the slack candidates after those that fit are sorted on their own
            res = self.plan(p, [opt] * p, [remat] * p)
            log.append({"stages": p, "mesh": list(opt.mesh), "batch_first": opt.batch_first, "remat": remat,
                        "estimated_step_time_s": est,
                        "step_time_s": res.plan.estimate.step_time_s if res is not None else None})
            out.append(res)
            if res is not None:
                fastest = min(fastest, res.plan.estimate.step_time_s)
                self.exact_times[self._kind(o, remat)] = res.plan.estimate.step_time_s
        return out

    def _kind(self, variant: int, remat: bool) -> tuple[Any, ...]:
        opt = self.variants[variant]
        return self.cluster.num_devices // opt.devices, opt.mesh, opt.batch_first, remat

    def layout_times(self) -> dict[tuple[Any, ...], float]:
        """Each Megatron-shaped layout's step time at this count: exact where it was planned, else the layer
        costs' estimate (for those that fit by them)."""
        return {**self.estimated, **self.exact_times}


def uniform_ranking(costs: list[list[LayerCost | None]], variants: list[MeshOption], flops: list[float],
                    n_devices: int, m: int, schedule: str, limit: float,
                    remat_choices: tuple[int, ...]) -> list[tuple[float, int, bool]]:
    """(estimated step time, variant, remat) of every layout of p = n_devices / devices equal stages on one
    sub-mesh kind with flops-balanced layer ranges that fits by the layer costs, fastest first: one entry per
    sub-mesh (its fast variant where it fits, else its lean one; rematerialized only where neither fits)."""
    k = len(costs)
    seen: set[tuple[MeshOption, bool]] = set()
    out = []
    for o, opt in enumerate(variants):
        p = n_devices // opt.devices
        if n_devices % opt.devices or p > k:
            continue
        ranges = balanced_split(flops, p)
        for r in remat_choices:
            if (opt, False) in seen or (opt, bool(r)) in seen:
                continue                           # rematerialize only where the stages do not fit without
            times = []
            for s, (a, b) in enumerate(ranges):
                cs = [c for c in (costs[l][o] for l in range(a, b)) if c is not None]
                if len(cs) != b - a:
                    break
                keep = m if schedule == "gpipe" else min(p - s, m)
                held = cs[0].inputs if r else sum(c.stash for c in cs)
                if sum(c.peak for c in cs) + (keep - 1) * held > limit:
                    break
                times.append(sum(c.t_mb + (c.t_fwd if r else 0.0) for c in cs))
            else:
                seen.add((opt, bool(r)))
                out.append((sum(times) + (m - 1) * max(times), o, bool(r)))
    return sorted(out)


MAX_MICROBATCH_COUNTS = 7


def next_microbatch_count(tried: dict[int, float], batch: int) -> list[int]:
    """After the grid: the untried neighbour (half or double, dividing the batch) of the fastest count so far,
    while the fastest has one and fewer than ``MAX_MICROBATCH_COUNTS`` counts were tried. The step time over
    log m is about unimodal (too little memory at few microbatches, a large bubble in between, per-microbatch
    overheads and small matmuls at many), so this walks downhill from the best grid point."""
    if len(tried) >= MAX_MICROBATCH_COUNTS or not any(math.isfinite(v) for v in tried.values()):
        return []
    best = min(tried, key=tried.__getitem__)
    for m in (best // 2, best * 2):
        if 1 <= m <= batch and batch % m == 0 and m not in tried:
            return [m]
    return []


LAYOUT_WALK_MARGIN = 0.25


def next_layout_count(tried: dict[int, float], by_layout: Mapping[tuple[Any, ...], Mapping[int, float]],
                      batch: int) -> list[int]:
    """When the walk from the fastest count ends: the untried neighbour of the best count of another
    Megatron-shaped layout whose best is within ``LAYOUT_WALK_MARGIN`` of the fastest plan, nearest first.
    The step time of one layout over log m is about unimodal, their minimum is not: Llama-3-8B on 8 H100s,
    batch 256, is fastest as 4 stages on (2,) at 256 microbatches (17.20 s) among the grid's counts and their
    neighbours, and as one stage on (8,) at 64 (16.65 s), which does not fit at 32 and is 1.3x slower at 256;
    walking from that layout's best count (128) finds it."""
    finite = [v for v in tried.values() if math.isfinite(v)]
    if len(tried) >= MAX_MICROBATCH_COUNTS or not finite:
        return []
    bound = min(finite) * (1 + LAYOUT_WALK_MARGIN)
    bests = sorted((min(times.values()), min(times, key=times.__getitem__)) for times in by_layout.values() if times)
    for t, m in bests:
        if t > bound:
            break
        for n in (m // 2, m * 2):
            if 1 <= n <= batch and batch % n == 0 and n not in tried:
                return [n]
    return []


def next_fitting_count(tried: dict[int, float], batch: int) -> list[int]:
    """While no count tried fits: an untried count dividing the batch between two tried ones, the pair of
    largest counts first, nearest their geometric mean (ties: the fewer microbatches). MoE-27B on 32 V100s,
    batch 1024, fits nothing at the grid's 1, 128 and 1024 microbatches (at 1024 one sample per microbatch
    leaves no batch-first mesh), and Manual3D's 4 stages on (4, 2) fit at 256."""
    if len(tried) >= MAX_MICROBATCH_COUNTS or any(math.isfinite(v) for v in tried.values()):
        return []
    counts = sorted(tried)
    for a, b in reversed(list(zip(counts, counts[1:]))):
        between = [n for n in range(a + 1, b) if batch % n == 0]
        if between:
            mid = math.log(a * b) / 2
            return [min(between, key=lambda n: (abs(math.log(n) - mid), n))]
    return []


def microbatch_grid(batch: int) -> list[int]:
    """Microbatch counts tried by the search: the whole batch as one, one sample per microbatch, and eight
    samples per microbatch (each dividing the batch)."""
    out = {1, batch}
    if batch >= 16 and batch % 8 == 0:
        out.add(batch // 8)
    return sorted(out)
