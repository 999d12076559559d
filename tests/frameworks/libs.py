"""Training steps written with Flax (linen and NNX), Haiku, Equinox and Keras 3 (JAX backend).

Each factory returns ``(step_fn, args, batch_argnums)`` with ``args = (state, batch)`` of small real fp32
arrays from fixed PRNG keys; ``step_fn(state, batch) -> (loss, new_state)`` is pure and runs under
``jax.jit``. The framework objects that are not arrays (module definitions, NNX graphdefs, Equinox static
fields, Keras models) are closed over, so the traced arguments are pytrees of arrays only.
Framework imports happen inside the factories: importing this module imports no framework.
Parameters take their shapes from the framework's own init (``jax.eval_shape``, nothing compiled) and
their values from numpy's PRNG with fixed seeds (``tests/frameworks/arrays.py``).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tests.frameworks.arrays import fill_like, normal, opt_init, randint

Step = tuple[Callable[..., Any], tuple[Any, ...], tuple[int, ...]]


def _xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _key(seed: int) -> jax.Array:
    """A raw uint32[2] PRNG key, made without running (and compiling) ``jax.random.PRNGKey``."""
    return jnp.asarray(np.array([0, seed], np.uint32))


def _images(seed: int, batch: int, hw: int, c: int, classes: int) -> tuple[jax.Array, jax.Array]:
    return normal(seed, (batch, hw, hw, c)), randint(seed + 1, (batch,), classes)


def _vectors(seed: int, batch: int, d: int, classes: int) -> tuple[jax.Array, jax.Array]:
    return normal(seed, (batch, d)), randint(seed + 1, (batch,), classes)


# ---- Flax linen: small CNN classifier ------------------------------------------------------------------------
def flax_linen_cnn_step(batch: int = 16, classes: int = 16) -> Step:
    import flax.linen as nn

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            x = nn.relu(nn.Conv(8, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = nn.relu(nn.Conv(16, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            x = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
            return nn.Dense(classes)(x)

    model = CNN()
    x, y = _images(10, batch, 16, 8, classes)
    params = fill_like(jax.eval_shape(model.init, _key(11), x[:1])["params"], 11)
    tx = optax.adam(1e-3)

    def step_fn(state: dict[str, Any], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, dict[str, Any]]:
        def loss_fn(p: Any) -> jax.Array:
            return _xent(model.apply({"params": p}, b[0]), b[1])

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return loss, {"params": optax.apply_updates(state["params"], updates), "opt": opt}

    return step_fn, ({"params": params, "opt": opt_init(tx, params)}, (x, y)), (1,)


# ---- Flax NNX: transformer block LM ------------------------------------------------------------------------
def flax_nnx_transformer_step(batch: int = 8, seq: int = 16, d: int = 32, heads: int = 4,
                              vocab: int = 64) -> Step:
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.embed = nnx.Embed(vocab, d, rngs=rngs)
            self.ln1 = nnx.LayerNorm(d, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=d, decode=False, rngs=rngs)
            self.ln2 = nnx.LayerNorm(d, rngs=rngs)
            self.fc1 = nnx.Linear(d, 4 * d, rngs=rngs)
            self.fc2 = nnx.Linear(4 * d, d, rngs=rngs)
            self.head = nnx.Linear(d, vocab, rngs=rngs)

        def __call__(self, tokens: jax.Array) -> jax.Array:
            x = self.embed(tokens)
            h = self.ln1(x)
            x = x + self.attn(h, mask=nnx.make_causal_mask(tokens))
            x = x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))
            return self.head(x)

    graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: Block(nnx.Rngs(_key(20)))), nnx.Param, ...)
    params, rest = fill_like(params, 20), fill_like(rest, 21)
    tokens = randint(22, (batch, seq + 1), vocab)
    tx = optax.adam(1e-3)

    def step_fn(state: dict[str, Any], toks: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        def loss_fn(p: Any) -> jax.Array:
            model = nnx.merge(graphdef, p, state["rest"])
            return _xent(model(toks[:, :-1]), toks[:, 1:])

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return loss, {"params": optax.apply_updates(state["params"], updates), "rest": state["rest"],
                      "opt": opt}

    return step_fn, ({"params": params, "rest": rest, "opt": opt_init(tx, params)}, tokens), (1,)


# ---- Haiku: MLP classifier -----------------------------------------------------------------------------------
def haiku_mlp_step(batch: int = 16, d: int = 32, classes: int = 16) -> Step:
    import haiku as hk

    net = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([64, 64, classes])(x)))
    x, y = _vectors(30, batch, d, classes)
    params = fill_like(jax.eval_shape(net.init, _key(31), x), 31)
    tx = optax.sgd(0.05, momentum=0.9)

    def step_fn(state: dict[str, Any], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, dict[str, Any]]:
        loss, grads = jax.value_and_grad(lambda p: _xent(net.apply(p, b[0]), b[1]))(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return loss, {"params": optax.apply_updates(state["params"], updates), "opt": opt}

    return step_fn, ({"params": params, "opt": opt_init(tx, params)}, (x, y)), (1,)


# ---- Equinox: small conv net ---------------------------------------------------------------------------------
def equinox_convnet_step(batch: int = 16, classes: int = 16) -> Step:
    import equinox as eqx

    class Net(eqx.Module):
        conv: eqx.nn.Conv2d
        mlp: eqx.nn.MLP

        def __call__(self, img: jax.Array) -> jax.Array:  # one CHW image
            h = jax.nn.relu(self.conv(img))
            return self.mlp(h.mean(axis=(1, 2)))

    def make(k1: jax.Array, k2: jax.Array) -> Net:
        return Net(eqx.nn.Conv2d(8, 16, 3, padding=1, key=k1),
                   eqx.nn.MLP(16, classes, width_size=32, depth=2, key=k2))

    def is_param(v: Any) -> bool:
        return isinstance(v, jax.ShapeDtypeStruct) and jnp.issubdtype(v.dtype, jnp.inexact)

    abstract, static = eqx.partition(eqx.filter_eval_shape(make, _key(40), _key(41)), is_param)
    params = fill_like(abstract, 40)
    x, y = normal(42, (batch, 8, 8, 8)), randint(43, (batch,), classes)
    tx = optax.adam(1e-3)

    def step_fn(state: dict[str, Any], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, dict[str, Any]]:
        def loss_fn(p: Any) -> jax.Array:
            model = eqx.combine(p, static)
            return _xent(jax.vmap(model)(b[0]), b[1])

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return loss, {"params": eqx.apply_updates(state["params"], updates), "opt": opt}

    return step_fn, ({"params": params, "opt": opt_init(tx, params)}, (x, y)), (1,)


# ---- Keras 3 (JAX backend): Sequential model with the stateless API -----------------------------------------
def keras_sequential_step(batch: int = 16, d: int = 32, classes: int = 16) -> Step:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"keras runs on the {keras.backend.backend()!r} backend; set KERAS_BACKEND=jax "
                           "before keras is first imported")
    def kernel(seed: int) -> Callable[..., np.ndarray]:
        return lambda shape, dtype=None: np.asarray(normal(seed, tuple(shape), shape[0] ** -0.5))

    model = keras.Sequential([
        keras.Input((d,)),
        keras.layers.Dense(64, activation="relu", kernel_initializer=kernel(50)),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(classes, kernel_initializer=kernel(51)),
    ])
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    loss_obj = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x, y = _vectors(52, batch, d, classes)
    state = {
        "trainable": [jnp.asarray(v.value) for v in model.trainable_variables],
        "non_trainable": [jnp.asarray(v.value) for v in model.non_trainable_variables],
        "opt": [jnp.asarray(v.value) for v in optimizer.variables],
    }

    def step_fn(s: dict[str, Any], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, dict[str, Any]]:
        def loss_fn(tv: list[jax.Array], ntv: list[jax.Array]) -> tuple[jax.Array, list[jax.Array]]:
            logits, new_ntv = model.stateless_call(tv, ntv, b[0], training=True)
            return loss_obj(b[1], logits), new_ntv

        (loss, ntv), grads = jax.value_and_grad(loss_fn, has_aux=True)(s["trainable"], s["non_trainable"])
        tv, opt = optimizer.stateless_apply(s["opt"], grads, s["trainable"])
        return loss, {"trainable": list(tv), "non_trainable": list(ntv), "opt": list(opt)}

    return step_fn, (state, (x, y)), (1,)
