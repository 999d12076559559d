"""Markers: ``autopar.value_and_grad`` / ``autopar.grad`` and ``autopar.mark_layer_boundary()``.

They are transparent under plain ``jax.jit`` (the same values, the same compiled program up to op names):
they only put names on the equations through ``jax.named_scope``. The tracer reads those names back:

- the differentiated function runs inside the scope ``autopar_grad``; JAX prefixes the equations of the forward
  pass with ``jvp(...)`` and those of the backward pass with ``transpose(jvp(...))``;
- each layer runs inside a scope ``autopar_layer<k>``; ``mark_layer_boundary()`` closes layer k and opens
  layer k + 1. Call it at the level of the layer loop: a boundary marked inside a user's own named scope
  still works, but the layer scopes then nest (the innermost one wins).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Callable, Sequence

import jax

from autopar import _jax_compat

GRAD_SCOPE = "autopar_grad"
LAYER_SCOPE = "autopar_layer"


class _LayerState(threading.local):
    def __init__(self) -> None:
        self.depth = 0                       # nesting of active layer contexts (only the outermost counts)
        self.index = 0                       # current layer number
        self.scopes: list[Any] = []          # entered named_scope context managers, innermost last
        self.stack_after_enter: Any = None   # the name stack right after our last scope was entered
        self.boundaries = 0


_state = _LayerState()


def _enter_layer(index: int) -> None:
    cm = jax.named_scope(f"{LAYER_SCOPE}{index}")
    cm.__enter__()
    _state.scopes.append(cm)
    _state.stack_after_enter = _jax_compat.current_name_stack()


@contextlib.contextmanager
def layer_context() -> Any:
    """Make ``mark_layer_boundary()`` effective for the code run inside; nested uses share one counter."""
    outermost = _state.depth == 0
    _state.depth += 1
    if outermost:
        _state.index, _state.boundaries = 0, 0
        _enter_layer(0)
    try:
        yield _state
    finally:
        _state.depth -= 1
        if outermost:
            while _state.scopes:
                _state.scopes.pop().__exit__(None, None, None)
            _state.stack_after_enter = None


def mark_layer_boundary() -> None:
    """End the current layer and start the next one (a no-op outside autopar's tracing and markers)."""
    if _state.depth == 0:
        return
    _state.index += 1
    _state.boundaries += 1
    if _state.scopes and _jax_compat.current_name_stack() == _state.stack_after_enter:
        # Our scope is innermost: swap it, keeping the name stack flat.
        _state.scopes.pop().__exit__(None, None, None)
    _enter_layer(_state.index)


def _marked(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        with jax.named_scope(GRAD_SCOPE), layer_context():
            return fn(*args, **kwargs)

    return inner


def value_and_grad(fun: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False,
                   **kwargs: Any) -> Callable[..., Any]:
    """Drop-in for ``jax.value_and_grad`` that marks the forward and backward sections for autopar."""
    return jax.value_and_grad(_marked(fun), argnums=argnums, has_aux=has_aux, **kwargs)


def grad(fun: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False,
         **kwargs: Any) -> Callable[..., Any]:
    """Drop-in for ``jax.grad`` that marks the forward and backward sections for autopar."""
    return jax.grad(_marked(fun), argnums=argnums, has_aux=has_aux, **kwargs)
