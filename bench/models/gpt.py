"""GPT (GPT-2/3 style) decoder in Flax NNX, with Alpa's benchmark sizes.

Consumes: sizes (hidden, layers, heads, seq, vocab), batch size, ``abstract`` and ``dtype``.
Produces: ``(step_fn, (state, batch))`` from ``bench.models.common.build_train_step``; the batch is
``{"input_ids", "labels"}``, both int32 ``[batch, seq]`` (labels are the next tokens, supplied by the caller).
Refuses: hidden not divisible by heads, non-positive sizes (ValueError naming the field).

Architecture: learned token + position embeddings; ``layers`` pre-LayerNorm blocks (fused QKV projection,
plain causal softmax attention, GELU MLP of width 4h), each followed by ``autopar.mark_layer_boundary()``;
final LayerNorm; output head **tied** to the token embedding (GPT-2, and Alpa's parameter count), no output
bias. Parameters: ``12 L h^2 + 13 L h + V h + S h + 2 h``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import autopar
from bench.models.common import (BatchField, Benchmark, build_train_step, causal_attention, check_positive,
                                 token_cross_entropy)


class Attention(nnx.Module):
    def __init__(self, hidden: int, heads: int, *, dtype: Any, rngs: nnx.Rngs) -> None:
        self.heads = heads
        self.qkv = nnx.Linear(hidden, 3 * hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(hidden, hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, s, h = x.shape
        qkv = self.qkv(x).reshape(b, s, 3, self.heads, h // self.heads)
        out = causal_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        return self.proj(out.reshape(b, s, h))


class Mlp(nnx.Module):
    def __init__(self, hidden: int, ffn: int, *, dtype: Any, rngs: nnx.Rngs) -> None:
        self.fc1 = nnx.Linear(hidden, ffn, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(ffn, hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x)))


class Block(nnx.Module):
    def __init__(self, hidden: int, heads: int, *, dtype: Any, rngs: nnx.Rngs) -> None:
        self.ln1 = nnx.LayerNorm(hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.attn = Attention(hidden, heads, dtype=dtype, rngs=rngs)
        self.ln2 = nnx.LayerNorm(hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.mlp = Mlp(hidden, 4 * hidden, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nnx.Module):
    def __init__(self, hidden: int, layers: int, heads: int, seq: int, vocab: int, *, dtype: Any,
                 rngs: nnx.Rngs) -> None:
        self.wte = nnx.Embed(vocab, hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.wpe = nnx.Embed(seq, hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([Block(hidden, heads, dtype=dtype, rngs=rngs) for _ in range(layers)])
        self.ln_f = nnx.LayerNorm(hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        x = self.wte(input_ids) + self.wpe(jnp.arange(input_ids.shape[1]))[None]
        for block in self.blocks:
            x = block(x)
            autopar.mark_layer_boundary()
        return self.wte.attend(self.ln_f(x))     # tied output head


def lm_loss(model: nnx.Module, batch: dict[str, jax.Array]) -> jax.Array:
    """Next-token cross entropy of a language model taking ``input_ids`` and predicting ``labels``."""
    return token_cross_entropy(model(batch["input_ids"]), batch["labels"])


def lm_batch(batch_size: int, seq: int, vocab: int) -> dict[str, BatchField]:
    return {"input_ids": BatchField((batch_size, seq), jnp.int32, vocab),
            "labels": BatchField((batch_size, seq), jnp.int32, vocab)}


def gpt(hidden: int, layers: int, heads: int, seq: int = 1024, vocab: int = 51200, batch_size: int = 8,
        abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    """A GPT train step of the given sizes (see the module docstring)."""
    check_positive(hidden=hidden, layers=layers, heads=heads, seq=seq, vocab=vocab, batch_size=batch_size)
    if hidden % heads:
        raise ValueError(f"hidden={hidden} is not divisible by heads={heads}; pick heads dividing hidden")
    return build_train_step(lambda rngs: GPT(hidden, layers, heads, seq, vocab, dtype=dtype, rngs=rngs),
                            lm_loss, lm_batch(batch_size, seq, vocab), abstract=abstract)


# ---- named configurations: Alpa's benchmark/alpa/suite_manual_gpt.py (seq 1024, vocab 51200) ----------
GPT_CONFIGS: dict[str, tuple[int, int, int]] = {   # name -> (hidden, layers, heads)
    "gpt_125m": (768, 12, 12),
    "gpt_350m": (1024, 24, 16),
    "gpt_760m": (1536, 24, 16),
    "gpt_1_3b": (2048, 24, 32),
    "gpt_2_6b": (2560, 32, 32),
    "gpt_6_7b": (4096, 32, 32),
    "gpt_15b": (5120, 48, 40),
    "gpt_39b": (8192, 48, 64),
    "gpt_76b": (10240, 60, 80),
}
GPT_NOMINAL_PARAMS: dict[str, float] = {
    "gpt_125m": 125e6, "gpt_350m": 350e6, "gpt_760m": 760e6, "gpt_1_3b": 1.3e9, "gpt_2_6b": 2.6e9,
    "gpt_6_7b": 6.7e9, "gpt_15b": 15e9, "gpt_39b": 39e9, "gpt_76b": 76e9,
}


def _named(name: str, batch_size: int, abstract: bool, dtype: Any) -> Benchmark:
    hidden, layers, heads = GPT_CONFIGS[name]
    return gpt(hidden, layers, heads, 1024, 51200, batch_size, abstract, dtype)


def gpt_tiny(batch_size: int = 4, abstract: bool = False, dtype: Any = jnp.float32) -> Benchmark:
    """h64, 2 layers, 4 heads, seq 16, vocab 128: small enough to execute in tests."""
    return gpt(64, 2, 4, 16, 128, batch_size, abstract, dtype)


def gpt_125m(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("gpt_125m", batch_size, abstract, dtype)


def gpt_350m(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("gpt_350m", batch_size, abstract, dtype)


def gpt_760m(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("gpt_760m", batch_size, abstract, dtype)


def gpt_1_3b(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("gpt_1_3b", batch_size, abstract, dtype)


def gpt_2_6b(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("gpt_2_6b", batch_size, abstract, dtype)


def gpt_6_7b(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("gpt_6_7b", batch_size, abstract, dtype)


def gpt_15b(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("gpt_15b", batch_size, abstract, dtype)


def gpt_39b(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("gpt_39b", batch_size, abstract, dtype)


def gpt_76b(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("gpt_76b", batch_size, abstract, dtype)
