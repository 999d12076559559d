"""Tests of autopar.trace (autopar/ir/trace.py), the Graph (autopar/ir/graph.py) and the markers.

Covers: inlining of jit / custom_jvp / custom_vjp / remat2 / closed_call; scan, while and cond kept as single
ops with body graphs; tensor producers, consumers, roles, names, outputs and donation; forward / backward /
optimizer sections; layer ids from ``mark_layer_boundary``; markers transparent under plain ``jax.jit``;
abstract inputs; static and bad argnums; exact re-evaluation; the summary and the networkx view.
"""

from __future__ import annotations

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autopar
from autopar import Role, Section

W = jnp.asarray(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)) / 4
X = jnp.asarray(np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32))
XS = jnp.asarray(np.random.default_rng(2).standard_normal((5, 8, 8)).astype(np.float32))


def _prims(graph: autopar.Graph, recursive: bool = False) -> Counter:
    return graph.primitive_counts(recursive=recursive)


def _assert_same(a: object, b: object) -> None:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---- inlining ---------------------------------------------------------------------------------------------
def test_jit_custom_jvp_and_gelu_are_inlined() -> None:
    inner = jax.jit(lambda w, x: jax.nn.relu(x @ w))
    g = autopar.trace(lambda w, x: jax.nn.gelu(inner(w, x)).sum(), W, X)
    prims = _prims(g)
    assert not {"jit", "pjit", "custom_jvp_call"} & set(prims)
    assert prims["dot_general"] == 1 and prims["max"] == 1 and prims["tanh"] == 1  # relu = max(x, 0)
    assert all(not op.is_structured for op in g.ops)


def test_custom_vjp_is_inlined_and_differentiable() -> None:
    @jax.custom_vjp
    def f(x: jax.Array) -> jax.Array:
        return jnp.sin(x)

    f.defvjp(lambda x: (jnp.sin(x), jnp.cos(x)), lambda c, g: (3.0 * g * c,))  # deliberately not cos
    g = autopar.trace(lambda x: f(x).sum(), X)
    assert "custom_vjp_call" not in _prims(g) and _prims(g)["sin"] == 1
    gg = autopar.trace(jax.grad(lambda x: f(x).sum()), X)
    assert "custom_vjp_call" not in _prims(gg)
    _assert_same(jax.jit(gg)(X), 3.0 * jnp.cos(X))  # the user's bwd rule ran, not sin's derivative


def test_remat_ops_carry_region_ids() -> None:
    def fn(w: jax.Array, x: jax.Array) -> jax.Array:
        h = jax.checkpoint(lambda x: jnp.tanh(x @ w))(x)
        h = h * 2.0
        return jax.checkpoint(lambda h: jnp.sin(h @ w))(h).sum()

    g = autopar.trace(fn, W, X)
    assert g.annotations["remat_regions"] == 2 and "remat2" not in _prims(g)
    by_op = [(op.primitive, op.remat) for op in g.ops]
    assert by_op == [("dot_general", 1), ("tanh", 1), ("mul", None), ("dot_general", 2), ("sin", 2),
                     ("reduce_sum", None)]
    # Under grad JAX emits the region's forward plainly and its recomputation inside remat2 in the
    # backward: those recomputed ops carry the region id and sit in the backward section.
    gg = autopar.trace(jax.grad(fn), W, X)
    rematted = [op for op in gg.ops if op.remat is not None]
    assert rematted and all(op.section is Section.BACKWARD for op in rematted)
    assert {op.primitive for op in rematted} >= {"dot_general", "tanh", "cos"}  # cos: d sin recomputed
    assert len({op.remat for op in rematted}) == 2
    _assert_same(jax.jit(gg)(W, X), jax.jit(jax.grad(fn))(W, X))


def _closed_call_fn():
    """A function that stages a closed_call: public ``closed_call_p`` (jax >= 0.12) or, on older jax, the
    private ``eval_jaxpr_p`` that lowers to one."""
    from jax.extend.core import primitives

    body = jax.make_jaxpr(lambda w, x: jnp.tanh(x @ w))(W, X)

    def public(w: jax.Array, x: jax.Array) -> jax.Array:
        return primitives.closed_call_p.bind(w, x, call_jaxpr=body)[0] * 2.0

    try:
        jax.make_jaxpr(public)(W, X)
        return public
    except (KeyError, TypeError):
        eval_jaxpr_p = pytest.importorskip("jax._src.lax.eval_jaxpr").eval_jaxpr_p

        def private(w: jax.Array, x: jax.Array) -> jax.Array:
            return eval_jaxpr_p.bind(w, x, jaxpr=body)[0] * 2.0

        return private


def test_closed_call_is_inlined() -> None:
    fn = _closed_call_fn()
    staged = str(jax.make_jaxpr(fn)(W, X))
    assert "closed_call" in staged or "eval_jaxpr" in staged
    g = autopar.trace(fn, W, X)
    assert list(_prims(g)) == ["dot_general", "tanh", "mul"]
    _assert_same(jax.jit(g)(W, X), jax.jit(fn)(W, X))


# ---- structured control flow ----------------------------------------------------------------------------
def _control_flow(w: jax.Array, xs: jax.Array) -> jax.Array:
    def body(c: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jnp.tanh(c @ w + x), c.sum()

    c, ys = jax.lax.scan(body, xs[0], xs)
    c = jax.lax.cond(c.sum() > 0, lambda c: c @ w, lambda c: c * 2.0, c)
    c = jax.lax.while_loop(lambda s: s[0] < 3, lambda s: (s[0] + 1, s[1] @ w), (0, c))[1]
    return c.sum() + ys.sum()


def test_scan_while_cond_are_single_ops_with_bodies() -> None:
    g = autopar.trace(_control_flow, W, XS)
    structured = {op.primitive: op for op in g.ops if op.is_structured}
    assert set(structured) == {"scan", "while", "cond"}
    assert _prims(g)["scan"] == 1 and _prims(g)["while"] == 1 and _prims(g)["cond"] == 1
    scan, whl, cond = structured["scan"], structured["while"], structured["cond"]
    assert set(scan.subgraphs) == {"body"} and scan.params["length"] == 5
    assert set(whl.subgraphs) == {"cond", "body"} and set(cond.subgraphs) == {"branch0", "branch1"}
    body = scan.subgraphs["body"]
    assert list(_prims(body)) == ["dot_general", "add", "tanh", "reduce_sum"]
    # scan flops = length x body: 2*8*8*8 (dot) + 64 (add) + 64 (tanh) + 64 (sum) per step
    assert body.flops() == 2 * 8 * 8 * 8 + 3 * 64
    from autopar.ir.flops import op_flops

    assert op_flops(g, scan) == 5 * body.flops()
    assert op_flops(g, cond) == 2 * 8 * 8 * 8                 # the costlier branch
    assert op_flops(g, whl) == 1 + 1 + 2 * 8 * 8 * 8          # one iteration: lt, add, dot
    assert g.num_ops(recursive=True) == len(g.ops) + sum(
        sub.num_ops() for op in structured.values() for sub in op.subgraphs.values())
    _assert_same(jax.jit(g)(W, XS), jax.jit(_control_flow)(W, XS))


# ---- tensors ---------------------------------------------------------------------------------------------
def test_tensor_producers_consumers_roles_names() -> None:
    const = jnp.arange(8, dtype=jnp.float32)

    def step(state: dict, batch: tuple) -> tuple:
        h = batch[0] @ state["w"]
        y = jnp.tanh(h)
        z = h + y * const
        return z.sum() * 0.5, {"w": state["w"], "b": state["b"] + 1.0}

    state = {"w": W, "b": jnp.zeros((8,), jnp.float32)}
    g = autopar.trace(step, state, (X, X), batch_argnums=1, donate_argnums=0)
    ins = g.input_tensors()
    assert [t.name for t in ins] == ["[0]['b']", "[0]['w']", "[1][0]", "[1][1]"]
    assert [t.role for t in ins] == [Role.PARAMETER, Role.PARAMETER, Role.BATCH, Role.BATCH]
    assert [t.argnum for t in ins] == [0, 0, 1, 1] and [t.donated for t in ins] == [True, True, False, False]
    assert all(t.producer is None and t.is_input for t in ins)
    dot = next(op for op in g.ops if op.primitive == "dot_general")
    h = g.tensor(dot.outputs[0])
    assert h.role is Role.INTERMEDIATE and h.producer == dot.id and h.shape == (8, 8)
    assert [g.ops[c].primitive for c in h.consumers] == ["tanh", "add"]
    assert dot.inputs == (ins[2].id, ins[1].id) and ins[3].consumers == ()
    consts = [t for t in g.tensors if t.role is Role.CONSTANT]
    assert any(t.shape == (8,) and np.array_equal(np.asarray(t.value), np.arange(8)) for t in consts)
    outs = g.output_tensors()
    assert len(outs) == 3 and all(t.is_output for t in outs)
    assert outs[2].id == ins[1].id  # the passed-through 'w' is itself an output (outputs: loss, b, w)
    assert sum(t.is_output for t in g.tensors) == len(set(g.outputs))
    assert g.input_bytes() == (8 + 3 * 64) * 4


# ---- sections and layers -----------------------------------------------------------------------------------
def _mlp_loss(w: jax.Array, x: jax.Array, marks: bool = True) -> jax.Array:
    h = x
    for i in range(w.shape[0]):
        h = jnp.tanh(h @ w[i])
        if marks and i < w.shape[0] - 1:
            autopar.mark_layer_boundary()
    return (h ** 2).mean()


W3 = jnp.stack([W, W * 0.5, W * 2.0])


@pytest.mark.parametrize("vg", [autopar.value_and_grad, jax.value_and_grad], ids=["autopar", "jax"])
def test_sections_forward_backward_optimizer(vg) -> None:
    def step(w: jax.Array, x: jax.Array) -> tuple:
        loss, g = vg(_mlp_loss)(w, x)
        return loss, w - 0.1 * g

    g = autopar.trace(step, W3, X, batch_argnums=1)
    sec = [op.section for op in g.ops]
    n_fwd, n_bwd = sec.count(Section.FORWARD), sec.count(Section.BACKWARD)
    assert sec == [Section.FORWARD] * n_fwd + [Section.BACKWARD] * n_bwd + [Section.OPTIMIZER] * 2
    fwd_dots = [op for op in g.ops_in(Section.FORWARD) if op.primitive == "dot_general"]
    bwd_dots = [op for op in g.ops_in(Section.BACKWARD) if op.primitive == "dot_general"]
    assert len(fwd_dots) == 3 and len(bwd_dots) == 5  # dW for 3 layers, dX for the upper 2
    assert [op.primitive for op in g.ops_in(Section.OPTIMIZER)] == ["mul", "sub"]
    assert g.annotations["grad_marked"] is (vg is autopar.value_and_grad)
    assert "forward" in g.summary() and "backward" in g.summary() and "optimizer" in g.summary()


def test_forward_only_function_is_all_forward() -> None:
    g = autopar.trace(_mlp_loss, W3, X)
    assert {op.section for op in g.ops} == {Section.FORWARD}


def test_layer_boundaries_label_forward_and_backward() -> None:
    def step(w: jax.Array, x: jax.Array) -> tuple:
        loss, g = autopar.value_and_grad(_mlp_loss)(w, x)
        return loss, w - 0.1 * g

    g = autopar.trace(step, W3, X, batch_argnums=1)
    assert g.annotations["num_layers_marked"] == 3
    fwd, bwd = g.ops_in(Section.FORWARD), g.ops_in(Section.BACKWARD)
    assert [op.layer for op in fwd if op.primitive == "dot_general"] == [0, 1, 2]
    assert [op.layer for op in fwd if op.primitive == "tanh"] == [0, 1, 2]
    bwd_layers = [op.layer for op in bwd]
    assert set(bwd_layers) == {0, 1, 2} and bwd_layers == sorted(bwd_layers, reverse=True)
    assert Counter(op.layer for op in bwd if op.primitive == "dot_general") == {0: 1, 1: 2, 2: 2}
    assert all(op.layer is None for op in g.ops_in(Section.OPTIMIZER))


def test_markers_are_transparent_under_plain_jit() -> None:
    def marked(w: jax.Array, x: jax.Array) -> tuple:
        loss, g = autopar.value_and_grad(_mlp_loss)(w, x)
        return loss, autopar.grad(_mlp_loss)(w, x), g

    def plain(w: jax.Array, x: jax.Array) -> tuple:
        loss, g = jax.value_and_grad(lambda w, x: _mlp_loss(w, x, marks=False))(w, x)
        return loss, jax.grad(lambda w, x: _mlp_loss(w, x, marks=False))(w, x), g

    _assert_same(jax.jit(marked)(W3, X), jax.jit(plain)(W3, X))
    autopar.mark_layer_boundary()  # outside any tracing: a no-op
    jaxpr = str(jax.make_jaxpr(_mlp_loss)(W3, X).jaxpr)  # marks without autopar's context add nothing
    assert jaxpr == str(jax.make_jaxpr(lambda w, x: _mlp_loss(w, x, marks=False))(W3, X).jaxpr)
    eqns = jax.make_jaxpr(_mlp_loss)(W3, X).jaxpr.eqns
    assert all("autopar" not in str(e.source_info.name_stack) for e in eqns)


# ---- arguments ------------------------------------------------------------------------------------------------
def test_abstract_inputs_allocate_nothing() -> None:
    huge = jax.ShapeDtypeStruct((2 ** 20, 2 ** 20), jnp.float32)  # 4 TiB: tracing must not materialise it
    g = autopar.trace(lambda a, b: (a @ b).sum(), huge, huge)
    assert g.input_bytes() == 2 * 4 * 2 ** 40
    assert g.flops() == 2.0 * 2 ** 60 + 2 ** 40
    assert all(t.value is None for t in g.tensors if t.role is not Role.CONSTANT)


def test_static_argnums() -> None:
    def fn(w: jax.Array, n: int, x: jax.Array) -> jax.Array:
        for _ in range(n):
            x = jnp.tanh(x @ w)
        return x

    g = autopar.trace(fn, W, 3, X, static_argnums=1, batch_argnums=2)
    assert _prims(g)["dot_general"] == 3 and g.annotations["static_argnums"] == (1,)
    assert [(t.name, t.role) for t in g.input_tensors()] == [("[0]", Role.PARAMETER), ("[2]", Role.BATCH)]
    _assert_same(jax.jit(g)(W, X), jax.jit(fn, static_argnums=1)(W, 3, X))  # graph takes the dynamic args


@pytest.mark.parametrize("kw, match", [
    (dict(batch_argnums=2), "batch_argnums=2 is out of range for 2"),
    (dict(donate_argnums=(0, -3)), "donate_argnums"),
    (dict(static_argnums=5), "static_argnums=5"),
    (dict(batch_argnums="1"), "must be ints"),
    (dict(batch_argnums=1.0), "must be ints"),
    (dict(static_argnums=1, batch_argnums=1), "both static and batch"),
])
def test_bad_argnums_raise_value_error(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        autopar.trace(lambda a, b: a @ b, W, X, **kw)


def test_negative_argnums_normalise() -> None:
    g = autopar.trace(lambda a, b: a @ b, W, X, batch_argnums=-1, donate_argnums=[-2])
    assert g.annotations["batch_argnums"] == (1,) and g.annotations["donate_argnums"] == (0,)


def test_call_checks_argument_structure() -> None:
    g = autopar.trace(lambda a, b: a @ b, W, X)
    with pytest.raises(TypeError, match="traced structure"):
        g(W, (X, X))


# ---- views -----------------------------------------------------------------------------------------------------
def test_summary_and_networkx_view() -> None:
    def step(w: jax.Array, x: jax.Array) -> tuple:
        loss, g = autopar.value_and_grad(_mlp_loss)(w, x)
        return loss, w - 0.1 * g

    g = autopar.trace(step, W3, X, batch_argnums=1)
    text = g.summary(top=3)
    counts = Counter(op.section.value for op in g.ops)
    for s in ("forward", "backward", "optimizer"):
        assert f"{s} {counts[s]}" in text
    top3 = [p for p, _ in _prims(g).most_common(3)]
    assert all(p in text for p in top3) and "more primitive kinds" in text and "layers marked: 3" in text
    nxg = g.to_networkx()
    assert sorted(nxg.nodes) == [op.id for op in g.ops]
    assert nxg.number_of_edges() == sum(len(t.consumers) for t in g.tensors if t.producer is not None)
    assert all(nxg.nodes[op.id]["primitive"] == op.primitive for op in g.ops)
