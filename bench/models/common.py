"""Train-step builder shared by the benchmark models.

Consumes: a model constructor ``make_model(rngs) -> nnx.Module`` (``rngs`` is a ``KeyStream``: it has
``params()`` like ``nnx.Rngs``), a loss ``loss_fn(model, batch) -> scalar``
and a batch description (``BatchField`` per key).
Produces: ``(step_fn, (state, batch))`` where ``step_fn(state, batch) -> (loss, new_state)`` is a pure function
of pytrees. ``state = (params, opt_state)``: ``params`` is the model's ``nnx.Param`` state as a plain nested
dict (``nnx.to_pure_dict``), ``opt_state`` is optax Adam's state for it; ``batch`` is a dict of arrays.
With ``abstract=True`` every leaf is a ``jax.ShapeDtypeStruct`` built by ``nnx.eval_shape`` /
``jax.eval_shape``: nothing of the model's size is allocated, so a 76B-parameter step can be traced on a laptop.
With ``abstract=False`` (tiny sizes) parameters are drawn on the host (``host_init``), see ``host_init_rules``.
Refuses: models holding non-``Param`` state (batch statistics, RNG streams): the step must stay pure.

The gradient is taken with ``autopar.value_and_grad`` so autopar sees forward / backward sections; models call
``autopar.mark_layer_boundary()`` after each block of their (Python) layer loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import autopar

StepFn = Callable[[Any, Any], tuple[jax.Array, Any]]
Benchmark = tuple[StepFn, tuple[Any, Any]]


class KeyStream:
    """Stands in for ``nnx.Rngs`` while a model is built: ``params()`` returns ``fold_in(key, n)``, n = 0, 1, ...

    Why not ``nnx.Rngs``: it keeps its counter in a Variable whose update (under ``nnx.eval_shape``) reads
    ``tracer.sharding``; JAX builds that AttributeError's message by walking the whole trace, so building a
    48-layer model abstractly took 30 s (quadratic). A Python counter costs nothing and gives the same
    kind of independent keys. Flax layers only call ``rngs.params()`` in their constructors.
    """

    def __init__(self, seed: int) -> None:
        self._key = jax.random.key(seed)
        self._count = 0

    def params(self) -> jax.Array:
        self._count += 1
        return jax.random.fold_in(self._key, self._count - 1)

    def __call__(self) -> jax.Array:
        return self.params()


@dataclass(frozen=True)
class BatchField:
    """One batch entry: shape, dtype and, for integer fields, the exclusive upper bound of its values."""

    shape: tuple[int, ...]
    dtype: Any
    high: int | None = None


def check_positive(**fields: int) -> None:
    """Raise ValueError naming the first size field that is not a positive integer."""
    for name, value in fields.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name}={value!r}: must be a positive integer")


def make_batch(fields: dict[str, BatchField], abstract: bool, seed: int = 0) -> dict[str, Any]:
    """ShapeDtypeStructs (abstract) or small random arrays: uniform ints below ``high``, normal floats."""
    if abstract:
        return {k: jax.ShapeDtypeStruct(f.shape, jnp.dtype(f.dtype)) for k, f in fields.items()}
    rng = np.random.default_rng(seed)
    out = {}
    for k, f in fields.items():
        if jnp.issubdtype(f.dtype, jnp.integer):
            if f.high is None:
                raise ValueError(f"batch field {k!r}: integer fields need `high` (exclusive bound)")
            out[k] = jnp.asarray(rng.integers(0, f.high, size=f.shape), dtype=f.dtype)
        else:
            out[k] = jnp.asarray(rng.standard_normal(f.shape), dtype=f.dtype)
    return out


def build_train_step(make_model: Callable[[Any], nnx.Module],
                     loss_fn: Callable[[nnx.Module, dict[str, Any]], jax.Array],
                     batch_fields: dict[str, BatchField], *, abstract: bool,
                     learning_rate: float = 1e-3, seed: int = 0) -> Benchmark:
    """Return ``(step_fn, (state, batch))`` for Adam on ``loss_fn``; see the module docstring."""
    model = nnx.eval_shape(lambda: make_model(KeyStream(seed)))
    graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"model {type(model).__name__} holds non-Param state "
                         f"({len(jax.tree.leaves(rest))} leaves); the train step must be a pure function")
    params = nnx.to_pure_dict(param_state)
    if not abstract:
        params = host_init(params, seed)
    tx = optax.adam(learning_rate)
    opt_state = jax.eval_shape(tx.init, params) if abstract else tx.init(params)

    def step_fn(state: Any, batch: dict[str, Any]) -> tuple[jax.Array, Any]:
        p, o = state

        def loss_of(p_: Any) -> jax.Array:
            return loss_fn(nnx.merge(graphdef, p_), batch)

        loss, grads = autopar.value_and_grad(loss_of)(p)
        updates, o = tx.update(grads, o, p)
        return loss, (optax.apply_updates(p, updates), o)

    return step_fn, ((params, opt_state), make_batch(batch_fields, abstract, seed))


# Host-side initialisers keyed by the parameter's leaf name, with a default. Concrete (tiny) models are
# initialised with numpy instead of Flax's initialisers: XLA:CPU takes ~1 s to compile each truncated-normal
# initialiser, 30 s for a 58-parameter ResNet; numpy takes microseconds. Same shapes, similar scales.
HostInit = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]
host_init_rules: dict[str, HostInit] = {
    "scale": lambda rng, shape: np.ones(shape),                              # LayerNorm / RMSNorm gain
    "bias": lambda rng, shape: np.zeros(shape),
    "embedding": lambda rng, shape: 0.02 * rng.standard_normal(shape),      # GPT-2's embedding scale
}


def _lecun_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    fan_in = math.prod(shape[:-1]) if len(shape) > 1 else 1
    return rng.standard_normal(shape) / math.sqrt(fan_in)


def host_init(abstract_params: Any, seed: int = 0) -> Any:
    """Real arrays for a pytree of ShapeDtypeStructs, drawn on the host by ``host_init_rules`` (default:
    LeCun normal over all but the last axis), in the pytree's deterministic order."""
    rng = np.random.default_rng(seed)

    def init(path: Any, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        name = getattr(path[-1], "key", None) if path else None
        rule = host_init_rules.get(str(name), _lecun_normal)
        return jnp.asarray(rule(rng, tuple(leaf.shape)), dtype=leaf.dtype)

    return jax.tree_util.tree_map_with_path(init, abstract_params)


def param_count(args: Any) -> int:
    """Number of model parameters in a factory's ``args = ((params, opt_state), batch)``."""
    if not (isinstance(args, tuple) and len(args) == 2 and isinstance(args[0], tuple) and len(args[0]) == 2):
        raise ValueError("param_count expects a factory's args ((params, opt_state), batch)")
    params = args[0][0]
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


# ---- shared layers and losses ----------------------------------------------------------------------
def token_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean next-token cross entropy in float32, by one-hot (dense ops, as Alpa's GPT loss; no gather)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logp.dtype)
    return -jnp.mean(jnp.sum(onehot * logp, axis=-1))


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Plain causal softmax attention on ``[batch, seq, heads, head_dim]``; returns the same layout."""
    seq, head_dim = q.shape[1], q.shape[-1]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
    mask = jnp.tril(jnp.ones((seq, seq), dtype=jnp.bool_))
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)
