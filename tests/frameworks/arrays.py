"""Deterministic real arrays for the fixtures, made with numpy's PRNG (no XLA compilation at all).

The frameworks' own initialisers run ``jax.random`` eagerly or under ``jax.jit``; compiling threefry costs
tens of seconds on a loaded 2-core machine, so the fixtures take the *shapes* from the framework
(``jax.eval_shape`` of its init) and fill them here: fan-in-scaled normals for matrices and kernels, small
normals for vectors, zeros for integer leaves and for optimizer states (every optax/keras state used here
starts at zero: step counts, momenta, Adam moments).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray((rng.standard_normal(shape) * scale).astype(np.float32))


def randint(seed: int, shape: tuple[int, ...], high: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, high, shape, dtype=np.int32))


def fill_like(abstract: Any, seed: int) -> Any:
    """Real arrays shaped like ``abstract`` (a pytree of ShapeDtypeStructs or arrays)."""
    rng = np.random.default_rng(seed)

    def leaf(s: Any) -> jax.Array:
        shape, dtype = tuple(s.shape), np.dtype(s.dtype)
        if not np.issubdtype(dtype, np.floating):
            return jnp.asarray(np.zeros(shape, dtype))
        if len(shape) >= 2:
            value = rng.standard_normal(shape) / math.sqrt(math.prod(shape[:-1]))
        else:
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        return jnp.asarray(value.astype(dtype))

    return jax.tree.map(leaf, abstract)


def zeros_like(abstract: Any) -> Any:
    return jax.tree.map(lambda s: jnp.asarray(np.zeros(s.shape, s.dtype)), abstract)


def opt_init(tx: Any, params: Any) -> Any:
    """``tx.init(params)`` for optimizers whose state starts at zero, without compiling anything."""
    return zeros_like(jax.eval_shape(tx.init, params))
