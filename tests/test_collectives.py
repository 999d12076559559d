"""Collective alpha-beta models against their closed forms."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autopar.cost_models.collectives import (
    CollectiveCost, all_gather_time, all_reduce_time, all_to_all_time, bytes_sent, collective_cost,
    collective_permute_time, collective_rules, collective_time, reduce_scatter_time,
)
from autopar.cost_models.links import AxisLink

ALPHA, BW = 5e-6, 1e11  # 5 us per message, 100 GB/s
BETA = 1 / BW
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def axis(n: int, alpha: float = ALPHA, bw: float = BW, name: str = "x") -> AxisLink:
    return AxisLink(name=name, size=n, alpha=alpha, bandwidth=bw)


@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("s", [8.0, 1e3, 1e6, 1e9])
def test_single_axis_closed_forms(n: int, s: float) -> None:
    a, log = axis(n), int(math.log2(n))
    f = (n - 1) / n
    ring_ar = 2 * (n - 1) * ALPHA + 2 * f * s * BETA
    doubling_ar = log * (ALPHA + s * BETA)
    raben_ar = 2 * log * ALPHA + 2 * f * s * BETA
    assert all_reduce_time(s, a) == pytest.approx(min(ring_ar, doubling_ar, raben_ar))
    assert all_gather_time(s, a) == pytest.approx(log * ALPHA + f * s * BETA)
    assert reduce_scatter_time(s, a) == pytest.approx(log * ALPHA + f * s * BETA)
    pairwise = (n - 1) * ALPHA + f * s * BETA
    bruck = log * ALPHA + log * s / 2 * BETA
    assert all_to_all_time(s, a) == pytest.approx(min(pairwise, bruck))
    assert collective_permute_time(s, a) == pytest.approx(ALPHA + s * BETA)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_all_reduce_regimes(n: int) -> None:
    a, log = axis(n), int(math.log2(n))
    tiny, huge = 4.0, 1e10
    # tiny: latency bound -> recursive doubling (log n messages)
    assert all_reduce_time(tiny, a) == pytest.approx(log * (ALPHA + tiny * BETA))
    # huge: bandwidth bound -> 2(n-1)/n S beta dominates, far below the doubling form for n > 2
    t = all_reduce_time(huge, a)
    if n == 2:  # one exchange of the whole buffer is optimal in both regimes
        assert t == pytest.approx(ALPHA + huge * BETA)
    else:
        assert t == pytest.approx(2 * log * ALPHA + 2 * (n - 1) / n * huge * BETA)
        assert t < log * huge * BETA


@pytest.mark.parametrize("n", [4, 8])
def test_all_to_all_regimes(n: int) -> None:
    a, log = axis(n), int(math.log2(n))
    assert all_to_all_time(8.0, a) == pytest.approx(log * ALPHA + log * 4.0 * BETA)  # Bruck
    s = 1e10
    assert all_to_all_time(s, a) == pytest.approx((n - 1) * ALPHA + (n - 1) / n * s * BETA)  # pairwise


def test_all_reduce_not_power_of_two() -> None:
    n, a = 6, axis(6)
    # tiny: recursive doubling needs floor(log2 6) + 2 = 4 steps (fold-in, 2 doublings, fold-out)
    assert all_reduce_time(8.0, a) == pytest.approx(4 * (ALPHA + 8 * BETA))
    # huge: bandwidth-optimal 2(n-1)/n S beta with 2 ceil(log2 6) = 6 messages (beats the ring's 10)
    s = 1e10
    assert all_reduce_time(s, a) == pytest.approx(6 * ALPHA + 2 * (n - 1) / n * s * BETA)
    assert all_reduce_time(s, a) < 2 * (n - 1) * ALPHA + 2 * (n - 1) / n * s * BETA


@pytest.mark.parametrize("kind", KINDS)
def test_size_one_axis_is_free(kind: str) -> None:
    assert collective_time(kind, 1e9, axis(1)) == 0.0
    assert collective_time(kind, 1e9, [axis(1), axis(1, name="y")]) == 0.0
    assert collective_time(kind, 1e9, []) == 0.0
    assert bytes_sent(kind, 1e9, 1) == 0.0
    # a size-1 axis in a group changes nothing
    assert collective_time(kind, 1e6, [axis(4), axis(1, name="y")]) == collective_time(kind, 1e6, axis(4))


def test_hierarchical_beats_flat_when_outer_is_slow() -> None:
    inner = axis(8, alpha=2e-6, bw=3e11, name="node")      # NVLink-class
    outer = axis(4, alpha=1e-5, bw=2.5e10, name="ib")      # 200 Gb/s IB
    s = 1e9
    flat = AxisLink("f", 32, alpha=1e-5, bandwidth=2.5e10)
    flat_ar = min(2 * 31 * 1e-5 + 2 * 31 / 32 * s / 2.5e10, 2 * 5 * 1e-5 + 2 * 31 / 32 * s / 2.5e10)
    assert all_reduce_time(s, flat) == pytest.approx(flat_ar)
    hier = (3 * 2e-6 + 7 / 8 * s / 3e11) * 2 + (2 * 2 * 1e-5 + 2 * 3 / 4 * (s / 8) / 2.5e10)
    got = all_reduce_time(s, [inner, outer])
    assert got == pytest.approx(hier)
    assert got < 0.2 * flat_ar
    # order of the axes does not matter
    assert all_reduce_time(s, [outer, inner]) == pytest.approx(hier)
    # all-gather: gather the outer pieces (S/8) over IB, then the full S over NVLink
    ag = (2 * 1e-5 + 3 / 4 * (s / 8) / 2.5e10) + (3 * 2e-6 + 7 / 8 * s / 3e11)
    assert all_gather_time(s, [inner, outer]) == pytest.approx(ag)
    assert reduce_scatter_time(s, [inner, outer]) == pytest.approx(ag)
    # permute has no hierarchical form: slowest link
    assert collective_permute_time(s, [inner, outer]) == pytest.approx(1e-5 + s / 2.5e10)


def test_flat_wins_when_links_are_equal_and_message_tiny() -> None:
    a, b = axis(4, name="a"), axis(4, name="b")
    # one flat recursive doubling over 16 devices: 4 steps; hierarchical needs at least as many messages
    assert all_reduce_time(8.0, [a, b]) == pytest.approx(4 * (ALPHA + 8 * BETA))


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(KINDS), n=st.integers(1, 64), m=st.integers(1, 8),
       s1=st.floats(0, 1e11), s2=st.floats(0, 1e11))
def test_monotonic_in_bytes(kind: str, n: int, m: int, s1: float, s2: float) -> None:
    axes = [axis(n, name="a"), axis(m, alpha=2e-5, bw=1e10, name="b")]
    lo, hi = sorted((s1, s2))
    assert collective_time(kind, lo, axes) <= collective_time(kind, hi, axes) + 1e-15
    assert collective_time(kind, lo, axes[0]) <= collective_time(kind, hi, axes[0]) + 1e-15
    assert bytes_sent(kind, lo, n) <= bytes_sent(kind, hi, n)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_bytes_sent(n: int) -> None:
    s = 1024.0
    assert bytes_sent("all-reduce", s, n) == pytest.approx(2 * (n - 1) / n * s)
    for kind in ("all-gather", "reduce-scatter", "all-to-all"):
        assert bytes_sent(kind, s, n) == pytest.approx((n - 1) / n * s)
    assert bytes_sent("collective-permute", s, n) == s


def test_collective_cost_record() -> None:
    c = collective_cost("all-reduce", 4096, [axis(4, name="x"), axis(2, name="y")])
    assert isinstance(c, CollectiveCost)
    assert c.axes == ("x", "y") and c.kind == "all-reduce" and c.nbytes == 4096
    assert c.bytes_sent == pytest.approx(2 * 7 / 8 * 4096)
    assert c.time == all_reduce_time(4096, [axis(4, name="x"), axis(2, name="y")])
    with pytest.raises(Exception):
        c.time = 0.0  # type: ignore[misc]


def test_rule_table_and_errors() -> None:
    assert set(collective_rules) == set(KINDS)
    with pytest.raises(ValueError, match="all-reduce"):
        collective_time("allreduce", 1.0, axis(2))
    with pytest.raises(ValueError, match="nbytes"):
        all_reduce_time(-1.0, axis(2))
    with pytest.raises(ValueError, match="bandwidth"):
        all_reduce_time(1.0, AxisLink("x", 2, 1e-6, 0.0))
    with pytest.raises(ValueError, match="size"):
        all_gather_time(1.0, AxisLink("x", 0, 1e-6, 1e9))
    with pytest.raises(ValueError, match="n:"):
        bytes_sent("all-reduce", 1.0, 0)
