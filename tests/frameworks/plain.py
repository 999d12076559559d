"""Plain-JAX training steps: ResNet-style convnet, GPT block, MLP and a top-2-gated MoE layer.

Each factory returns ``(step_fn, args, batch_argnums)`` with ``args = (state, batch)``; ``state`` is
``{"params": ..., "opt": ...}`` and ``step_fn(state, batch) -> (loss, new_state)`` runs under ``jax.jit``.
Batch dimensions are multiples of 8 and feature dimensions multiples of 8. Arrays come from numpy's PRNG
with fixed seeds (``tests/frameworks/arrays.py``): building a fixture compiles nothing.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from tests.frameworks.arrays import normal, opt_init, randint

Step = tuple[Callable[..., Any], tuple[Any, ...], tuple[int, ...]]


def _dense_init(seed: int, fan_in: int, fan_out: int) -> jax.Array:
    return normal(seed, (fan_in, fan_out), fan_in ** -0.5)


def _optax_step(loss_fn: Callable[[Any, Any], jax.Array], tx: optax.GradientTransformation) -> Callable:
    def step_fn(state: dict[str, Any], batch: Any) -> tuple[jax.Array, dict[str, Any]]:
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return loss, {"params": optax.apply_updates(state["params"], updates), "opt": opt}

    return step_fn


def _xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# ---- MLP -------------------------------------------------------------------------------------------
def mlp_step(batch: int = 16, sizes: tuple[int, ...] = (32, 64, 64, 16)) -> Step:
    params = [{"w": _dense_init(i, a, b), "b": normal(100 + i, (b,), 0.1)}
              for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
    x = normal(200, (batch, sizes[0]))
    y = randint(201, (batch,), sizes[-1])

    def loss_fn(p: list[dict[str, jax.Array]], b: tuple[jax.Array, jax.Array]) -> jax.Array:
        h, labels = b
        for i, layer in enumerate(p):
            h = h @ layer["w"] + layer["b"]
            if i < len(p) - 1:
                h = jax.nn.relu(h)
        return _xent(h, labels)

    tx = optax.sgd(0.1, momentum=0.9)
    return _optax_step(loss_fn, tx), ({"params": params, "opt": opt_init(tx, params)}, (x, y)), (1,)


# ---- ResNet-style convnet ----------------------------------------------------------------------------
def _conv(x: jax.Array, w: jax.Array, stride: int = 1) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _scale_shift_norm(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
    mean = x.mean(axis=(0, 1, 2), keepdims=True)
    var = x.var(axis=(0, 1, 2), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["shift"]


def resnet_step(batch: int = 8, width: int = 8, blocks: int = 2, classes: int = 16) -> Step:
    seeds = iter(range(300, 400))

    def conv_w(cin: int, cout: int) -> jax.Array:
        return normal(next(seeds), (3, 3, cin, cout), (9.0 * cin) ** -0.5)

    def norm(c: int) -> dict[str, jax.Array]:
        return {"scale": 1.0 + normal(next(seeds), (c,), 0.1), "shift": normal(next(seeds), (c,), 0.1)}

    params = {
        "stem": conv_w(8, width),
        "blocks": [{"conv1": conv_w(width, width), "norm1": norm(width),
                    "conv2": conv_w(width, width), "norm2": norm(width)} for _ in range(blocks)],
        "head": _dense_init(next(seeds), width, classes),
    }
    x = normal(next(seeds), (batch, 16, 16, 8))
    y = randint(next(seeds), (batch,), classes)

    def loss_fn(p: dict[str, Any], b: tuple[jax.Array, jax.Array]) -> jax.Array:
        img, labels = b
        h = jax.nn.relu(_conv(img, p["stem"], stride=2))
        for blk in p["blocks"]:
            r = jax.nn.relu(_scale_shift_norm(_conv(h, blk["conv1"]), blk["norm1"]))
            r = _scale_shift_norm(_conv(r, blk["conv2"]), blk["norm2"])
            h = jax.nn.relu(h + r)
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return _xent(h.mean(axis=(1, 2)) @ p["head"], labels)

    tx = optax.adam(1e-3)
    return _optax_step(loss_fn, tx), ({"params": params, "opt": opt_init(tx, params)}, (x, y)), (1,)


# ---- GPT block -----------------------------------------------------------------------------------------
def _layer_norm(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["g"] + p["b"]


def gpt_step(batch: int = 8, seq: int = 16, d: int = 32, heads: int = 4, vocab: int = 64) -> Step:
    ln = lambda s: {"g": 1.0 + normal(s, (d,), 0.1), "b": normal(s + 1, (d,), 0.1)}  # noqa: E731
    params = {
        "embed": normal(400, (vocab, d), 0.02), "pos": normal(401, (seq, d), 0.02),
        "ln1": ln(402), "qkv": _dense_init(404, d, 3 * d), "proj": _dense_init(405, d, d),
        "ln2": ln(406), "fc1": _dense_init(408, d, 4 * d), "fc2": _dense_init(409, 4 * d, d),
        "ln_f": ln(410),
    }
    tokens = randint(412, (batch, seq + 1), vocab)

    def loss_fn(p: dict[str, Any], toks: jax.Array) -> jax.Array:
        inp, tgt = toks[:, :-1], toks[:, 1:]
        x = p["embed"][inp] + p["pos"]
        q, k, v = jnp.split(_layer_norm(x, p["ln1"]) @ p["qkv"], 3, axis=-1)
        split = lambda t: t.reshape(batch, seq, heads, d // heads)  # noqa: E731
        s = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k)) / jnp.sqrt(d // heads)
        mask = jnp.tril(jnp.ones((seq, seq), bool))
        a = jax.nn.softmax(jnp.where(mask, s, -1e9), axis=-1)
        x = x + jnp.einsum("bhqk,bkhd->bqhd", a, split(v)).reshape(batch, seq, d) @ p["proj"]
        x = x + jax.nn.gelu(_layer_norm(x, p["ln2"]) @ p["fc1"]) @ p["fc2"]
        logits = _layer_norm(x, p["ln_f"]) @ p["embed"].T
        return _xent(logits, tgt)

    tx = optax.adamw(1e-3, weight_decay=0.01)
    return _optax_step(loss_fn, tx), ({"params": params, "opt": opt_init(tx, params)}, tokens), (1,)


# ---- top-2-gated mixture of experts ----------------------------------------------------------------------
def moe_step(batch: int = 16, seq: int = 8, d: int = 16, hidden: int = 32, experts: int = 8,
             capacity: int = 8) -> Step:
    """GShard-style MoE layer: top-2 gating, one-hot dispatch/combine tensors and einsums over experts."""
    params = {
        "gate": _dense_init(500, d, experts),
        "w_in": normal(501, (experts, d, hidden), d ** -0.5),
        "w_out": normal(502, (experts, hidden, d), hidden ** -0.5),
    }
    x = normal(503, (batch, seq, d))
    target = normal(504, (batch, seq, d))

    def moe(p: dict[str, jax.Array], x: jax.Array) -> tuple[jax.Array, jax.Array]:
        probs = jax.nn.softmax(jnp.einsum("gsd,de->gse", x, p["gate"]), axis=-1)  # groups = batch rows
        top_p, top_i = jax.lax.top_k(probs, 2)                                     # [g, s, 2]
        mask = jax.nn.one_hot(top_i, experts, dtype=x.dtype)                       # [g, s, 2, e]
        # position of each token in its expert's buffer: first choices before second choices
        flat = mask.transpose(0, 2, 1, 3).reshape(x.shape[0], 2 * seq, experts)
        pos = (jnp.cumsum(flat, axis=1) - 1.0) * flat
        pos = pos.reshape(x.shape[0], 2, seq, experts).transpose(0, 2, 1, 3)
        keep = mask * (pos < capacity)
        slot = jax.nn.one_hot(jnp.sum(pos * keep, -1).astype(jnp.int32), capacity, dtype=x.dtype)
        combine = jnp.einsum("gske,gskc->gsec", keep * top_p[..., None], slot)     # [g, s, e, c]
        dispatch = (combine > 0).astype(x.dtype)
        expert_in = jnp.einsum("gsec,gsd->egcd", dispatch, x)
        h = jax.nn.relu(jnp.einsum("egcd,edh->egch", expert_in, p["w_in"]))
        expert_out = jnp.einsum("egch,ehd->egcd", h, p["w_out"])
        aux = experts * jnp.mean(probs.mean(axis=1) * mask[:, :, 0].mean(axis=1))
        return jnp.einsum("gsec,egcd->gsd", combine, expert_out), aux

    def loss_fn(p: dict[str, jax.Array], b: tuple[jax.Array, jax.Array]) -> jax.Array:
        inp, tgt = b
        out, aux = moe(p, inp)
        return jnp.mean((inp + out - tgt) ** 2) + 0.01 * aux

    tx = optax.adam(1e-3)
    return _optax_step(loss_fn, tx), ({"params": params, "opt": opt_init(tx, params)}, (x, target)), (1,)
