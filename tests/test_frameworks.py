"""Framework training steps (Flax linen/NNX, Haiku, Equinox, Keras 3, plain JAX, MoE) through autopar.trace.

For every fixture in ``tests/frameworks/steps.py``: the step runs under ``jax.jit``; ``autopar.trace`` builds
a graph with forward, backward and optimizer sections and the right input roles; re-evaluating the graph
under ``jax.jit`` gives bit-identical results; ``tests/frameworks/primitives.txt`` (the primitive census)
is up to date. Compiling the bigger steps takes seconds each, so their exactness checks are marked slow.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import autopar  # noqa: E402
from autopar import Role, Section  # noqa: E402
from tests.frameworks.steps import CENSUS_PATH, FRAMEWORK_STEPS, read_census  # noqa: E402

NAMES = sorted(FRAMEWORK_STEPS)
FAST_EXACT = {"jax_mlp", "haiku_mlp"}  # the cheapest to compile; the others are checked under -m slow


@functools.lru_cache(maxsize=None)
def _built(name: str) -> tuple:
    fn, args, batch_argnums = FRAMEWORK_STEPS[name]()
    graph = autopar.trace(fn, *args, batch_argnums=batch_argnums)
    return fn, args, batch_argnums, graph


@pytest.mark.parametrize("name", NAMES)
def test_fixture_dims_are_divisible_by_8(name: str) -> None:
    _, args, batch_argnums, _ = _built(name)
    assert len(args) == 2 and batch_argnums == (1,)
    for leaf in jax.tree.leaves(args[1]):
        assert leaf.shape[0] % 8 == 0, (name, leaf.shape)
        assert leaf.ndim == 1 or leaf.shape[-1] % 8 == 0 or leaf.dtype.kind == "i", (name, leaf.shape)
    for leaf in jax.tree.leaves(args[0]):  # feature dims; 3x3 conv windows and 4 heads are exempt
        if leaf.dtype.kind == "f":
            assert all(d % 8 == 0 for d in leaf.shape if d > 4), (name, leaf.shape)
            assert leaf.dtype == np.float32


@pytest.mark.parametrize("name", NAMES)
def test_trace_has_three_sections_and_roles(name: str) -> None:
    _, args, _, graph = _built(name)
    counts = {s: len(graph.ops_in(s)) for s in Section}
    assert all(n > 0 for n in counts.values()), counts
    # Forward ops come first: the first op is forward, the last one is the optimizer's.
    assert graph.ops[0].section is Section.FORWARD and graph.ops[-1].section is Section.OPTIMIZER
    first_bwd = min(op.id for op in graph.ops_in(Section.BACKWARD))
    last_bwd = max(op.id for op in graph.ops_in(Section.BACKWARD))
    assert all(op.id < first_bwd for op in graph.ops_in(Section.FORWARD) if "jvp(" not in op.name_stack)
    assert all(op.id > last_bwd for op in graph.ops_in(Section.OPTIMIZER))
    roles = [graph.tensor(t).role for t in graph.inputs]
    assert roles.count(Role.PARAMETER) == len(jax.tree.leaves(args[0]))
    assert roles.count(Role.BATCH) == len(jax.tree.leaves(args[1]))
    assert len(graph.outputs) == 1 + len(jax.tree.leaves(args[0]))  # loss + new state
    assert graph.tensor(graph.outputs[0]).shape == ()
    assert graph.flops() > 0


def _assert_exact(name: str) -> None:
    fn, args, _, graph = _built(name)
    ref = jax.jit(fn)(*args)
    got = jax.jit(graph)(*args)
    assert jax.tree.structure(got) == jax.tree.structure(ref)
    assert jax.tree.structure(ref[1]) == jax.tree.structure(args[0])  # a real step: state in, state out
    assert np.isfinite(float(ref[0]))
    changed = 0
    for r, g, old in zip(jax.tree.leaves(ref[1]), jax.tree.leaves(got[1]), jax.tree.leaves(args[0])):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(r))
        changed += not np.array_equal(np.asarray(r), np.asarray(old))
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(ref[0]))
    assert changed > 0  # the optimizer moved something


@pytest.mark.parametrize("name", sorted(FAST_EXACT))
def test_reevaluated_graph_is_exact(name: str) -> None:
    _assert_exact(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(NAMES) - FAST_EXACT))
def test_reevaluated_graph_is_exact_slow(name: str) -> None:
    _assert_exact(name)


def test_primitive_census_is_up_to_date() -> None:
    found = set()
    for name in NAMES:
        found |= set(_built(name)[3].primitive_counts(recursive=True))
    recorded = read_census(CENSUS_PATH)
    assert recorded == sorted(recorded)
    assert set(recorded) == found, ("regenerate with: python -m tests.frameworks.steps --census",
                                    sorted(found ^ set(recorded)))
    assert {"dot_general", "conv_general_dilated", "reduce_window_max", "top_k", "cumsum"} <= found
