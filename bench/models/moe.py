"""GShard-style mixture-of-experts language model in Flax NNX, with Alpa's benchmark sizes.

Consumes: sizes (hidden, layers, heads, experts, seq, vocab, expert group size, MLP ratio, capacity factor),
batch size, ``abstract`` and ``dtype``.
Produces: ``(step_fn, (state, batch))`` with batch ``{"input_ids", "labels"}`` int32 ``[batch, seq]``.
Refuses: an odd number of layers, hidden not divisible by heads, a token count that is not a multiple of the
expert group size, non-positive sizes (ValueError naming the field).

Architecture: GPT's pre-LN causal blocks (``bench.models.gpt``); even-numbered blocks (0, 2, ...) replace the
dense MLP by a mixture of experts, as Alpa's ``FlaxMoELayerCollection``. The MoE layer follows GShard's
``moe_layer``: tokens are cut into groups of ``S`` (``G = tokens / S``), softmax gating ``GSM,ME->GSE``, top-2
gating with capacity ``C = ceil(capacity_factor * 2 S / E)`` (overflowing tokens are dropped), *dense*
dispatch / combine tensors ``[G, S, E, C]``, expert weights with an expert dimension ``wi: [E, h, f]``,
``wo: [E, f, h]`` and einsums ``GSEC,GSM->EGCM``, ``EGCM,EMH->EGCH``, ``EGCH,EHM->GECM``, ``GSEC,GECM->GSM``.
No auxiliary load-balancing loss (the benchmark measures throughput, not quality). ``f = mlp_ratio * h`` with
``mlp_ratio = 8`` by default, as Alpa's MoE benchmark (its parameter count uses ``mlp_factor = 8``). Output
head tied to the token embedding. Parameters, ``L`` layers (L/2 dense, L/2 MoE), ``r = mlp_ratio``:
``L/2 (4h^2 + 2rh^2) + L/2 (4h^2 + h E + 2 r h^2 E) + V h + S h`` plus biases and norms.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import autopar
from bench.models.common import Benchmark, build_train_step, check_positive
from bench.models.gpt import Attention, Mlp, lm_batch, lm_loss


def top2_gating(gates: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
    """GShard top-2 gating: ``gates [G, S, E]`` -> (combine weights, dispatch mask), both ``[G, S, E, C]``."""
    num_experts = gates.shape[-1]
    idx1 = jnp.argmax(gates, axis=-1)
    mask1 = jax.nn.one_hot(idx1, num_experts, dtype=gates.dtype)
    gate1 = jnp.sum(gates * mask1, axis=-1)
    rest = gates * (1.0 - mask1)
    idx2 = jnp.argmax(rest, axis=-1)
    mask2 = jax.nn.one_hot(idx2, num_experts, dtype=gates.dtype)
    gate2 = jnp.sum(rest * mask2, axis=-1)

    # Position of each token in its expert's buffer: first choices first, then second choices.
    pos1 = jnp.cumsum(mask1, axis=1) - mask1
    mask1 = mask1 * (pos1 < capacity)
    pos2 = jnp.cumsum(mask2, axis=1) - mask2 + jnp.sum(mask1, axis=1, keepdims=True)
    mask2 = mask2 * (pos2 < capacity)
    kept1, kept2 = jnp.sum(mask1, axis=-1), jnp.sum(mask2, axis=-1)
    gate1, gate2 = gate1 * kept1, gate2 * kept2
    denom = gate1 + gate2
    denom = jnp.where(denom > 0, denom, 1.0)
    gate1, gate2 = gate1 / denom, gate2 / denom

    slot1 = jax.nn.one_hot(jnp.sum(pos1 * mask1, axis=-1).astype(jnp.int32), capacity, dtype=gates.dtype)
    slot2 = jax.nn.one_hot(jnp.sum(pos2 * mask2, axis=-1).astype(jnp.int32), capacity, dtype=gates.dtype)
    combine = (jnp.einsum("GSE,GSC->GSEC", gate1[..., None] * mask1, slot1)
               + jnp.einsum("GSE,GSC->GSEC", gate2[..., None] * mask2, slot2))
    dispatch = (combine > 0).astype(gates.dtype)
    return combine, dispatch


class MoeMlp(nnx.Module):
    def __init__(self, hidden: int, ffn: int, experts: int, group_size: int, capacity_factor: float, *,
                 dtype: Any, rngs: Any) -> None:
        init = nnx.initializers.lecun_normal()
        self.group_size, self.capacity_factor, self.dtype = group_size, capacity_factor, dtype
        self.wg = nnx.Param(init(rngs.params(), (hidden, experts), dtype))
        self.wi = nnx.Param(init(rngs.params(), (experts, hidden, ffn), dtype))
        self.wo = nnx.Param(init(rngs.params(), (experts, ffn, hidden), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, s, m = x.shape
        group = min(self.group_size, b * s)
        if (b * s) % group:
            raise ValueError(f"batch*seq={b * s} tokens is not a multiple of expert_group_size={group}; "
                             f"pick a group size dividing it")
        experts = self.wg[...].shape[-1]
        capacity = max(1, math.ceil(self.capacity_factor * 2 * group / experts))
        xg = x.reshape(-1, group, m)
        gates = jax.nn.softmax(jnp.einsum("GSM,ME->GSE", xg, self.wg[...]).astype(jnp.float32), axis=-1)
        combine, dispatch = top2_gating(gates, capacity)
        expert_in = jnp.einsum("GSEC,GSM->EGCM", dispatch.astype(x.dtype), xg)
        h = jax.nn.gelu(jnp.einsum("EGCM,EMH->EGCH", expert_in, self.wi[...]))
        expert_out = jnp.einsum("EGCH,EHM->GECM", h, self.wo[...])
        out = jnp.einsum("GSEC,GECM->GSM", combine.astype(x.dtype), expert_out)
        return out.reshape(b, s, m)


class MoeBlock(nnx.Module):
    def __init__(self, hidden: int, heads: int, mlp: nnx.Module, *, dtype: Any, rngs: Any) -> None:
        self.ln1 = nnx.LayerNorm(hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.attn = Attention(hidden, heads, dtype=dtype, rngs=rngs)
        self.ln2 = nnx.LayerNorm(hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.mlp = mlp

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class MoeLM(nnx.Module):
    def __init__(self, hidden: int, layers: int, heads: int, experts: int, seq: int, vocab: int,
                 group_size: int, mlp_ratio: int, capacity_factor: float, *, dtype: Any, rngs: Any) -> None:
        ffn = mlp_ratio * hidden
        self.wte = nnx.Embed(vocab, hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.wpe = nnx.Embed(seq, hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)
        blocks = []
        for i in range(layers):
            mlp: nnx.Module = (MoeMlp(hidden, ffn, experts, group_size, capacity_factor, dtype=dtype, rngs=rngs)
                               if i % 2 == 0 else Mlp(hidden, ffn, dtype=dtype, rngs=rngs))
            blocks.append(MoeBlock(hidden, heads, mlp, dtype=dtype, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.ln_f = nnx.LayerNorm(hidden, dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        x = self.wte(input_ids) + self.wpe(jnp.arange(input_ids.shape[1]))[None]
        for block in self.blocks:
            x = block(x)
            autopar.mark_layer_boundary()
        return self.wte.attend(self.ln_f(x))


def moe(hidden: int, layers: int, experts: int, heads: int = 16, seq: int = 1024, vocab: int = 32000,
        batch_size: int = 8, abstract: bool = True, dtype: Any = jnp.float32, expert_group_size: int = 2048,
        mlp_ratio: int = 8, capacity_factor: float = 1.0) -> Benchmark:
    """A GShard MoE train step of the given sizes (see the module docstring)."""
    check_positive(hidden=hidden, layers=layers, experts=experts, heads=heads, seq=seq, vocab=vocab,
                   batch_size=batch_size, expert_group_size=expert_group_size, mlp_ratio=mlp_ratio)
    if layers % 2:
        raise ValueError(f"layers={layers} must be even (every other block is a mixture of experts)")
    if hidden % heads:
        raise ValueError(f"hidden={hidden} is not divisible by heads={heads}; pick heads dividing hidden")
    if capacity_factor <= 0:
        raise ValueError(f"capacity_factor={capacity_factor} must be positive")
    tokens = batch_size * seq
    if tokens % min(expert_group_size, tokens):
        raise ValueError(f"batch_size*seq={tokens} is not a multiple of expert_group_size={expert_group_size}")
    return build_train_step(
        lambda rngs: MoeLM(hidden, layers, heads, experts, seq, vocab, expert_group_size, mlp_ratio,
                           capacity_factor, dtype=dtype, rngs=rngs),
        lm_loss, lm_batch(batch_size, seq, vocab), abstract=abstract)


# ---- named configurations: Alpa's benchmark/alpa/suite_manual_moe.py (seq 1024, vocab 32000, 16 heads,
# expert group size 2048); moe_7_1b from the brief (h1280, l16, E32) ----------------------------------------
MOE_CONFIGS: dict[str, tuple[int, int, int]] = {   # name -> (hidden, layers, experts)
    "moe_380m": (768, 8, 8),
    "moe_690m": (768, 8, 16),
    "moe_1_3b": (768, 16, 16),
    "moe_2_4b": (1024, 16, 16),
    "moe_7_1b": (1280, 16, 32),
    "moe_10b": (1536, 16, 32),
    "moe_27b": (2048, 16, 48),
    "moe_70b": (2048, 32, 64),
}
MOE_NOMINAL_PARAMS: dict[str, float] = {
    "moe_380m": 380e6, "moe_690m": 690e6, "moe_1_3b": 1.3e9, "moe_2_4b": 2.4e9, "moe_7_1b": 7.1e9,
    "moe_10b": 10e9, "moe_27b": 27e9, "moe_70b": 70e9,
}


def _named(name: str, batch_size: int, abstract: bool, dtype: Any) -> Benchmark:
    hidden, layers, experts = MOE_CONFIGS[name]
    return moe(hidden, layers, experts, 16, 1024, 32000, batch_size, abstract, dtype)


def moe_tiny(batch_size: int = 4, abstract: bool = False, dtype: Any = jnp.float32) -> Benchmark:
    """h32, 2 layers (one MoE), 4 experts, 4 heads, seq 16, vocab 128, groups of 32 tokens."""
    return moe(32, 2, 4, 4, 16, 128, batch_size, abstract, dtype, expert_group_size=32, mlp_ratio=4)


def moe_380m(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("moe_380m", batch_size, abstract, dtype)


def moe_690m(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("moe_690m", batch_size, abstract, dtype)


def moe_1_3b(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("moe_1_3b", batch_size, abstract, dtype)


def moe_2_4b(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("moe_2_4b", batch_size, abstract, dtype)


def moe_7_1b(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("moe_7_1b", batch_size, abstract, dtype)


def moe_10b(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("moe_10b", batch_size, abstract, dtype)


def moe_27b(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("moe_27b", batch_size, abstract, dtype)


def moe_70b(batch_size: int = 1024, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("moe_70b", batch_size, abstract, dtype)
