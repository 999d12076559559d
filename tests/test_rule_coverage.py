"""Coverage of the sharding rule table, and realisability of the window / barrier / reshape rules.

(a) Every primitive of the traced bench tiny models and of the framework census
    (tests/frameworks/primitives.txt) has a rule in ``sharding_rules`` (``REPLICATED_BY_DESIGN`` ones
    included: their rule is the documented replicated strategy), and planning every op of the bench
    models raises no fallback warning.
(b) Each strategy of the pooling rules (flax ``nn.max_pool`` / ``nn.avg_pool`` forward + backward,
    ``lax.reduce_window``), of ``optimization_barrier``, of ``reshape`` with ``dimensions`` and of ``top_k``
    with an ``axis`` runs under ``jax.jit`` on 8 fake CPU devices, with its specs as sharding constraints
    on inputs and outputs, and equals the unsharded result.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import functools  # noqa: E402
import importlib  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import autopar  # noqa: E402
from autopar.sharding.mesh import LogicalMesh  # noqa: E402
from autopar.sharding.rules import REPLICATED_BY_DESIGN, AutoparWarning, sharding_rules, strategies_for  # noqa: E402
from autopar.sharding.spec import ShardingSpec as S  # noqa: E402
from tests.realise import realise_strategies  # noqa: E402
from tests.frameworks.steps import read_census  # noqa: E402

MESH = LogicalMesh((2, 4), ("x", "y"))

BENCH_TINY = {
    "gpt_tiny": "bench.models.gpt", "moe_tiny": "bench.models.moe", "wresnet_tiny": "bench.models.wide_resnet",
    "llama_tiny": "bench.models.llama", "mlp_tiny": "bench.models.mlp",
}


@functools.lru_cache(maxsize=None)
def _bench_graph(name):
    step, args = getattr(importlib.import_module(BENCH_TINY[name]), name)(abstract=True)
    return autopar.trace(step, *args, batch_argnums=1)


def _all_ops(graph):
    for op in graph.ops:
        yield graph, op
        for sub in op.subgraphs.values():
            yield from _all_ops(sub)


# ---- (a) coverage ---------------------------------------------------------------------------------

def test_replicated_by_design_is_documented_and_registered():
    assert {"rng_bit_generator", "rng_uniform"} <= set(REPLICATED_BY_DESIGN)
    for name, reason in REPLICATED_BY_DESIGN.items():
        assert name in sharding_rules, name
        assert isinstance(reason, str) and len(reason) >= 30, f"{name}: give the reason"
    # no primitive with a real partitioned rule is also declared replicated-by-design
    assert not set(REPLICATED_BY_DESIGN) & {"reduce_window_max", "select_and_scatter_add", "top_k"}


def test_rng_bit_generator_is_replicated_without_warning():
    g = autopar.trace(lambda k: jax.lax.rng_bit_generator(k, (8, 4)), _sd((4,), jnp.uint32))
    op = next(o for o in g.ops if o.primitive == "rng_bit_generator")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutoparWarning)
        ss = strategies_for(g, op, MESH)
    assert [(s.in_specs, s.out_specs, s.work_shards) for s in ss] == [
        ((S(((),)),), (S(((),)), S(((), ()))), 1)]


def test_framework_census_is_covered():
    census = read_census()
    assert len(census) >= 30 and "reduce_window_max" in census and "select_and_scatter_add" in census
    uncovered = sorted(p for p in census if p not in sharding_rules)
    assert not uncovered, f"primitives without a rule: {uncovered}; add a rule or a REPLICATED_BY_DESIGN entry"


@pytest.mark.parametrize("name", sorted(BENCH_TINY))
def test_bench_tiny_model_is_covered_without_fallback(name):
    g = _bench_graph(name)
    prims = set(g.primitive_counts(recursive=True))
    assert len(prims) >= 10
    uncovered = sorted(p for p in prims if p not in sharding_rules)
    assert not uncovered, f"{name}: primitives without a rule: {uncovered}"
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutoparWarning)
        for graph, op in _all_ops(g):
            ss = strategies_for(graph, op, MESH)
            assert ss and all(len(s.in_specs) == len(op.inputs) and len(s.out_specs) == len(op.outputs)
                              for s in ss), op


def test_wresnet_pooling_gets_batch_and_channel_splits():
    g = _bench_graph("wresnet_tiny")
    pools = [(gr, op) for gr, op in _all_ops(g)
             if op.primitive in ("reduce_window_max", "select_and_scatter_add")]
    assert {op.primitive for _, op in pools} == {"reduce_window_max", "select_and_scatter_add"}
    for graph, op in pools:
        ss = strategies_for(graph, op, MESH)
        assert len(ss) > 1, op
        window = op.params["window_dimensions"]
        for s in ss:  # windowed dims are never split
            for spec in s.in_specs + s.out_specs:
                assert all(not spec.dims[d] for d, w in enumerate(window) if w > 1), (op, s.name)


# ---- (b) realisability ----------------------------------------------------------------------------

def _sd(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def _maxpool_fwd_bwd(x):
    from flax import linen as nn

    y, vjp = jax.vjp(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)), x)
    return y, vjp(jnp.sin(y))[0]


def _maxpool_same_fwd_bwd(x):
    from flax import linen as nn

    y, vjp = jax.vjp(lambda x: nn.max_pool(x, (3, 3), strides=(1, 1), padding="SAME"), x)
    return y, vjp(y)[0]


def _avgpool_fwd_bwd(x):
    from flax import linen as nn

    y, vjp = jax.vjp(lambda x: nn.avg_pool(x, (2, 2), strides=(2, 2)), x)
    return y, vjp(y)[0]


def _maxpool_jvp(x):
    pool = functools.partial(jax.lax.reduce_window, init_value=-jnp.inf, computation=jax.lax.max,
                             window_dimensions=(1, 2, 2, 1), window_strides=(1, 2, 2, 1), padding="VALID")
    return jax.jvp(pool, (x,), (jnp.cos(x),))


def _minpool(x):
    return jax.lax.reduce_window(x, jnp.inf, jax.lax.min, (1, 3, 3, 1), (1, 1, 1, 1), "VALID")


def _generic_pool(x):
    return jax.lax.reduce_window((x, 2 * x), (0.0, 1.0), lambda a, b: (a[0] + b[0], a[1] * b[1]),
                                 (1, 2, 2, 1), (1, 1, 1, 1), "VALID")


X = (4, 6, 6, 8)  # NHWC: batch 4 and channels 8 split over the (2, 4) mesh
CASES = {
    "max_pool": (_maxpool_fwd_bwd, [X], "reduce_window_max", 8),
    "max_pool_grad": (_maxpool_fwd_bwd, [X], "select_and_scatter_add", 8),
    "max_pool_same_grad": (_maxpool_same_fwd_bwd, [X], "select_and_scatter_add", 8),
    "avg_pool": (_avgpool_fwd_bwd, [X], "reduce_window_sum", 8),
    "max_pool_jvp": (_maxpool_jvp, [X], "select_and_gather_add", 8),
    "min_pool": (_minpool, [X], "reduce_window_min", 8),
    "reduce_window": (_generic_pool, [X], "reduce_window", 8),
    "optimization_barrier": (lambda a, b: jax.lax.optimization_barrier((a, b)), [(8, 4), (8, 6)],
                             "optimization_barrier", None),
    "optimization_barrier_same": (lambda a, b: jax.lax.optimization_barrier((a, b)), [(8, 4), (8, 4)],
                                  "optimization_barrier", None),
    "reshape_dimensions": (lambda a: jax.lax.reshape(a, (8, 6, 4), dimensions=(1, 0, 2)), [(2, 4, 24)],
                           "reshape", None),
    "top_k_axis": (lambda a: jax.lax.top_k(a, 2, axis=0), [(6, 8, 4)], "top_k", None),
}


def _case(case):
    fn, shapes, prim, _ = CASES[case]
    g = autopar.trace(fn, *[_sd(s) for s in shapes])
    graph, op = next((gr, op) for gr, op in _all_ops(g) if op.primitive == prim)
    return graph, op, strategies_for(graph, op, MESH)


@pytest.mark.parametrize("case", sorted(CASES))
def test_strategy_sets(case):
    graph, op, ss = _case(case)
    expected = CASES[case][3]
    if expected is not None:  # x on {-, batch, channel} x y on {-, batch, channel}, minus x+y on batch 4
        assert len(ss) == expected, [s.name for s in ss]
    assert len({s.key() for s in ss}) == len(ss)
    for s in ss:
        for spec, t in zip(s.in_specs + s.out_specs, graph.op_inputs(op) + graph.op_outputs(op)):
            assert spec is None or spec.divides(t.shape, MESH), (s.name, spec, t)
    assert max(s.work_shards for s in ss) == 8


def test_windowed_dims_stay_whole_and_padding_blocks_a_split():
    _, op, ss = _case("max_pool_grad")
    assert S((("x",), (), (), ("y",))) in {s.out_specs[0] for s in ss}
    assert all(not s.out_specs[0].dims[1] and not s.out_specs[0].dims[2] for s in ss)
    # a window of 1 with padding on the batch dim: that dim is windowed too
    g = autopar.trace(lambda x: jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2), (1, 1),
                                                      ((1, 0), (0, 0))), _sd((8, 8)))
    op = next(o for o in g.ops if o.primitive == "reduce_window_sum")
    assert [s.name for s in strategies_for(g, op, MESH)] == ["replicated"]


def test_reshape_dimensions_and_top_k_axis_splits():
    _, _, ss = _case("reshape_dimensions")
    # (2, 4, 24) transposed to (4, 2, 24) then reshaped to (8, 6, 4): dim 1 of the operand is the
    # major-most dim of the first group; 24 -> (6, 4) keeps dim 2 major-most in its group.
    pairs = {(s.in_specs[0], s.out_specs[0]) for s in ss}
    assert (S(((), ("y",), ())), S((("y",), (), ()))) in pairs
    assert (S(((), (), ("x",))), S(((), ("x",), ()))) in pairs
    assert all(not s.in_specs[0].dims[0] for s in ss)
    _, _, ss = _case("top_k_axis")
    assert all(not spec.dims[0] for s in ss for spec in s.in_specs + s.out_specs)
    assert any(s.in_specs[0].dims[2] for s in ss)


def _realise(case, every):
    graph, op, ss = _case(case)
    mesh = MESH.to_jax_mesh(jax.devices()[:8])
    rng = np.random.default_rng(0)
    args = [jnp.asarray(rng.standard_normal(t.shape), t.dtype) for t in graph.op_inputs(op)]
    return realise_strategies(op, ss, args, mesh, every, tol=1e-5)


FAST = ("max_pool", "max_pool_grad", "avg_pool", "max_pool_jvp", "reduce_window", "optimization_barrier",
        "reshape_dimensions")


@pytest.mark.parametrize("case", FAST)
def test_sampled_strategies_are_realisable(case):
    assert _realise(case, every=5) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_strategy_is_realisable(case):
    assert _realise(case, every=1) >= 2


@pytest.mark.slow
def test_traced_framework_steps_are_covered():
    """The census file may be stale: re-trace every framework step and check coverage directly."""
    from tests.frameworks.steps import primitive_census

    census = primitive_census()
    found = set().union(*census.values())
    assert not sorted(p for p in found if p not in sharding_rules)
    assert found <= set(read_census()), f"primitives.txt is stale: regenerate (new: {found - set(read_census())})"
