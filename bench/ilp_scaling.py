"""ILP scaling measurement (a script, not a test): ~3,000 nodes x ~8 strategies, ~4,000 edges.

The problem imitates what the sharding rules produce: every strategy of a node yields one of 8 output
layouts; an edge costs ``tensor_bytes / bandwidth * R[layout_src, layout_dst]`` with ``R`` a fixed resharding
table (0 on the diagonal, all-gather/all-to-all factors off it); node costs are compute time divided by the
number of shards of that strategy plus its internal collective. The graph is a chain of "layers" with
residual (skip) edges, and memory groups are sliding liveness windows.

Run:  python bench/ilp_scaling.py [--nodes 3000] [--backends ortools,ortools-cpsat,pulp] [--budget 0.9]
Prints, per backend: reduced size, variables, constraints, solve time and objective.
"""

from __future__ import annotations

import argparse
import random
import time

from autopar.planner import Edge, MemoryGroup, ShardingProblem, solve

LAYOUTS = 8


def resharding_table(rng: random.Random) -> list[list[float]]:
    """Cost factor of converting layout a to layout b (0 for a == b, an all-gather ~1, an all-to-all ~0.5)."""
    return [[0.0 if a == b else rng.choice((0.5, 1.0, 1.0, 2.0)) for b in range(LAYOUTS)] for a in range(LAYOUTS)]


def sharding_like_problem(nodes: int, edges_per_node: float, strategies: int, seed: int,
                          budget_fraction: float | None) -> ShardingProblem:
    rng = random.Random(seed)
    table = resharding_table(rng)
    out_layout = [[rng.randrange(LAYOUTS) for _ in range(strategies)] for _ in range(nodes)]
    costs, memory = [], []
    for _ in range(nodes):
        flops_time = rng.uniform(1e-5, 1e-3)
        shards = [rng.choice((1, 2, 4, 8)) for _ in range(strategies)]
        comm = [rng.choice((0.0, 0.0, rng.uniform(0, 2e-4))) for _ in range(strategies)]
        costs.append(tuple(flops_time / s + c for s, c in zip(shards, comm)))
        size = rng.uniform(1e6, 1e8)
        memory.append(tuple(float(int(size / s)) for s in shards))
    edges = []
    n_edges = int(nodes * edges_per_node)
    for k in range(n_edges):
        dst = 1 + k % (nodes - 1)
        src = dst - 1 if k < nodes - 1 else max(0, dst - rng.randint(2, 12))  # chain, then residual skips
        nbytes = rng.uniform(1e6, 1e8)
        bw = 1e11
        mat = [[nbytes / bw * table[out_layout[src][i]][out_layout[dst][j]] for j in range(strategies)]
               for i in range(strategies)]
        edges.append(Edge(src, dst, mat))
    groups = tuple(MemoryGroup(tuple(range(s, min(nodes, s + 16))), 1e8) for s in range(0, nodes, 8))
    budget = None
    if budget_fraction is not None:
        worst = max(g.base_bytes + sum(max(memory[v]) for v in g.nodes) for g in groups)
        best = max(g.base_bytes + sum(min(memory[v]) for v in g.nodes) for g in groups)
        budget = best + budget_fraction * (worst - best)
    return ShardingProblem(tuple(f"op{v}" for v in range(nodes)), tuple(costs), tuple(edges),
                           tuple(memory), groups, budget)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3000)
    ap.add_argument("--edges-per-node", type=float, default=4 / 3)
    ap.add_argument("--strategies", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=None, help="fraction between min and max group memory")
    ap.add_argument("--backends", default="ortools,ortools-cpsat,pulp")
    ap.add_argument("--presolve", type=int, default=1)
    ap.add_argument("--time-limit", type=float, default=300.0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    p = sharding_like_problem(args.nodes, args.edges_per_node, args.strategies, args.seed, args.budget)
    print(f"problem: {p.num_nodes} nodes x {args.strategies} strategies, {len(p.edges)} edges, "
          f"{len(p.memory_groups)} memory groups, budget={p.memory_budget} (built in {time.perf_counter() - t0:.1f}s)")
    for backend in args.backends.split(","):
        sol = solve(p, backend=backend, time_limit_s=args.time_limit, presolve=bool(args.presolve))
        print(f"{backend:12s} {sol.status:8s} objective={sol.objective:.9g} time={sol.solve_time_s:.2f}s "
              f"vars={sol.num_variables} rows={sol.num_constraints} peak={sol.peak_group_memory:.4g} "
              f"[{'; '.join(sol.notes)}]", flush=True)


if __name__ == "__main__":
    main()
