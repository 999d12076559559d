"""A stack of Linear + GELU layers (regression, mean squared error): the simplest benchmark model.

Consumes: hidden width, number of layers, input / output widths, batch size, ``abstract`` and ``dtype``.
Produces: ``(step_fn, (state, batch))`` with batch ``{"x": [batch, in_dim], "y": [batch, out_dim]}``.
Refuses: non-positive sizes (ValueError naming the field).

Architecture: ``in_dim -> hidden`` then ``layers - 1`` times ``hidden -> hidden``, each Linear followed by GELU
and ``autopar.mark_layer_boundary()``; a final ``hidden -> out_dim`` Linear. Parameters:
``(in_dim + 1) h + (layers - 1)(h + 1) h + (h + 1) out_dim``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import autopar
from bench.models.common import BatchField, Benchmark, build_train_step, check_positive


class MLP(nnx.Module):
    def __init__(self, in_dim: int, hidden: int, layers: int, out_dim: int, *, dtype: Any, rngs: Any) -> None:
        widths = [in_dim] + [hidden] * layers
        self.layers = nnx.List([nnx.Linear(a, b, dtype=dtype, param_dtype=dtype, rngs=rngs)
                                for a, b in zip(widths[:-1], widths[1:])])
        self.head = nnx.Linear(hidden, out_dim, dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = jax.nn.gelu(layer(x))
            autopar.mark_layer_boundary()
        return self.head(x)


def mse_loss(model: nnx.Module, batch: dict[str, jax.Array]) -> jax.Array:
    err = model(batch["x"]).astype(jnp.float32) - batch["y"].astype(jnp.float32)
    return jnp.mean(err * err)


def mlp(hidden: int, layers: int, in_dim: int | None = None, out_dim: int | None = None, batch_size: int = 64,
        abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    """An MLP train step; ``in_dim`` and ``out_dim`` default to ``hidden``."""
    in_dim = hidden if in_dim is None else in_dim
    out_dim = hidden if out_dim is None else out_dim
    check_positive(hidden=hidden, layers=layers, in_dim=in_dim, out_dim=out_dim, batch_size=batch_size)
    fields = {"x": BatchField((batch_size, in_dim), dtype), "y": BatchField((batch_size, out_dim), dtype)}
    return build_train_step(lambda rngs: MLP(in_dim, hidden, layers, out_dim, dtype=dtype, rngs=rngs),
                            mse_loss, fields, abstract=abstract)


def mlp_tiny(batch_size: int = 8, abstract: bool = False, dtype: Any = jnp.float32) -> Benchmark:
    """16 -> 32 -> 32 -> 32 -> 4: three hidden layers, executable in tests."""
    return mlp(32, 3, 16, 4, batch_size, abstract, dtype)


def mlp_1b(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    """7 hidden layers plus the head, 8 matrices of 11264 x 11264 (1.015e9 parameters): pure matmuls."""
    return mlp(11264, 7, None, None, batch_size, abstract, dtype)
