"""The pipeline runtime: drive per-stage SPMD programs over microbatches on sub-meshes (single controller).

Consumes: a ``StageSplit``, one ``jax.sharding.Mesh`` per stage, each stage's tensor specs (keyed by the
parent graph's tensor ids), pinned values and resharded operands, the number of microbatches, the schedule and which stages are
rematerialized. Produces: a callable on the flat full-batch arguments that returns the flat outputs, and a
timeline of what ran (stage, microbatch, phase, start, end).

How it runs: batch inputs are cut into microbatches along their first dimension. Each stage's forward and
backward pieces run per microbatch in the schedule's order; values cross stages by ``jax.device_put`` to the
receiving program's sharding; values handed to the update (gradients, the loss) are summed inside the
backward/forward programs and divided by the number of microbatches by the last one. Apply pieces run once,
wave by wave. Dispatch is asynchronous, so stages overlap; ``record_timeline(block=True)`` waits for each
program to measure it. A rematerialized stage stores only its inputs per microbatch and recomputes its forward
inside the backward program.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding

from autopar.emit.spmd import interpret, operand_shardings
from autopar.ir.graph import Role
from autopar.ir.subgraph import Subgraph, extract
from autopar.pipeline.partition import APPLY, BACKWARD, FORWARD, Piece, StageSplit
from autopar.pipeline.schedule import stage_order
from autopar.sharding.spec import ShardingSpec

ONCE = -1  # the microbatch key of values made once per step (inputs, apply results, averaged values)


@dataclass(frozen=True)
class TimelineEvent:
    stage: int
    microbatch: int | None
    phase: str
    start: float
    end: float


@dataclass
class PieceProgram:
    piece: Piece
    sub: Subgraph
    in_shardings: tuple[NamedSharding, ...]
    out_shardings: tuple[NamedSharding, ...]
    averaged: tuple[int, ...]                # output positions summed over microbatches
    run: Callable[..., tuple[Any, ...]]      # the piece as a Python function of its flat inputs
    _jitted: dict[str, Any]

    @property
    def inputs(self) -> tuple[int, ...]:
        return self.sub.input_parents

    @property
    def outputs(self) -> tuple[int, ...]:
        return self.sub.output_parents

    def program(self, kind: str, m: int) -> Any:
        """``plain``, ``first`` (starts the sums), ``acc`` (adds to them), ``last`` (adds and averages)."""
        if kind not in self._jitted:
            self._jitted[kind] = _jit_variant(self, kind, m)
        return self._jitted[kind]


def _jit_variant(pp: PieceProgram, kind: str, m: int) -> Any:
    n = len(pp.in_shardings)
    acc_shardings = tuple(pp.out_shardings[j] for j in pp.averaged)
    if kind in ("plain", "first") or not pp.averaged:
        return jax.jit(pp.run, in_shardings=pp.in_shardings, out_shardings=pp.out_shardings)

    def step(*args: Any) -> tuple[Any, ...]:
        outs = list(pp.run(*args[:n]))
        for acc, j in zip(args[n:], pp.averaged):
            outs[j] = acc + outs[j]
            if kind == "last":
                outs[j] = outs[j] / np.asarray(m, dtype=outs[j].dtype)
        return tuple(outs)

    return jax.jit(step, in_shardings=pp.in_shardings + acc_shardings, out_shardings=pp.out_shardings,
                   donate_argnums=tuple(range(n, n + len(pp.averaged))))


def _named(mesh: jax.sharding.Mesh, spec: ShardingSpec | None, ndim: int) -> NamedSharding:
    s = spec if spec is not None else ShardingSpec.replicated(ndim)
    return NamedSharding(mesh, s.to_partition_spec())


def build_piece(split: StageSplit, piece: Piece, mesh: jax.sharding.Mesh, specs: Mapping[int, ShardingSpec],
                fixed: set[int], remat: bool,
                operand_specs: Mapping[tuple[int, int], ShardingSpec] | None = None) -> PieceProgram:
    """The program of one piece; ``operand_specs``: (parent op id, operand index) -> the spec the stage's plan
    reshards that operand to before the op reads it (pinned at the reader, as ``emit_spmd`` does)."""
    g = split.graph
    ops = list(piece.ops)
    drop: set[int] = set()
    fwd = next((p for p in split.pieces if p.stage == piece.stage and p.phase == FORWARD), None)
    bwd = next((p for p in split.pieces if p.stage == piece.stage and p.phase == BACKWARD), None)
    if remat and piece.phase == FORWARD and bwd is not None:
        inside_b = set(bwd.ops)
        drop = {t for o in piece.ops for t in g.ops[o].outputs
                if not g.tensors[t].is_output and g.tensors[t].consumers
                and all(c in inside_b for c in g.tensors[t].consumers)}
    elif remat and piece.phase == BACKWARD and fwd is not None:
        ops = list(fwd.ops) + ops
        drop = {t for o in fwd.ops for t in g.ops[o].outputs}
    elif piece.phase == APPLY:
        drop = {t for o in piece.ops if o in split.copied for t in g.ops[o].outputs if not g.tensors[t].is_output}
    sub = extract(g, ops, drop_outputs=drop)
    sg = sub.graph
    spec = lambda st: specs.get(sub.parent_tensor[st])  # noqa: E731
    ins = tuple(_named(mesh, spec(t), len(sg.tensors[t].shape)) for t in sg.inputs)
    outs = tuple(_named(mesh, spec(t), len(sg.tensors[t].shape)) for t in sg.outputs)
    constrain = {t: _named(mesh, spec(t), len(sg.tensors[t].shape))
                 for t in range(len(sg.tensors)) if sub.parent_tensor[t] in fixed and spec(t) is not None
                 and sg.tensors[t].producer is not None}
    wanted = {}
    for o, parent in enumerate(sub.parent_op):
        for k in range(len(sg.ops[o].inputs)):
            if (parent, k) in (operand_specs or {}):
                wanted[(o, k)] = operand_specs[(parent, k)]  # type: ignore[index]
    sub_specs = {t: s for t in range(len(sg.tensors)) if (s := spec(t)) is not None}
    operands = operand_shardings(sg, sub_specs, wanted, mesh)
    averaged_set = set(split.averaged)
    averaged = tuple(j for j, t in enumerate(sub.output_parents) if t in averaged_set) \
        if piece.per_microbatch else ()
    return PieceProgram(piece=piece, sub=sub, in_shardings=ins, out_shardings=outs, averaged=averaged,
                        run=interpret(sg, constrain, operands), _jitted={})


class PipelineRuntime:
    def __init__(self, split: StageSplit, meshes: Sequence[jax.sharding.Mesh],
                 specs: Sequence[Mapping[int, ShardingSpec]], fixed: Sequence[set[int]], num_microbatches: int,
                 schedule: str = "1f1b", remat: Sequence[bool] = (),
                 operand_specs: Sequence[Mapping[tuple[int, int], ShardingSpec]] = ()) -> None:
        if len(meshes) != split.num_stages:
            raise ValueError(f"{split.num_stages} stages but {len(meshes)} meshes")
        self.split = split
        self.m = int(num_microbatches)
        self.schedule = schedule
        self.remat = tuple(remat) if remat else (False,) * split.num_stages
        self.meshes = tuple(meshes)
        operands = tuple(operand_specs) if operand_specs else ({},) * split.num_stages
        self.programs = [build_piece(split, p, meshes[p.stage], specs[p.stage], fixed[p.stage],
                                     self.remat[p.stage], operands[p.stage]) for p in split.pieces]
        self.timeline: list[TimelineEvent] = []
        self.block = False
        self._tasks = self._task_lists()

    # ---- the static task order ----------------------------------------------------------------------
    def _task_lists(self) -> list[list[tuple[int, int]]]:
        p = self.split.num_stages
        out: list[list[tuple[int, int]]] = []
        for s in range(p):
            by_phase = {pp.piece.phase: i for i, pp in enumerate(self.programs)
                        if pp.piece.stage == s and pp.piece.per_microbatch}
            tasks = [(by_phase[ph], mb) for ph, mb in stage_order(self.schedule, p, self.m, s) if ph in by_phase]
            applies = sorted((pp.piece.wave, i) for i, pp in enumerate(self.programs)
                             if pp.piece.stage == s and not pp.piece.per_microbatch)
            out.append(tasks + [(i, ONCE) for _, i in applies])
        return out

    def _key(self, tid: int, mb: int) -> tuple[int, int]:
        g = self.split.graph
        t = g.tensors[tid]
        per_mb = t.role is Role.BATCH or (t.producer is not None and t.producer in self.split.microbatched)
        return (tid, mb if per_mb and mb != ONCE else ONCE)

    def lower_pieces(self) -> dict[str, Any]:
        """Every program, lowered on abstract inputs with its shardings (``.compile()`` gives XLA's view); a
        piece that sums over microbatches is lowered in its accumulating form."""
        out = {}
        for pp in self.programs:
            g = pp.sub.graph
            ins = [jax.ShapeDtypeStruct(g.tensors[t].shape, g.tensors[t].dtype, sharding=sh)
                   for t, sh in zip(g.inputs, pp.in_shardings)]
            kind = "acc" if pp.averaged and self.m > 1 else "plain"
            accs = [jax.ShapeDtypeStruct(g.tensors[g.outputs[j]].shape, g.tensors[g.outputs[j]].dtype,
                                         sharding=pp.out_shardings[j]) for j in pp.averaged] if kind == "acc" else []
            out[pp.piece.name] = pp.program(kind, self.m).lower(*ins, *accs)
        return out

    # ---- running ------------------------------------------------------------------------------------
    def __call__(self, flat_args: Sequence[Any]) -> list[Any]:
        g = self.split.graph
        if len(flat_args) != len(g.inputs):
            raise TypeError(f"the step takes {len(g.inputs)} flat inputs, got {len(flat_args)}")
        env: dict[tuple[int, int], Any] = {}
        for tid, x in zip(g.inputs, flat_args):
            t = g.tensors[tid]
            if t.role is Role.BATCH:
                for i, part in enumerate(_microbatches(x, self.m, t.shape, t.name)):
                    env[(tid, i)] = part
            else:
                env[(tid, ONCE)] = x
        reads: Counter[tuple[int, int]] = Counter()
        for tasks in self._tasks:
            for i, mb in tasks:
                for tid in self.programs[i].inputs:
                    reads[self._key(tid, mb)] += 1
        for tid in g.outputs:
            reads[(tid, ONCE)] += 1
        moved: dict[tuple[tuple[int, int], NamedSharding], Any] = {}
        accs: dict[int, list[Any]] = {}
        queues = [deque(t) for t in self._tasks]
        self.timeline = []
        t0 = time.perf_counter()
        while any(queues):
            progressed = False
            for s, q in enumerate(queues):
                if not q:
                    continue
                i, mb = q[0]
                pp = self.programs[i]
                keys = [self._key(tid, mb) for tid in pp.inputs]
                if not all(k in env for k in keys):
                    continue
                q.popleft()
                progressed = True
                start = time.perf_counter() - t0
                args = [_fetch(env, moved, k, sh) for k, sh in zip(keys, pp.in_shardings)]
                outs = self._run_piece(pp, i, mb, args, accs)
                if self.block:
                    jax.block_until_ready(outs)
                self.timeline.append(TimelineEvent(pp.piece.stage, None if mb == ONCE else mb, pp.piece.phase,
                                                   start, time.perf_counter() - t0))
                for j, (tid, v) in enumerate(zip(pp.outputs, outs)):
                    if j in pp.averaged:
                        if mb == self.m - 1:
                            env[(tid, ONCE)] = v
                        continue
                    env[self._key(tid, mb)] = v
                    if mb == self.m - 1 and tid in self.split.last_value:
                        env[(tid, ONCE)] = v
                for k in keys:
                    reads[k] -= 1
                    if reads[k] <= 0:
                        env.pop(k, None)
                        for mk in [mk for mk in moved if mk[0] == k]:
                            del moved[mk]
            if not progressed:
                waiting = [self.programs[q[0][0]].piece.name for q in queues if q]
                raise RuntimeError(f"pipeline schedule deadlocked with {waiting} waiting; this is an autopar bug "
                                   "in the stage split, please report it with the plan")
        return [env[(tid, ONCE)] for tid in g.outputs]

    def _run_piece(self, pp: PieceProgram, i: int, mb: int, args: list[Any], accs: dict[int, list[Any]]) -> Any:
        if not pp.averaged or self.m == 1:
            return pp.program("plain", self.m)(*args)
        kind = "first" if mb == 0 else ("last" if mb == self.m - 1 else "acc")
        prev = accs.pop(i, [])
        outs = pp.program(kind, self.m)(*args, *prev)
        if kind != "last":
            accs[i] = [outs[j] for j in pp.averaged]
        return outs


def _fetch(env: Mapping[tuple[int, int], Any], moved: dict[Any, Any], key: tuple[int, int],
           sharding: NamedSharding) -> Any:
    v = env[key]
    if isinstance(v, jax.Array) and (v.sharding == sharding or v.sharding.is_equivalent_to(sharding, v.ndim)):
        return v
    hit = moved.get((key, sharding))
    if hit is None:
        hit = jax.device_put(v, sharding)
        moved[(key, sharding)] = hit
    return hit


def _microbatches(x: Any, m: int, shape: tuple[int, ...], name: str) -> list[Any]:
    full = tuple(np.shape(x))
    if not full or full[0] != shape[0] * m or full[1:] != tuple(shape[1:]):
        raise ValueError(f"batch input {name or '?'} has shape {full}; with {m} microbatches of shape {shape} it "
                         f"must be ({shape[0] * m}, ...) — the batch size must be divisible by num_microbatches")
    if m == 1:
        return [x]
    size = shape[0]
    return [x[i * size:(i + 1) * size] for i in range(m)]
