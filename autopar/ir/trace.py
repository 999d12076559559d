"""Trace a JAX function into an autopar Graph.

Consumes: a function and example arguments (arrays or ``jax.ShapeDtypeStruct``; nothing is allocated).
Produces: a ``Graph`` whose ops are the jaxpr's equations in program order, with ``jit``, closed calls,
``custom_jvp_call``, ``custom_vjp_call`` and ``remat2`` inlined (ops from a remat region keep its id) and
``scan`` / ``while`` / ``cond`` kept as single ops that carry their body graphs.
Refuses: nothing; unknown primitives become ordinary ops (the sharding rules decide what to do with them).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import numpy as np

from autopar import _jax_compat as jc
from autopar.ir.graph import Graph, Op, Role, Section, Tensor
from autopar.markers import GRAD_SCOPE, LAYER_SCOPE, layer_context

_LAYER_RE = re.compile(re.escape(LAYER_SCOPE) + r"(\d+)")


class _Builder:
    """Accumulates tensors and ops; ``freeze`` turns them into immutable Tensor / Op records."""

    def __init__(self) -> None:
        self.t_shape: list[tuple[int, ...]] = []
        self.t_dtype: list[np.dtype] = []
        self.t_role: list[Role] = []
        self.t_producer: list[int | None] = []
        self.t_consumers: list[list[int]] = []
        self.t_meta: dict[int, dict[str, Any]] = {}
        self.ops: list[dict[str, Any]] = []
        self.remat_regions = 0

    def new_tensor(self, shape: tuple[int, ...], dtype: np.dtype, role: Role,
                   producer: int | None = None, **meta: Any) -> int:
        tid = len(self.t_shape)
        self.t_shape.append(shape)
        self.t_dtype.append(dtype)
        self.t_role.append(role)
        self.t_producer.append(producer)
        self.t_consumers.append([])
        if meta:
            self.t_meta[tid] = meta
        return tid

    def constant(self, value: Any) -> int:
        arr = np.asarray(value)
        return self.new_tensor(tuple(arr.shape), arr.dtype, Role.CONSTANT, value=value)

    def read(self, env: dict[Any, int], v: Any) -> int:
        if jc.is_literal(v):
            value = jc.literal_value(v)
            shape, dtype = jc.var_shape_dtype(v)
            return self.new_tensor(shape, dtype, Role.CONSTANT, value=np.asarray(value, dtype=dtype))
        return env[v]

    # ---- jaxpr walking ----------------------------------------------------------------------------
    def walk(self, jaxpr: Any, env: dict[Any, int], prefix: str, remat: int | None) -> None:
        for eqn in jaxpr.eqns:
            stack = jc.eqn_name_stack(eqn)
            full = f"{prefix}/{stack}" if prefix and stack else (prefix or stack)
            body = jc.call_jaxpr(eqn)
            if body is not None:
                self.inline(eqn, body, env, full, remat)
                continue
            ins = [self.read(env, v) for v in eqn.invars]
            subgraphs = {}
            if eqn.primitive.name in jc.STRUCTURED:
                subgraphs = {k: _body_graph(j, c) for k, (j, c) in jc.structured_bodies(eqn).items()}
            op_id = len(self.ops)
            outs = []
            for v in eqn.outvars:
                shape, dtype = jc.var_shape_dtype(v)
                tid = self.new_tensor(shape, dtype, Role.INTERMEDIATE, producer=op_id)
                if not jc.is_dropvar(v):
                    env[v] = tid
                outs.append(tid)
            for t in ins:
                self.t_consumers[t].append(op_id)
            self.ops.append(dict(primitive=eqn.primitive.name, params=eqn.params, inputs=tuple(ins),
                                 outputs=tuple(outs), name_stack=full, remat=remat,
                                 subgraphs=subgraphs, prim=eqn.primitive))

    def inline(self, eqn: Any, body: tuple[Any, Sequence[Any]], env: dict[Any, int], stack: str,
               remat: int | None) -> None:
        inner, consts = body
        inner_env: dict[Any, int] = {}
        for v, c in zip(inner.constvars, consts):
            inner_env[v] = self.constant(c)
        outer_ins = [self.read(env, v) for v in eqn.invars]
        if len(inner.invars) != len(outer_ins):
            raise ValueError(f"cannot inline {eqn.primitive.name}: {len(inner.invars)} body inputs for "
                             f"{len(outer_ins)} operands")
        inner_env.update(zip(inner.invars, outer_ins))
        if eqn.primitive.name in jc.REMAT_CALLS:
            self.remat_regions += 1
            remat = self.remat_regions
        self.walk(inner, inner_env, stack, remat)
        for outer_v, inner_v in zip(eqn.outvars, inner.outvars):
            if jc.is_dropvar(outer_v):
                continue
            env[outer_v] = self.read(inner_env, inner_v)

    # ---- freezing ---------------------------------------------------------------------------------
    def freeze(self, inputs: Sequence[int], outputs: Sequence[int], **graph_kw: Any) -> Graph:
        out_set = set(outputs)
        tensors = tuple(
            Tensor(id=i, shape=self.t_shape[i], dtype=self.t_dtype[i], role=self.t_role[i],
                   producer=self.t_producer[i], consumers=tuple(self.t_consumers[i]),
                   is_output=i in out_set, **self.t_meta.get(i, {}))
            for i in range(len(self.t_shape)))
        sections = _sections([o["name_stack"] for o in self.ops])
        ops = tuple(
            Op(id=i, section=sections[i],
               layer=None if sections[i] is Section.OPTIMIZER else _layer_of(o["name_stack"]), **o)
            for i, o in enumerate(self.ops))
        return Graph(ops=ops, tensors=tensors, inputs=tuple(inputs), outputs=tuple(outputs), **graph_kw)


def _default_matmul_precision() -> str | None:
    """``jax_default_matmul_precision`` at trace time, lower-case (None: the backend default)."""
    value = jax.config.jax_default_matmul_precision  # type: ignore[attr-defined]  # options are set at runtime
    return None if value is None else str(value).lower()


def _layer_of(stack: str) -> int | None:
    found = _LAYER_RE.findall(stack)
    return int(found[-1]) if found else None


def _sections(stacks: Sequence[str]) -> list[Section]:
    """Forward / backward / optimizer from JAX's transform names (``jvp(`` and ``transpose(``).

    Unmarked ops before the last backward op are forward (input preprocessing, loss glue); unmarked ops
    after it are the optimizer. A function without gradients is all forward.
    """
    marks: list[Section | None] = []
    last_bwd = -1
    for i, s in enumerate(stacks):
        if "transpose(" in s:
            marks.append(Section.BACKWARD)
            last_bwd = i
        elif "jvp(" in s:
            marks.append(Section.FORWARD)
        else:
            marks.append(None)
    return [m if m is not None else (Section.OPTIMIZER if i > last_bwd >= 0 else Section.FORWARD)
            for i, m in enumerate(marks)]


def _body_graph(jaxpr: Any, consts: Sequence[Any]) -> Graph:
    b = _Builder()
    env: dict[Any, int] = {}
    for v, c in zip(jaxpr.constvars, consts):
        env[v] = b.constant(c)
    inputs = []
    for v in jaxpr.invars:
        shape, dtype = jc.var_shape_dtype(v)
        env[v] = b.new_tensor(shape, dtype, Role.INTERMEDIATE)
        inputs.append(env[v])
    b.walk(jaxpr, env, "", None)
    outputs = [b.read(env, v) for v in jaxpr.outvars]
    return b.freeze(inputs, outputs)


def _normalize_argnums(argnums: int | Sequence[int] | None, nargs: int, what: str) -> tuple[int, ...]:
    if argnums is None:
        return ()
    nums = tuple(argnums) if isinstance(argnums, (tuple, list, range)) else (argnums,)
    out = []
    for n in nums:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"{what}={argnums!r}: argument numbers must be ints (positions in *args)")
        if not -nargs <= n < nargs:
            raise ValueError(f"{what}={argnums!r} is out of range for {nargs} positional arguments")
        out.append(int(n) % nargs)
    return tuple(sorted(set(out)))


def trace(fn: Callable[..., Any], *args: Any, static_argnums: int | Sequence[int] = (),
          batch_argnums: int | Sequence[int] | None = None,
          donate_argnums: int | Sequence[int] = ()) -> Graph:
    """Trace ``fn(*args)`` into a Graph without running it.

    ``args`` may be arrays or ``jax.ShapeDtypeStruct``s. Inputs from ``batch_argnums`` get the role
    ``batch``, all other inputs ``parameter``; inputs from ``donate_argnums`` are marked donated.
    Argument numbers count all positional arguments, static ones included.
    """
    nargs = len(args)
    static = _normalize_argnums(static_argnums, nargs, "static_argnums")
    batch = _normalize_argnums(batch_argnums, nargs, "batch_argnums")
    donate = _normalize_argnums(donate_argnums, nargs, "donate_argnums")
    if set(static) & (set(batch) | set(donate)):
        raise ValueError("an argument cannot be both static and batch/donated")

    def marked(*a: Any) -> Any:
        with layer_context():
            return fn(*a)

    closed, out_shape = jax.make_jaxpr(marked, static_argnums=static, return_shape=True)(*args)
    jaxpr, consts = jc.jaxpr_parts(closed)

    dynamic = [(i, a) for i, a in enumerate(args) if i not in static]
    b = _Builder()
    env: dict[Any, int] = {}
    inputs: list[int] = []
    leaves_iter = iter(jaxpr.invars)
    for argnum, arg in dynamic:
        for path, _leaf in jax.tree_util.tree_flatten_with_path(arg)[0]:
            v = next(leaves_iter)
            shape, dtype = jc.var_shape_dtype(v)
            role = Role.BATCH if argnum in batch else Role.PARAMETER
            tid = b.new_tensor(shape, dtype, role, name=f"[{argnum}]{jax.tree_util.keystr(path)}",
                               argnum=argnum, donated=argnum in donate)
            env[v] = tid
            inputs.append(tid)
    for v, c in zip(jaxpr.constvars, consts):
        env[v] = b.constant(c)
    b.walk(jaxpr, env, "", None)
    outputs = [b.read(env, v) for v in jaxpr.outvars]

    stacks = [o["name_stack"] for o in b.ops]
    annotations = {
        "grad_marked": any(GRAD_SCOPE in s for s in stacks),
        "num_layers_marked": 1 + max((l for s in stacks if (l := _layer_of(s)) is not None), default=0),
        "static_argnums": static,
        "batch_argnums": batch,
        "donate_argnums": donate,
        "remat_regions": b.remat_regions,
        # what a dot with precision=None runs at (None: the backend's default; "highest"/"float32": full fp32)
        "default_matmul_precision": _default_matmul_precision(),
    }
    return b.freeze(inputs, outputs,
                    in_tree=jax.tree_util.tree_structure(tuple(a for _, a in dynamic)),
                    out_tree=jax.tree_util.tree_structure(out_shape),
                    annotations=annotations)
