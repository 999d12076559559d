"""Benchmark models: tiny steps train under jax.jit, abstract factories are cheap and have the nominal size,
and autopar.trace sees forward / backward / optimizer sections and the marked layers."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import psutil
import pytest

import autopar
from bench.models import MODELS, NOMINAL_PARAMS, param_count, resolve
from bench.models import gpt, llama, mlp, moe, wide_resnet
from bench.models.common import check_positive

TINY = ["gpt_tiny", "mlp_tiny", "moe_tiny", "wresnet_tiny", "llama_tiny"]


# ---- closed-form parameter counts ------------------------------------------------------------------------
def gpt_params(h: int, L: int, S: int = 1024, V: int = 51200) -> int:
    # per block: qkv 3h^2+3h, proj h^2+h, fc1 4h^2+4h, fc2 4h^2+h, two LayerNorms 4h; tied head
    return 12 * L * h * h + 13 * L * h + V * h + S * h + 2 * h


def moe_params(h: int, L: int, E: int, r: int = 8, S: int = 1024, V: int = 32000) -> int:
    attn_ln = 4 * h * h + 4 * h + 4 * h
    dense = attn_ln + 2 * r * h * h + r * h + h
    experts = attn_ln + h * E + 2 * r * h * h * E
    return L // 2 * (dense + experts) + V * h + S * h + 2 * h


def wresnet_params(stages: tuple[int, ...], C: int, W: int, classes: int = 1024) -> int:
    n, cin = 7 * 7 * 3 * C + 2 * C, C
    for i, blocks in enumerate(stages):
        f = C * 2 ** i
        for j in range(blocks):
            n += cin * f + 2 * f + 9 * f * f * W + 2 * f * W + f * W * 4 * f + 8 * f
            if cin != 4 * f or (i > 0 and j == 0):
                n += cin * 4 * f + 8 * f
            cin = 4 * f
    return n + cin * classes + classes


def llama_params(h: int, L: int, heads: int, kv: int, f: int, V: int) -> int:
    return 2 * V * h + h + L * (2 * h * h + 2 * h * h * kv // heads + 3 * h * f + 2 * h)


# ---- tiny models execute ---------------------------------------------------------------------------------
# XLA:CPU's backend optimisations dominate these tests' time (a tiny ResNet step: ~16 s at -O2, ~7 s at -O0
# on a busy 2-core machine); the numbers checked here do not depend on them.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.mark.parametrize("name", TINY)
def test_tiny_step_trains(name: str) -> None:
    step, (state, batch) = MODELS[name]()
    compiled = jax.jit(step).lower(state, batch).compile(compiler_options=_FAST_COMPILE)
    losses = []
    params0 = state[0]
    for _ in range(3):
        loss, state = compiled(state, batch)
        losses.append(float(loss))
    assert all(math.isfinite(l) for l in losses), losses
    assert losses[2] < losses[1] < losses[0], losses
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params0, state[0])
    assert all(jax.tree.leaves(moved)), "every parameter must receive an update"


@pytest.mark.parametrize("name", TINY)
def test_abstract_tiny_matches_concrete(name: str) -> None:
    _, concrete = MODELS[name](abstract=False)
    _, abstract = MODELS[name](abstract=True)
    c_leaves, c_tree = jax.tree.flatten(concrete)
    a_leaves, a_tree = jax.tree.flatten(abstract)
    assert c_tree == a_tree
    assert all(isinstance(a, jax.ShapeDtypeStruct) for a in a_leaves)
    assert [(c.shape, c.dtype) for c in c_leaves] == [(a.shape, a.dtype) for a in a_leaves]


def test_tiny_param_counts_match_formulas() -> None:
    assert param_count(gpt.gpt_tiny()[1]) == gpt_params(64, 2, S=16, V=128)
    assert param_count(moe.moe_tiny()[1]) == moe_params(32, 2, 4, r=4, S=16, V=128)
    assert param_count(wide_resnet.wresnet_tiny()[1]) == wresnet_params((1, 1), 8, 2, classes=10)
    assert param_count(llama.llama_tiny()[1]) == llama_params(64, 2, 4, 2, 128, 128)
    assert param_count(mlp.mlp_tiny()[1]) == 17 * 32 + 2 * 33 * 32 + 33 * 4


def test_dtype_reaches_params_and_batch() -> None:
    _, ((params, _), batch) = gpt.gpt_tiny(abstract=True, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    assert batch["input_ids"].dtype == jnp.int32 and batch["input_ids"].shape == (4, 16)


# ---- abstract large models -------------------------------------------------------------------------------
LARGE_FAST = {
    "gpt_39b": gpt_params(8192, 48),
    "moe_70b": moe_params(2048, 32, 64),
    "wresnet_13b": wresnet_params((3, 4, 23, 3), 320, 16),
}


@pytest.mark.parametrize("name", sorted(LARGE_FAST))
def test_large_abstract_builds_cheaply_with_nominal_size(name: str) -> None:
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    step, args = MODELS[name]()
    assert proc.memory_info().rss - rss0 < 2 * 2 ** 30
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(args))
    n = param_count(args)
    assert n == LARGE_FAST[name]
    assert abs(n - NOMINAL_PARAMS[name]) <= 0.1 * NOMINAL_PARAMS[name], (name, n)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOMINAL_PARAMS))
def test_every_named_model_is_within_10_percent_of_nominal(name: str) -> None:
    n = param_count(MODELS[name]()[1])
    assert abs(n - NOMINAL_PARAMS[name]) <= 0.1 * NOMINAL_PARAMS[name], (name, n, NOMINAL_PARAMS[name])


def test_registry_formulas_for_all_gpt_and_moe_configs() -> None:
    # Closed forms (no model building): every named GPT / MoE / WResNet config is within 10% of its name.
    for name, (h, L, _) in gpt.GPT_CONFIGS.items():
        assert abs(gpt_params(h, L) / NOMINAL_PARAMS[name] - 1) <= 0.1, name
    for name, (h, L, E) in moe.MOE_CONFIGS.items():
        assert abs(moe_params(h, L, E) / NOMINAL_PARAMS[name] - 1) <= 0.1, name
    for name, (d, C, W) in wide_resnet.WRESNET_CONFIGS.items():
        n = wresnet_params(wide_resnet.STAGE_SIZES[d], C, W)
        assert abs(n / NOMINAL_PARAMS[name] - 1) <= 0.1, name


# ---- tracing ---------------------------------------------------------------------------------------------
def test_trace_gpt_tiny_has_sections_and_layers() -> None:
    step, args = gpt.gpt_tiny()
    graph = autopar.trace(step, *args, batch_argnums=1)
    counts = {s: len(graph.ops_in(s)) for s in autopar.Section}
    assert all(c > 0 for c in counts.values()), counts
    assert graph.annotations["grad_marked"]
    assert graph.annotations["num_layers_marked"] >= 2
    fwd_layers = {op.layer for op in graph.ops_in(autopar.Section.FORWARD) if op.primitive == "dot_general"}
    assert {0, 1} <= fwd_layers
    # parameters and both Adam moments are inputs; the batch has the batch role
    n_params = len(jax.tree.leaves(args[0][0]))
    roles = [graph.tensor(t).role for t in graph.inputs]
    assert roles.count(autopar.Role.BATCH) == 2
    assert roles.count(autopar.Role.PARAMETER) == 3 * n_params + 1      # params, mu, nu, step count


# ---- model pieces ----------------------------------------------------------------------------------------
def test_top2_gating_routes_two_experts_within_capacity() -> None:
    logits = np.random.default_rng(0).standard_normal((2, 8, 4))
    gates = jnp.asarray(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True), dtype=jnp.float32)
    def gating(g: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
        return jax.jit(moe.top2_gating, static_argnums=1).lower(g, capacity).compile(_FAST_COMPILE)(g)

    combine, dispatch = gating(gates, 8)      # room for every token (one compile per capacity)
    np.testing.assert_allclose(np.asarray(combine.sum(axis=(2, 3))), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(dispatch.sum(axis=(2, 3))), 2.0)
    # all tokens prefer expert 0, capacity 1: only token 0 gets a first-choice slot there
    skew = jnp.asarray(np.tile([0.7, 0.2, 0.05, 0.05], (2, 8, 1)), dtype=jnp.float32)
    _, dispatch = gating(skew, 1)
    np.testing.assert_array_equal(np.asarray(dispatch[0, :, 0].sum(-1)), [1] + [0] * 7)
    np.testing.assert_array_equal(np.asarray(dispatch[0, :, 1].sum(-1)), [1] + [0] * 7)


def test_rotary_preserves_norm_and_position_zero() -> None:
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 3, 8)), dtype=jnp.float32)
    y = jax.jit(llama.rotary).lower(x).compile(_FAST_COMPILE)(x)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(y[:, 0], x[:, 0], rtol=1e-6)


# ---- bad input -------------------------------------------------------------------------------------------
def test_bad_sizes_name_the_field() -> None:
    with pytest.raises(ValueError, match="heads=5"):
        gpt.gpt(64, 2, 5, 16, 128, 2)
    with pytest.raises(ValueError, match="layers=3"):
        moe.moe(32, 3, 4, 4, 16, 128, 2)
    with pytest.raises(ValueError, match="kv_heads=3"):
        llama.llama(64, 2, 4, 3, 128, 16, 128, 2)
    with pytest.raises(ValueError, match="depth=34"):
        wide_resnet.wide_resnet(34, 8, 2)
    with pytest.raises(ValueError, match="batch_size=0"):
        check_positive(batch_size=0)


def test_resolve_names_and_targets() -> None:
    assert resolve("gpt_39b") is gpt.gpt_39b
    assert resolve("bench.models.gpt:gpt_39b") is gpt.gpt_39b
    with pytest.raises(ValueError, match="unknown model"):
        resolve("gpt_40b")
    with pytest.raises(ValueError, match="no function"):
        resolve("bench.models.gpt:nope")
