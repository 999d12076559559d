import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autopar.cost_models.links import AxisLink
from autopar.sharding.mesh import LogicalMesh
from autopar.sharding.reshard import CollectiveStep, reshard_bytes, reshard_steps, reshard_time
from autopar.sharding.spec import ShardingSpec as S

LINKS = (AxisLink("x", 2, 1e-5, 1e10), AxisLink("y", 4, 1e-6, 1e11))
MESH = LogicalMesh((2, 4), ("x", "y"), LINKS)
X4 = LogicalMesh((4,), ("x",), (AxisLink("x", 4, 1e-6, 1e11),))
GIB = 2 ** 30
F32 = np.float32


def alpha_beta(kind, nbytes, axes):
    """Tiny ring stand-in for cost_models.collectives.collective_time."""
    n = math.prod(a.size for a in axes)
    alpha, bw = max(a.alpha for a in axes), min(a.bandwidth for a in axes)
    factor = {"all-reduce": 2 * (n - 1) / n, "all-gather": (n - 1) / n, "reduce-scatter": (n - 1) / n,
              "all-to-all": (n - 1) / n, "collective-permute": 1.0}[kind]
    steps = 2 * (n - 1) if kind == "all-reduce" else n - 1
    return steps * alpha + factor * nbytes / bw


def test_all_gather_one_gib():
    shape = (GIB // 4,)
    steps = reshard_steps(S((("x",),)), S(((),)), shape, F32, X4)
    assert steps == (CollectiveStep("all-gather", GIB, ("x",)),)
    t = reshard_time(S((("x",),)), S(((),)), shape, F32, X4, alpha_beta)
    assert t == pytest.approx(3 * 1e-6 + 0.75 * GIB / 1e11)


def test_identity_and_slices_are_free():
    for spec in (S(((), ())), S((("x",), ("y",))), S((("x", "y"), ()))):
        assert reshard_steps(spec, spec, (8, 8), F32, MESH) == ()
    assert reshard_steps(S(((), ())), S((("y",), ("x",))), (8, 8), F32, MESH) == ()
    assert reshard_time(S(((), ())), S((("x",), ())), (8, 8), F32, MESH, alpha_beta) == 0.0


def test_partial_to_replicated_and_sharded():
    shape, total = (64, 32), 64 * 32 * 4
    assert reshard_steps(S(((), ()), ("y",)), S(((), ())), shape, F32, MESH) == (
        CollectiveStep("all-reduce", total, ("y",)),)
    assert reshard_steps(S(((), ()), ("y",)), S((("y",), ())), shape, F32, MESH) == (
        CollectiveStep("reduce-scatter", total, ("y",)),)
    # partial over both axes -> one all-reduce over both
    assert reshard_steps(S(((), ()), ("x", "y")), S(((), ())), shape, F32, MESH) == (
        CollectiveStep("all-reduce", total, ("x", "y")),)
    # already split over x: reduce-scatter over y on the x-split half, then nothing else
    assert reshard_steps(S((("x",), ()), ("y",)), S((("x", "y"), ())), shape, F32, MESH) == (
        CollectiveStep("reduce-scatter", total // 2, ("y",)),)
    # reduce-scatter onto dim 1 first, then all-reduce over the remaining partial axis on less data
    assert reshard_steps(S(((), ()), ("x", "y")), S(((), ("y",))), shape, F32, MESH) == (
        CollectiveStep("reduce-scatter", total, ("y",)), CollectiveStep("all-reduce", total // 4, ("x",)))


def test_all_to_all_moves_an_axis():
    shape, total = (64, 32), 64 * 32 * 4
    assert reshard_steps(S((("y",), ())), S(((), ("y",))), shape, F32, MESH) == (
        CollectiveStep("all-to-all", total // 4, ("y",)),)


def test_two_axis_gather_closed_form():
    shape, total = (64, 32), 64 * 32 * 4
    steps = reshard_steps(S((("x", "y"), ())), S(((), ())), shape, F32, MESH)
    assert steps == (CollectiveStep("all-gather", total // 2, ("y",)),
                     CollectiveStep("all-gather", total, ("x",)))
    assert reshard_bytes(S((("x", "y"), ())), S(((), ())), shape, F32, MESH) == {"all-gather": total * 3 // 2}
    # slice on x first, then gather y: output per device is total / 2
    assert reshard_steps(S((("y",), ())), S(((), ("x",))), shape, F32, MESH) == (
        CollectiveStep("all-gather", total // 2, ("y",)),)


def test_rejects_non_dividing():
    with pytest.raises(ValueError, match="does not divide"):
        reshard_steps(S((("y",),)), S(((),)), (6,), F32, MESH)


_AXES = ("x", "y")


@st.composite
def _spec(draw, ndim=2, allow_partial=True):
    dims = [[] for _ in range(ndim)]
    partial = []
    for a in draw(st.permutations(_AXES)):
        where = draw(st.integers(-2 if allow_partial else -1, ndim - 1))
        if where >= 0:
            dims[where].append(a)
        elif where == -2:
            partial.append(a)
    return S(tuple(tuple(d) for d in dims), tuple(partial))


@settings(max_examples=150, deadline=None)
@given(_spec(), _spec(allow_partial=False))
def test_reshard_terminates_with_sane_bytes(src, dst):
    shape, total = (16, 8), 16 * 8 * 4
    steps = reshard_steps(src, dst, shape, F32, MESH)
    assert all(0 < s.nbytes <= total for s in steps)
    used = [a for s in steps for a in s.axes]
    assert len(used) <= 2 * len(_AXES)
    if src == dst:
        assert steps == ()
    if dst.is_replicated and src.axes():
        # the last collective gathers the whole tensor on every device
        assert steps[-1].kind in ("all-gather", "all-reduce") and steps[-1].nbytes == total
    if src.partial:
        assert steps and steps[0].kind in ("all-reduce", "reduce-scatter")
    if not src.partial and not src.axes():
        assert steps == ()  # from replicated everything is a local slice
