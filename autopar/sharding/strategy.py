"""Per-operation sharding strategies, and the slot enumerator most rules are built from.

A ``Strategy`` says which spec each operand must arrive in, which spec each output leaves in (never
partial: a strategy that splits a contracting/reduced dim resolves the partial sum itself, by an
all-reduce or a reduce-scatter listed in ``comm``), and how many ways the op's work is divided.

Rules describe an op as *slots*: one slot per independent iteration dimension, naming which dim of each
operand and output it indexes (a contracting dim indexes no output). ``enumerate_slot_strategies``
assigns every mesh axis (size > 1) to at most one slot (several axes on one slot in mesh order, major to
minor), keeps assignments whose splits divide every dim they touch, and turns splits of output-less slots
into all-reduce and reduce-scatter variants.
Consumes: a Graph, one Op and a LogicalMesh (through ``RuleContext``). Produces: deduplicated strategies
in a deterministic order, at most ``MAX_STRATEGIES``. Refuses: nothing (invalid splits are skipped).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from autopar.sharding.reshard import CollectiveStep
from autopar.sharding.spec import ShardingSpec

if TYPE_CHECKING:
    from autopar.ir.graph import Graph, Op, Tensor
    from autopar.sharding.mesh import LogicalMesh

MAX_STRATEGIES = 256


@dataclass(frozen=True)
class Strategy:
    name: str
    in_specs: tuple[ShardingSpec | None, ...]
    out_specs: tuple[ShardingSpec, ...]
    work_shards: int
    comm: tuple[CollectiveStep, ...] = ()

    def __post_init__(self) -> None:
        for s in self.out_specs:
            if s.partial:
                raise ValueError(f"Strategy {self.name!r}: out spec {s} is partial; resolve the partial sum "
                                 f"inside the strategy (comm) and give the resolved out spec")
        if self.work_shards < 1:
            raise ValueError(f"Strategy {self.name!r}: work_shards={self.work_shards} must be >= 1")

    def key(self) -> tuple[Any, ...]:
        return (self.in_specs, self.out_specs, self.comm)


@dataclass(frozen=True)
class RuleContext:
    graph: "Graph"
    op: "Op"
    mesh: "LogicalMesh"

    @property
    def in_tensors(self) -> list["Tensor"]:
        return self.graph.op_inputs(self.op)

    @property
    def out_tensors(self) -> list["Tensor"]:
        return self.graph.op_outputs(self.op)

    @property
    def in_shapes(self) -> list[tuple[int, ...]]:
        return [t.shape for t in self.in_tensors]

    @property
    def out_shapes(self) -> list[tuple[int, ...]]:
        return [t.shape for t in self.out_tensors]

    @property
    def params(self) -> Any:
        return self.op.params

    def split_axes(self) -> tuple[str, ...]:
        """Mesh axes worth splitting over (size > 1), in mesh order."""
        return tuple(n for n, s in zip(self.mesh.axis_names, self.mesh.shape) if s > 1)


Rule = Callable[[RuleContext], list[Strategy]]


@dataclass(frozen=True)
class Slot:
    """One iteration dimension of an op: the dim it indexes in each operand and output (None: absent)."""

    label: str
    in_dims: tuple[int | None, ...]
    out_dims: tuple[int | None, ...]

    @property
    def reduces(self) -> bool:
        return all(d is None for d in self.out_dims)


def replicated_strategy(ctx: RuleContext, name: str = "replicated") -> Strategy:
    ins = tuple(None if len(s) == 0 else ShardingSpec.replicated(len(s)) for s in ctx.in_shapes)
    outs = tuple(ShardingSpec.replicated(len(s)) for s in ctx.out_shapes)
    return Strategy(name, ins, outs, 1)


def _specs(shapes: Sequence[tuple[int, ...]], which: str, slots: Sequence[Slot],
           assign: dict[int, tuple[str, ...]], scalar_none: bool) -> tuple[ShardingSpec | None, ...]:
    out: list[ShardingSpec | None] = []
    for k, shape in enumerate(shapes):
        dims: list[tuple[str, ...]] = [()] * len(shape)
        for si, axes in assign.items():
            d = getattr(slots[si], which)[k]
            if d is not None:
                dims[d] = dims[d] + axes
        out.append(None if scalar_none and not shape else ShardingSpec(tuple(dims)))
    return tuple(out)


def _out_specs(shapes: Sequence[tuple[int, ...]], slots: Sequence[Slot],
               assign: dict[int, tuple[str, ...]]) -> tuple[ShardingSpec, ...]:
    """``_specs`` of the outputs, where even a scalar gets a (replicated) spec."""
    return tuple(s for s in _specs(shapes, "out_dims", slots, assign, scalar_none=False) if s is not None)


def _label(slots: Sequence[Slot], assign: dict[int, tuple[str, ...]]) -> str:
    return ",".join(f"{slots[i].label}:{'+'.join(a)}" for i, a in sorted(assign.items())) or "replicated"


def enumerate_slot_strategies(ctx: RuleContext, slots: Sequence[Slot], reduce_op: str = "sum",
                              reduce_scatter: bool = True,
                              in_shapes: Sequence[tuple[int, ...]] | None = None,
                              out_shapes: Sequence[tuple[int, ...]] | None = None,
                              all_reduce_per_slot: bool = False) -> list[Strategy]:
    """Every valid assignment of mesh axes to slots, as strategies (see the module docstring).

    ``all_reduce_per_slot``: resolve partial results with one all-reduce per split reducing slot (over that
    slot's axes) instead of one over all partial axes: XLA's SPMD partitioner does so for a reduce whose
    reduced dims are split over different mesh axes."""
    mesh = ctx.mesh
    ins_shapes = list(in_shapes if in_shapes is not None else ctx.in_shapes)
    outs_shapes = list(out_shapes if out_shapes is not None else ctx.out_shapes)
    axes = ctx.split_axes()
    itemsize = [np.dtype(t.dtype).itemsize for t in ctx.out_tensors]
    result: list[Strategy] = []
    for choice in itertools.product(range(-1, len(slots)), repeat=len(axes)):
        assign: dict[int, tuple[str, ...]] = {}
        for a, si in zip(axes, choice):
            if si >= 0:
                assign[si] = assign.get(si, ()) + (a,)
        in_specs = _specs(ins_shapes, "in_dims", slots, assign, scalar_none=True)
        out_specs = _out_specs(outs_shapes, slots, assign)
        if not all(s is None or s.divides(sh, mesh) for s, sh in zip(in_specs, ins_shapes)):
            continue
        if not all(s.divides(sh, mesh) for s, sh in zip(out_specs, outs_shapes)):
            continue
        work = math.prod(mesh.size(a) for a in assign.values()) if assign else 1
        label = _label(slots, assign)
        partial = tuple(a for a in axes for si, ax in assign.items() if slots[si].reduces and a in ax)
        if not partial:
            result.append(Strategy(label, in_specs, out_specs, work))
            continue
        # Resolve the partial sum: all-reduce (output replicated over the partial axes) ...
        groups = [tuple(a for a in axes if a in ax) for si, ax in sorted(assign.items()) if slots[si].reduces] \
            if all_reduce_per_slot else [partial]
        ar = tuple(CollectiveStep("all-reduce", s.bytes_per_device(sh, np.dtype("u1"), mesh) * isz,
                                  group, reduce_op)
                   for group in groups for s, sh, isz in zip(out_specs, outs_shapes, itemsize))
        result.append(Strategy(f"{label}|all-reduce", in_specs, out_specs, work, ar))
        # ... or reduce-scatter onto one output dim (single-output ops only).
        if not reduce_scatter or len(outs_shapes) != 1:
            continue
        spec, shape = out_specs[0], outs_shapes[0]
        for d in range(len(shape)):
            scattered = spec.with_dim(d, spec.dims[d] + partial)
            if not scattered.divides(shape, mesh):
                continue
            rs = (CollectiveStep("reduce-scatter", spec.bytes_per_device(shape, np.dtype("u1"), mesh)
                                 * itemsize[0], partial, reduce_op),)
            result.append(Strategy(f"{label}|reduce-scatter@{d}", in_specs, (scattered,), work, rs))
    return finalize(result)


def finalize(strategies: Sequence[Strategy], cap: int = MAX_STRATEGIES) -> list[Strategy]:
    """Dedupe (first wins) and cap: over ``cap``, keep the most divided, communication-free ones first."""
    seen: set[Any] = set()
    out: list[Strategy] = []
    for s in strategies:
        if s.key() not in seen:
            seen.add(s.key())
            out.append(s)
    if len(out) > cap:
        order = sorted(range(len(out)), key=lambda i: (bool(out[i].comm), -out[i].work_shards, i))
        keep = sorted(order[:cap])
        if not any(out[i].work_shards == 1 and not out[i].comm for i in keep):
            repl = [i for i in range(len(out)) if out[i].work_shards == 1 and not out[i].comm]
            if repl:
                keep = sorted(keep[:-1] + repl[:1])
        out = [out[i] for i in keep]
    return out


def elementwise_slots(out_shape: tuple[int, ...], in_shapes: Sequence[tuple[int, ...]],
                      n_outs: int = 1, skip: Sequence[int] = ()) -> list[Slot]:
    """One slot per output dim; an operand indexes it when it has that dim at full size (not broadcast)."""
    slots = []
    for d, n in enumerate(out_shape):
        if d in skip:
            continue
        ins = tuple(d if len(s) == len(out_shape) and s[d] == n else None for s in in_shapes)
        slots.append(Slot(f"d{d}", ins, (d,) * n_outs))
    return slots
