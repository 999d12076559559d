"""``autopar.emit.reshard_path``: the layouts a planned reshard passes through, and XLA running exactly the
collectives ``reshard_steps`` costs once they are pinned in turn (where one pin makes it replicate the value)."""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402

from autopar.audit import collective_bytes, count_collectives  # noqa: E402
from autopar.cost_models.collectives import bytes_sent  # noqa: E402
from autopar.emit.reshard_path import reshard_layouts  # noqa: E402
from autopar.sharding.mesh import LogicalMesh  # noqa: E402
from autopar.sharding.reshard import reshard_steps  # noqa: E402
from autopar.sharding.spec import ShardingSpec as S  # noqa: E402

MESH = LogicalMesh((2, 4), ("x", "y"))
XY, X, Y, R = ("x", "y"), ("x",), ("y",), ()

# (shape, src dims, dst dims, layouts after each collective)
CASES = [
    ((8, 16, 192), (R, R, XY), (X, R, R), [(R, R, X), (X, R, R)]),            # all-gather y, all-to-all x
    ((8, 16, 128), (XY, R, R), (R, R, Y), [(X, R, Y), (R, R, Y)]),            # all-to-all y, all-gather x
    ((8, 4, 16, 16), (XY, R, R, R), (R, R, R, R), [(X, R, R, R), (R, R, R, R)]),  # two all-gathers
]


@pytest.mark.parametrize("shape, src, dst, layouts", CASES)
def test_layouts_follow_reshard_steps(shape: tuple, src: tuple, dst: tuple, layouts: list) -> None:
    got = reshard_layouts(S(src), S(dst), shape, jnp.float32, MESH)
    assert got == tuple(S(d) for d in layouts)
    assert len(got) == len(reshard_steps(S(src), S(dst), shape, jnp.float32, MESH))


def test_single_collective_and_partial_sums_keep_one_pin() -> None:
    assert reshard_layouts(S((X, R)), S((R, R)), (8, 8), jnp.float32, MESH) == (S((R, R)),)
    assert reshard_layouts(S((R, R)), S((XY, R)), (8, 8), jnp.float32, MESH) == (S((XY, R)),)
    assert reshard_layouts(S((R, R), ("x",)), S((R, R)), (8, 8), jnp.float32, MESH) == (S((R, R)),)


def _compiled(shape: tuple, chain: list[S]) -> str:
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("x", "y"))
    named = [NamedSharding(mesh, s.to_partition_spec()) for s in chain]
    x = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=named[0])

    def f(a: jax.Array) -> jax.Array:
        for sh in named[1:]:
            a = jax.lax.with_sharding_constraint(a, sh)
        return a * 2

    return jax.jit(f, out_shardings=named[-1]).lower(x).compile().as_text()


@pytest.mark.parametrize("shape, src, dst, layouts", CASES)
def test_xla_runs_the_planned_collectives_when_pinned_in_turn(shape: tuple, src: tuple, dst: tuple,
                                                              layouts: list) -> None:
    steps = reshard_steps(S(src), S(dst), shape, jnp.float32, MESH)
    want_counts: dict[str, int] = {}
    want_bytes: dict[str, float] = {}
    for st in steps:
        want_counts[st.kind] = want_counts.get(st.kind, 0) + 1
        want_bytes[st.kind] = want_bytes.get(st.kind, 0.0) + bytes_sent(st.kind, st.nbytes, MESH.size(st.axes))
    text = _compiled(shape, [S(src)] + list(reshard_layouts(S(src), S(dst), shape, jnp.float32, MESH)))
    assert count_collectives(text) == want_counts
    assert collective_bytes(text, 8) == pytest.approx(want_bytes)


def test_one_pin_makes_xla_replicate_the_value() -> None:
    """The reason for the path: asked for RRS[x,y] -> S[x]RR at once, XLA gathers the whole value over all 8."""
    shape = (8, 16, 192)
    text = _compiled(shape, [S((R, R, XY)), S((X, R, R))])
    assert count_collectives(text) == {"all-gather": 1}
    assert collective_bytes(text, 8) == pytest.approx({"all-gather": 7 / 8 * 8 * 16 * 192 * 4})
