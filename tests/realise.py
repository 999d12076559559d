"""Shared check that sharding strategies are realisable: run an op under ``jax.jit`` with each strategy's
operand and result specs as ``with_sharding_constraint`` and compare with the unsharded op."""

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding

from autopar import _jax_compat as jc


def realise_strategies(op: Any, strategies: Sequence[Any], args: Sequence[Any], mesh: Any, every: int,
                       tol: float) -> int:
    """Check every ``every``-th strategy (and the last); returns how many were run."""
    expected = jc.bind(op.prim, args, dict(op.params))
    picked = list(strategies[::every]) + ([strategies[-1]] if (len(strategies) - 1) % every else [])

    def named(spec: Any) -> NamedSharding:
        return NamedSharding(mesh, spec.to_partition_spec())

    for s in picked:
        def run(*xs: Any, s: Any = s) -> list[Any]:
            xs = [x if sp is None else jax.lax.with_sharding_constraint(x, named(sp)) for x, sp in zip(xs, s.in_specs)]
            outs = jc.bind(op.prim, xs, dict(op.params))
            return [jax.lax.with_sharding_constraint(o, named(sp)) for o, sp in zip(outs, s.out_specs)]

        got = jax.jit(run)(*args)
        for o, e, sp in zip(got, expected, s.out_specs):
            np.testing.assert_allclose(np.asarray(o), np.asarray(e), rtol=tol, atol=tol, err_msg=s.name)
            assert o.sharding.is_equivalent_to(named(sp), o.ndim), s.name
    return len(picked)
