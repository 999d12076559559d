"""Llama-style decoder in Flax NNX: RMSNorm, rotary embeddings, SwiGLU MLP, grouped-query attention.

Consumes: sizes (hidden, layers, heads, kv_heads, ffn, seq, vocab), batch size, ``abstract`` and ``dtype``.
Produces: ``(step_fn, (state, batch))`` with batch ``{"input_ids", "labels"}`` int32 ``[batch, seq]``.
Refuses: hidden not divisible by heads, heads not divisible by kv_heads, an odd head dimension, non-positive
sizes (ValueError naming the field).

Architecture (Llama 2/3): token embedding (no position embedding), ``layers`` pre-RMSNorm blocks, each followed
by ``autopar.mark_layer_boundary()``: attention with ``heads`` query heads sharing ``kv_heads`` key/value heads
(K/V repeated to the query heads), rotary position embedding on Q and K (rotate-half form, base 10000), causal
softmax; SwiGLU MLP ``w2(silu(w1 x) * w3 x)``; final RMSNorm; **untied** output head; no biases.
Parameters: ``V h (embed) + V h (head) + h + L (2 h^2 + 2 h^2 kv/heads + 3 h f + 2 h)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import autopar
from bench.models.common import Benchmark, build_train_step, causal_attention, check_positive
from bench.models.gpt import lm_batch, lm_loss


def _dense(a: int, b: int, dtype: Any, rngs: Any) -> nnx.Linear:
    return nnx.Linear(a, b, use_bias=False, dtype=dtype, param_dtype=dtype, rngs=rngs)


def rotary(x: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding on ``[batch, seq, heads, head_dim]`` (rotate-half convention)."""
    seq, dim = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    angles = jnp.arange(seq, dtype=jnp.float32)[:, None] * inv_freq[None, :]       # [seq, dim/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[None, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[None, :, None, :]
    x1, x2 = x[..., : dim // 2], x[..., dim // 2:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


class GQAttention(nnx.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, *, dtype: Any, rngs: Any) -> None:
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.wq = _dense(hidden, hidden, dtype, rngs)
        self.wk = _dense(hidden, kv_heads * self.head_dim, dtype, rngs)
        self.wv = _dense(hidden, kv_heads * self.head_dim, dtype, rngs)
        self.wo = _dense(hidden, hidden, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, s, h = x.shape
        q = rotary(self.wq(x).reshape(b, s, self.heads, self.head_dim))
        k = rotary(self.wk(x).reshape(b, s, self.kv_heads, self.head_dim))
        v = self.wv(x).reshape(b, s, self.kv_heads, self.head_dim)
        group = self.heads // self.kv_heads
        if group > 1:
            k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
        return self.wo(causal_attention(q, k, v).reshape(b, s, h))


class SwiGLU(nnx.Module):
    def __init__(self, hidden: int, ffn: int, *, dtype: Any, rngs: Any) -> None:
        self.w1, self.w3 = _dense(hidden, ffn, dtype, rngs), _dense(hidden, ffn, dtype, rngs)
        self.w2 = _dense(ffn, hidden, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.w2(jax.nn.silu(self.w1(x)) * self.w3(x))


class LlamaBlock(nnx.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, ffn: int, *, dtype: Any, rngs: Any) -> None:
        self.attn_norm = nnx.RMSNorm(hidden, epsilon=1e-5, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.attn = GQAttention(hidden, heads, kv_heads, dtype=dtype, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(hidden, epsilon=1e-5, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.mlp = SwiGLU(hidden, ffn, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class Llama(nnx.Module):
    def __init__(self, hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, vocab: int, *,
                 dtype: Any, rngs: Any) -> None:
        self.embed = nnx.Embed(vocab, hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([LlamaBlock(hidden, heads, kv_heads, ffn, dtype=dtype, rngs=rngs)
                                for _ in range(layers)])
        self.norm = nnx.RMSNorm(hidden, epsilon=1e-5, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.lm_head = _dense(hidden, vocab, dtype, rngs)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
            autopar.mark_layer_boundary()
        return self.lm_head(self.norm(x))


def llama(hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, seq: int = 2048, vocab: int = 32000,
          batch_size: int = 8, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    """A Llama-style train step of the given sizes (see the module docstring)."""
    check_positive(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, ffn=ffn, seq=seq,
                   vocab=vocab, batch_size=batch_size)
    if hidden % heads:
        raise ValueError(f"hidden={hidden} is not divisible by heads={heads}; pick heads dividing hidden")
    if heads % kv_heads:
        raise ValueError(f"heads={heads} is not divisible by kv_heads={kv_heads}; pick kv_heads dividing heads")
    if (hidden // heads) % 2:
        raise ValueError(f"head dimension hidden/heads={hidden // heads} must be even for rotary embeddings")
    return build_train_step(lambda rngs: Llama(hidden, layers, heads, kv_heads, ffn, vocab, dtype=dtype,
                                               rngs=rngs),
                            lm_loss, lm_batch(batch_size, seq, vocab), abstract=abstract)


# Sizes from the Llama 2 / Llama 3 papers (Touvron et al. 2023, Table 1; Meta Llama 3 model card).
LLAMA_NOMINAL_PARAMS: dict[str, float] = {"llama_7b": 6.74e9, "llama3_8b": 8.03e9}


def llama_tiny(batch_size: int = 4, abstract: bool = False, dtype: Any = jnp.float32) -> Benchmark:
    """h64, 2 layers, 4 query heads sharing 2 KV heads, SwiGLU 128, seq 16, vocab 128."""
    return llama(64, 2, 4, 2, 128, 16, 128, batch_size, abstract, dtype)


def llama_7b(batch_size: int = 512, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    """Llama-2-7B: h4096, 32 layers, 32 heads (MHA: kv_heads 32), SwiGLU 11008, vocab 32000, seq 2048."""
    return llama(4096, 32, 32, 32, 11008, 2048, 32000, batch_size, abstract, dtype)


def llama3_8b(batch_size: int = 512, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    """Llama-3-8B (GQA): h4096, 32 layers, 32 heads / 8 KV heads, SwiGLU 14336, vocab 128256, seq 2048."""
    return llama(4096, 32, 32, 8, 14336, 2048, 128256, batch_size, abstract, dtype)
