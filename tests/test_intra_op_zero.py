"""ZeroParallel(stage=1|2|3) shards what ZeRO defines, checked on the plan and on XLA's compiled program.

stage 1 shards the optimizer state: gradients are all-reduced (every device holds all of them) and each
device updates its shard of the state, then the new parameters are all-gathered; stage 2 also shards the
gradients (reduce-scatter instead of all-reduce); stage 3 also shards the parameters (all-gathered where the
forward and backward pass read them, never gathered after the update). Planned for ``p3.16xlarge`` (8 V100s,
fp32 matmuls on CUDA cores, so batch-parallel matmuls pay off at these small sizes; on A100s TF32 makes them
launch-bound and the planner rightly prefers fewer collectives to sharded compute), compiled on the 8 local
fake CPU devices.

XLA's CPU pipeline has no reduce-scatter of its own: it lowers a reduce-scatter as an all-reduce whose
readers slice their shard (``dynamic-slice``), so on CPU the stage-2 program holds the same collectives and
buffers as stage 1 and the test checks exactly that mapping; a GPU build emits ``reduce-scatter``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import autopar  # noqa: E402
from autopar.planner.shard_parallel import IntraOpResult, gradient_tensors, plan_intra_op, state_outputs  # noqa: E402
from bench.models.mlp import mlp  # noqa: E402
from tests.hlo import count_collectives  # noqa: E402

H, BATCH = 256, 2048                      # data parallelism is the best plan: batch >> hidden
PARAM_BYTES = (3 * H * H + 3 * H) * 4     # 2 hidden layers + head: 3 kernels and 3 biases, fp32
BATCH_BYTES = 2 * BATCH * H * 4           # x and y


@functools.lru_cache(maxsize=None)
def _setup() -> tuple[Any, Any, Any]:
    step, args = mlp(H, 2, batch_size=BATCH)
    return step, tuple(args), autopar.trace(step, *args, batch_argnums=(1,))


@functools.lru_cache(maxsize=None)
def _planned(stage: int) -> tuple[IntraOpResult, Any]:
    step, args, graph = _setup()
    res = plan_intra_op(graph, autopar.ClusterSpec.preset("p3.16xlarge"), autopar.ZeroParallel(stage))
    compiled = autopar.parallelize(step, plan=res.plan, batch_argnums=(1,)).lower(*args).compile()
    return res, compiled


def _specs(stage: int) -> dict[int, Any]:
    res, _ = _planned(stage)
    return res.intra.tensor_specs(res.solution.choices)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_gradients_and_state_are_sharded_as_zero_defines(stage: int) -> None:
    _, _, graph = _setup()
    specs = _specs(stage)
    grads = gradient_tensors(graph)
    assert len(grads) == 6                                   # one per kernel and bias
    for g in grads:
        assert specs[g].is_replicated == (stage == 1), (stage, g, specs[g])
        if stage >= 2:
            assert specs[g].axes() == ("x",), (g, specs[g])
    for out, inp in state_outputs(graph).items():             # the new state is laid out like the old
        assert specs[out] == specs[inp], (out, inp, specs[out], specs[inp])
    params = [t for t in graph.inputs if graph.tensors[t].shape in {(H,), (H, H)}][:6]
    assert all(specs[p].is_replicated == (stage < 3) for p in params)


def test_collectives_differ_by_stage() -> None:
    pred = {s: dict(_planned(s)[0].plan.estimate.collective_counts) for s in (1, 2, 3)}
    hlo = {s: dict(count_collectives(_planned(s)[1].as_text())) for s in (1, 2, 3)}
    # stage 1: 6 gradient all-reduces (+1 for the loss), 6 all-gathers of the updated parameters
    assert pred[1] == {"all-reduce": 7, "all-gather": 6} == hlo[1], (pred[1], hlo[1])
    # stage 2: the gradient all-reduces become reduce-scatters; the parameters are still gathered
    assert pred[2] == {"all-reduce": 1, "reduce-scatter": 6, "all-gather": 6}, pred[2]
    cpu_lowering = {"all-reduce": pred[2]["all-reduce"] + pred[2]["reduce-scatter"],
                    "all-gather": pred[2]["all-gather"]}
    assert hlo[2] == cpu_lowering, (hlo[2], pred[2])
    # stage 3: reduce-scatters as stage 2; the 6 all-gathers now fetch sharded parameters for the forward pass
    assert pred[3] == pred[2] and hlo[3] == hlo[2], (pred[3], hlo[3])


def test_memory_differs_by_stage() -> None:
    mem = {s: _planned(s)[1].memory_analysis() for s in (1, 2, 3)}
    state = 2 * PARAM_BYTES / 8                            # Adam's mu and nu, sharded 8 ways from stage 1
    for s in (1, 2):
        assert mem[s].argument_size_in_bytes == PARAM_BYTES + state + BATCH_BYTES / 8 + 4   # + step count
    assert mem[3].argument_size_in_bytes == PARAM_BYTES / 8 + state + BATCH_BYTES / 8 + 4
    # outputs: loss, the new parameters (whole up to stage 2, one eighth at stage 3), the new state, count
    for s in (1, 2, 3):
        params = PARAM_BYTES if s < 3 else PARAM_BYTES / 8
        assert mem[s].output_size_in_bytes == pytest.approx(params + state + 8, abs=256), s
    # the plan's prediction of what a device holds follows the same order
    peaks = [_planned(s)[0].plan.estimate.peak_memory_bytes for s in (1, 2, 3)]
    assert peaks[2] < peaks[1] <= peaks[0], peaks
    assert np.isfinite(peaks).all()
