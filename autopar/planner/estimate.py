"""The predicted cost of a solved intra-op problem: an ``Estimate`` (time split, collectives, memory)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

from autopar.cost_models.collectives import bytes_sent, collective_time
from autopar.cost_models.program_memory import estimate_programs
from autopar.plan import Estimate
from autopar.sharding.reshard import CollectiveStep, reshard_steps

if TYPE_CHECKING:
    from autopar.planner.intra_op import IntraOpProblem


def chosen_collectives(ip: "IntraOpProblem", choices: Sequence[int]) -> list[CollectiveStep]:
    """Every collective the plan implies: strategies' own (partial sums) and resharding between ops."""
    steps: list[CollectiveStep] = []
    for v, node in enumerate(ip.nodes):
        steps.extend(node.strategies[choices[v]].comm)
    for v, chosen in ip.followers.values():
        steps.extend(chosen[choices[v]].comm)
    specs = ip.tensor_specs(choices)
    done: set[tuple[int, object]] = set()
    for site in ip.sites:
        want = site.wanted[choices[site.node]]
        src = specs.get(site.tensor)
        if want is None or src is None or src == want or (site.tensor, want) in done:
            continue
        done.add((site.tensor, want))  # a value resharded to one spec is resharded once (XLA CSEs the rest)
        t = ip.graph.tensors[site.tensor]
        steps.extend(reshard_steps(src, want, t.shape, t.dtype, ip.mesh))
    return steps


def reshard_copies(ip: "IntraOpProblem", choices: Sequence[int], platform: str = ""
                   ) -> tuple[list[tuple[float, int, int]], dict[int, set[int]]]:
    """The copies resharding makes, one per (tensor, wanted spec), live from its first to its last use, and the
    reads that go through a copy made as soon as its value exists (tensor id -> reading ops;
    ``memory.estimate_memory``'s ``moved_reads``).

    On a platform in ``memory.platform_early_slices`` a resharding that only slices (no collective: replicated
    to split, ``reshard_steps`` is empty) is a dynamic-slice of the value that XLA's scheduler runs right
    after the value is made, fused with its producer, and the full value is not kept for the later readers:
    the copy lives from the value's producer to its last reader, and those readers no longer hold the value
    (gpt_tiny on a (2, 4) mesh: q, k, v and the attention probabilities, replicated over the heads where the
    plan splits the heads' dot, are held as one head's slices until the backward; XLA:CPU, jax 0.10.2). This
    holds for readers that take their operands as buffers (dots); an elementwise or reduction reader fuses the
    dynamic-slice into itself and reads the full value, which it keeps alive (the softmax backward's reads of
    ``exp``), so those copies stay at their readers. Only within one program of a pipelined stage."""
    from autopar.cost_models.memory import FUSES_INPUTS, platform_early_slices
    from autopar.cost_models.program_memory import PROGRAM_OF_OP

    g = ip.graph
    specs = ip.tensor_specs(choices)
    spans: dict[tuple[int, Any], list[int]] = {}
    for site in ip.sites:
        want = site.wanted[choices[site.node]]
        src = specs.get(site.tensor)
        if want is None or src is None or src == want or site.op < 0:
            continue
        spans.setdefault((site.tensor, want), []).append(site.op)
    phases = g.annotations.get(PROGRAM_OF_OP)
    out = []
    moved: dict[int, set[int]] = {}
    for (tid, want), ops in spans.items():
        t = g.tensors[tid]
        nbytes = float(want.bytes_per_device(t.shape, t.dtype, ip.mesh))
        p = t.producer
        early = []
        if (platform in platform_early_slices and p is not None
                and (not phases or len({phases[o] for o in (p, *ops)}) == 1)
                and not reshard_steps(specs[tid], want, t.shape, t.dtype, ip.mesh)):
            early = [o for o in ops if g.ops[o].primitive not in FUSES_INPUTS]
        if early and p is not None:
            out.append((nbytes, p, max(early)))
            moved.setdefault(tid, set()).update(early)
        late = [o for o in ops if o not in early]
        if late:
            out.append((nbytes, min(late), max(late)))
    return out, moved


def operand_specs(ip: "IntraOpProblem", choices: Sequence[int]) -> list[tuple[int, int, Any]]:
    """(op id, operand index, wanted spec) of every operand the plan reshards before an op reads it. The
    emitter pins each such operand at its consumer so that XLA partitions the op with the strategy the plan
    costed (left free, its partitioner may pick another algorithm: e.g. all-gather a dot's operand where the
    plan reduce-scatters the product)."""
    specs = ip.tensor_specs(choices)
    out: set[tuple[int, int, Any]] = set()
    for site in ip.sites:
        want = site.wanted[choices[site.node]]
        src = specs.get(site.tensor)
        if want is None or src is None or src == want or site.op < 0:
            continue
        for k, tid in enumerate(ip.graph.ops[site.op].inputs):
            if tid == site.tensor:
                out.add((site.op, k, want))
    return sorted(out, key=lambda x: (x[0], x[1]))


def held_buffers(ip: "IntraOpProblem", choices: Sequence[int]) -> dict[int, float]:
    """Op outputs whose buffer is larger than their spec's share (``intra_op.output_buffer_bytes``)."""
    from autopar.planner.intra_op import output_buffer_bytes

    out: dict[int, float] = {}
    for v, node in enumerate(ip.nodes):
        s = node.strategies[choices[v]]
        if node.kind != "op" or not any(c.kind == "reduce-scatter" for c in s.comm):
            continue
        for op_id in (node.key, *node.tied_ops):
            for k, o in enumerate(ip.graph.ops[op_id].outputs):
                out[o] = output_buffer_bytes(s, k, ip.graph.tensors[o], ip.mesh)
    return out


def estimate_plan(ip: "IntraOpProblem", choices: Sequence[int], device: Any) -> Estimate:
    mesh = ip.mesh
    compute = float(sum(ip.compute_costs[v][c] for v, c in enumerate(choices)))
    steps = chosen_collectives(ip, choices)
    comm = 0.0
    by_kind: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for s in steps:
        comm += collective_time(s.kind, s.nbytes, mesh.axis_links(s.axes))
        by_kind[s.kind] += bytes_sent(s.kind, s.nbytes, mesh.size(s.axes))
        counts[s.kind] += 1
    specs = ip.tensor_specs(choices)
    held = held_buffers(ip, choices)

    def tensor_bytes(t: Any) -> float:
        if t.id in held:
            return held[t.id]
        spec = specs.get(t.id)
        return float(t.nbytes) if spec is None else float(spec.bytes_per_device(t.shape, t.dtype, mesh))

    # a pipelined stage: the largest of its programs (forward, backward, update), else the one program
    reshards, moved = reshard_copies(ip, choices, device.kind)
    mem = estimate_programs(ip.graph, tensor_bytes, reshards, platform=device.kind, moved_reads=moved)
    from autopar.planner.memory_row import HELD_COPIES

    copies = ip.graph.annotations.get(HELD_COPIES, {})   # what other microbatches of a pipelined stage hold
    peak_bytes = mem.peak_bytes + sum(k * tensor_bytes(ip.graph.tensors[t]) for t, k in copies.items())
    flops = ip.graph.flops()
    step = compute + comm
    peak = _peak_flops(ip, device) * mesh.num_devices
    return Estimate(step_time_s=step, compute_time_s=compute, comm_time_s=comm, bubble_fraction=0.0,
                    flops=flops, mfu=(flops / (step * peak)) if step > 0 and peak > 0 else 0.0,
                    peak_memory_bytes=peak_bytes, comm_bytes=dict(by_kind), collective_counts=dict(counts))


def _peak_flops(ip: "IntraOpProblem", device: Any) -> float:
    """Peak of the dtype that carries most matmul work, at the precision it runs at: fp32 programs are measured
    against the fp32 peak, or the TF32 peak where their matmuls run on TF32 tensor cores (XLA's default
    precision on A100/H100; ``compute.tensor_core_fp32``), so the MFU of an fp32 step there stays below 1."""
    from autopar.cost_models.compute import tensor_core_fp32
    from autopar.ir.flops import op_flops

    kinds: dict[tuple[Any, bool], float] = {}
    for op in ip.graph.ops:
        if op.primitive in ("dot_general", "conv_general_dilated"):
            key = (ip.graph.tensors[op.inputs[0]].dtype, tensor_core_fp32(ip.graph, op))
            kinds[key] = kinds.get(key, 0.0) + op_flops(ip.graph, op)
    if not kinds:
        return float(device.flops_for(ip.graph.tensors[ip.graph.inputs[0]].dtype)) if ip.graph.inputs else 0.0
    dtype, tensor_cores = max(kinds, key=lambda k: kinds[k])    # the first of equals, as most_common
    return float(device.flops_for(dtype, matmul=tensor_cores))
