"""The one place autopar touches JAX internals.

Supported: jax 0.10.2 (Python 3.11) to 0.12.x (Python 3.12). Differences handled here:

- jax 0.12 merged ``ClosedJaxpr`` into ``Jaxpr``; both still expose ``.jaxpr`` and ``.consts`` on a closed
  jaxpr, while ``remat2`` carries an *open* jaxpr (no consts) in both.
- the pjit primitive is named ``jit``; checkpoint is ``remat2``.
- name stacks (``jax.named_scope``) live in ``jax._src.source_info_util``.

Everything else in autopar uses public JAX only.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax._src import source_info_util as _source_info
from jax.extend import core as _jcore

__all__ = [
    "INLINED_CALLS",
    "STRUCTURED",
    "bind",
    "call_jaxpr",
    "current_name_stack",
    "eqn_name_stack",
    "is_dropvar",
    "is_literal",
    "jaxpr_parts",
    "literal_value",
    "structured_bodies",
    "var_shape_dtype",
]

# Higher-order primitives whose body is inlined into the graph: primitive name -> param holding the body.
INLINED_CALLS: dict[str, str] = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "eval_jaxpr": "call_jaxpr",     # jax 0.12's name for a staged closed call
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
    "custom_lin": "jaxpr",
}
REMAT_CALLS = frozenset({"remat2", "checkpoint"})

# Structured control flow kept as one op carrying its body graphs.
STRUCTURED = frozenset({"scan", "while", "cond"})


def jaxpr_parts(j: Any) -> tuple[Any, Sequence[Any]]:
    """(open jaxpr, consts) of a closed jaxpr (0.10 ``ClosedJaxpr``, 0.12 merged ``Jaxpr``) or an open one."""
    inner = getattr(j, "jaxpr", None)
    if inner is not None and inner is not j and hasattr(inner, "eqns"):
        return inner, tuple(getattr(j, "consts", ()))
    return j, tuple(getattr(j, "consts", ()) or ())


def call_jaxpr(eqn: Any) -> tuple[Any, Sequence[Any]] | None:
    """Body of an inlinable call equation, or None when ``eqn`` is not one."""
    key = INLINED_CALLS.get(eqn.primitive.name)
    if key is None or key not in eqn.params:
        return None
    return jaxpr_parts(eqn.params[key])


def structured_bodies(eqn: Any) -> dict[str, tuple[Any, Sequence[Any]]]:
    """Named bodies of a structured op: scan -> body; while -> cond, body; cond -> branch0..n."""
    name, p = eqn.primitive.name, eqn.params
    if name == "scan":
        return {"body": jaxpr_parts(p["jaxpr"])}
    if name == "while":
        return {"cond": jaxpr_parts(p["cond_jaxpr"]), "body": jaxpr_parts(p["body_jaxpr"])}
    if name == "cond":
        return {f"branch{i}": jaxpr_parts(b) for i, b in enumerate(p["branches"])}
    return {}


def is_literal(v: Any) -> bool:
    return isinstance(v, _jcore.Literal)


def is_dropvar(v: Any) -> bool:
    return isinstance(v, _jcore.DropVar)


def literal_value(v: Any) -> Any:
    return v.val


def var_shape_dtype(v: Any) -> tuple[tuple[int, ...], Any]:
    """Shape and dtype of a jaxpr variable. Extended dtypes (PRNG keys, ``key<fry>``) are kept as JAX's dtype
    object (it has ``name`` and ``itemsize``); abstract tokens get a zero-size placeholder."""
    aval = v.aval
    shape = tuple(map(int, getattr(aval, "shape", ())))
    dtype = getattr(aval, "dtype", None)
    if isinstance(dtype, np.dtype):
        return shape, dtype
    if dtype is None:
        return shape, np.dtype("float32")
    if jax.dtypes.issubdtype(dtype, jax.dtypes.extended):
        return shape, dtype
    return shape, np.dtype(dtype)


def eqn_name_stack(eqn: Any) -> str:
    return str(eqn.source_info.name_stack)


def current_name_stack() -> Any:
    """The name stack that equations traced now will carry (compared by equality only)."""
    return _source_info.current_name_stack()


def bind(prim: Any, invals: Sequence[Any], params: dict[str, Any]) -> list[Any]:
    out = prim.bind(*invals, **params)
    return list(out) if prim.multiple_results else [out]


def iter_eqns(jaxpr: Any) -> Iterator[Any]:
    return iter(jaxpr.eqns)


def jax_version() -> tuple[int, ...]:
    return tuple(int(x) for x in jax.__version__.split(".")[:3] if x.isdigit())
