"""Per-device memory of a graph that runs as several XLA programs in turn: a pipelined stage's forward, backward
and update pieces.

Consumes: a Graph annotated ``PROGRAM_OF_OP`` (the program index of each op, in run order: 0 forward, 1
backward, 2 update for a stage made by ``planner.pipeshard.stage_subgraph``), the per-device bytes of its
tensors, extra temporaries and the device kind, as ``memory.estimate_memory`` takes them. Produces: the
``MemoryEstimate`` of the program with the largest footprint.

A program's footprint is what the device holds while it runs: its own arguments, outputs and temporaries
(``estimate_memory`` of the program's ops cut out as a graph of their own: a value another program reads is
an output of the program that makes it, never a temporary), plus what it does not take as an argument but
the device keeps meanwhile: the step's state (parameters, optimizer state) and the values an earlier program
made for a later one. This is the sum ``autopar.audit`` reads off the compiled pieces. Modelled as one
program, a stage held every argument and output of the step at its peak — the batch input and the activations
it sends next to the update's state, gradients and new state: mlp_tiny's two-stage pipeline read 1.16 / 1.19
of XLA's peak.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Callable, Collection, Mapping, Sequence

from autopar.cost_models.memory import MemoryEstimate, estimate_memory

if TYPE_CHECKING:
    from autopar.ir.graph import Graph, Tensor
    from autopar.ir.subgraph import Subgraph

__all__ = ["PROGRAM_OF_OP", "estimate_programs", "program_estimates"]

# Graph annotation: a tuple with the index of the program each op runs in (ops of one program keep their order).
PROGRAM_OF_OP = "program_of_op"

TensorBytes = Callable[["Tensor"], float]
_PIECES: "weakref.WeakKeyDictionary[Graph, list[Subgraph]]" = weakref.WeakKeyDictionary()


def _programs(g: "Graph", phases: Sequence[int]) -> list["Subgraph"]:
    """Each program's ops as a Subgraph, in run order (cut once per graph: the planner estimates one stage graph
    under many plans)."""
    from autopar.ir.subgraph import extract

    hit = _PIECES.get(g)
    if hit is None:
        hit = [extract(g, [o for o, p in enumerate(phases) if p == k]) for k in sorted(set(phases))]
        _PIECES[g] = hit
    return hit


def estimate_programs(g: "Graph", tensor_bytes: TensorBytes | None = None,
                      extra: Sequence[tuple[float, int, int]] = (), platform: str = "",
                      moved_reads: Mapping[int, Collection[int]] | None = None) -> MemoryEstimate:
    """The footprint of ``g``'s largest program (``program_estimates``); ``g`` without ``PROGRAM_OF_OP`` is one
    program (``estimate_memory``)."""
    return max(program_estimates(g, tensor_bytes, extra, platform, moved_reads), key=lambda m: m.peak_bytes)


def program_estimates(g: "Graph", tensor_bytes: TensorBytes | None = None,
                      extra: Sequence[tuple[float, int, int]] = (), platform: str = "",
                      moved_reads: Mapping[int, Collection[int]] | None = None) -> list[MemoryEstimate]:
    """Each program's footprint, in run order (see the module docstring). ``extra``: temporaries as (bytes,
    first op, last op) in ``g``'s op ids; each belongs to the program of its first op and ends with it at the
    latest. ``moved_reads``: as ``estimate_memory`` takes them, in ``g``'s ids."""
    phases = g.annotations.get(PROGRAM_OF_OP)
    if not phases or len(set(phases)) == 1:
        return [estimate_memory(g, tensor_bytes, extra, platform, moved_reads)]
    if len(phases) != len(g.ops):
        raise ValueError(f"{PROGRAM_OF_OP} gives {len(phases)} entries for a graph of {len(g.ops)} ops")
    size: TensorBytes = tensor_bytes or (lambda t: float(t.nbytes))
    state = {t for t in g.inputs if g.tensors[t].role.value != "batch"}
    out = []
    for k, sub in enumerate(_programs(g, phases)):
        parent = sub.parent_tensor
        local = {p: i for i, p in enumerate(sub.parent_op)}
        last = len(sub.parent_op) - 1
        mine = [(b, local[f], local.get(e, last)) for b, f, e in extra if f in local]
        inner = sub.sub_tensor
        moved = {inner[t]: {local[o] for o in ops if o in local} for t, ops in (moved_reads or {}).items()
                 if t in inner and sub.graph.tensors[inner[t]].producer is not None}
        mem = estimate_memory(sub.graph, lambda t: size(g.tensors[parent[t.id]]), mine, platform, moved)
        reads = set(sub.input_parents)
        # kept on the device while this program runs without being its argument: the step's state, and values
        # an earlier program made that a later one reads
        kept = sum(size(g.tensors[t]) for t in state if t not in reads)
        kept += sum(size(t) for t in g.tensors if t.id not in reads and _made_before_read_after(g, t, phases, k))
        out.append(MemoryEstimate(argument_bytes=mem.argument_bytes + kept, output_bytes=mem.output_bytes,
                                  alias_bytes=mem.alias_bytes, temp_peak_bytes=mem.temp_peak_bytes,
                                  peak_op=None if mem.peak_op is None else sub.parent_op[mem.peak_op]))
    return out


def _made_before_read_after(g: "Graph", t: "Tensor", phases: Sequence[int], k: int) -> bool:
    return (t.producer is not None and phases[t.producer] < k
            and any(phases[c] > k for c in t.consumers))
