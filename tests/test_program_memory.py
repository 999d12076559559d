"""Memory of a graph run as several programs (cost_models/program_memory.py), against byte counts by hand.

The end-to-end check is the audit of pipelined plans (tests/test_audit.py: every stage's compiled pieces)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import autopar
from autopar.cost_models.memory import estimate_memory
from autopar.cost_models.program_memory import PROGRAM_OF_OP, estimate_programs, program_estimates

S = jax.ShapeDtypeStruct
KB = 1024


def _step(w: jax.Array, x: jax.Array) -> jax.Array:
    h = x @ w                                                    # "forward": 64 x 32 f32 = 8 KiB
    g = lax.dot_general(h, x, (((0,), (0,)), ((), ())))          # "backward": 32 x 32 = 4 KiB
    return w - g                                                 # "update"


def _graph(phases: tuple[int, ...], donate: bool = False) -> autopar.Graph:
    g = autopar.trace(_step, S((32, 32), jnp.float32), S((64, 32), jnp.float32), batch_argnums=1,
                      donate_argnums=(0,) if donate else ())
    assert [op.primitive for op in g.ops] == ["dot_general", "dot_general", "sub"]
    return dataclasses.replace(g, annotations={**g.annotations, PROGRAM_OF_OP: phases})


def test_each_program_holds_its_own_values_and_what_stays_on_the_device() -> None:
    fwd, bwd, upd = program_estimates(_graph((0, 1, 2)))
    parts = [(m.argument_bytes, m.output_bytes, m.temp_peak_bytes, m.alias_bytes) for m in (fwd, bwd, upd)]
    assert parts == [(12 * KB, 8 * KB, 0.0, 0.0),     # w, x in; h out
                     (20 * KB, 4 * KB, 0.0, 0.0),     # h, x in, w kept on the device; g out
                     (8 * KB, 4 * KB, 0.0, 0.0)]      # w, g in (x is the batch: not held); w - g out
    assert estimate_programs(_graph((0, 1, 2))) == bwd
    # forward and backward as one program: h is its temporary, g its output
    fused, _ = program_estimates(_graph((0, 0, 1)))
    assert (fused.argument_bytes, fused.output_bytes, fused.temp_peak_bytes) == (12 * KB, 4 * KB, 8 * KB)


def test_a_donated_state_is_updated_in_place_by_the_update_program() -> None:
    *_, upd = program_estimates(_graph((0, 1, 2), donate=True))
    assert upd.alias_bytes == 4 * KB and upd.peak_bytes == 8 * KB       # w - g written into w's buffer
    g = _graph((0, 1, 2))
    with pytest.raises(ValueError, match="gives 2 entries for a graph of 3 ops"):
        estimate_programs(dataclasses.replace(g, annotations={PROGRAM_OF_OP: (0, 1)}))


def test_one_program_is_estimate_memory() -> None:
    g = _graph((0, 0, 0))
    assert estimate_programs(g) == estimate_memory(g)
