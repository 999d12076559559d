"""One process of the multi-process test of ``autopar.parallelize`` (launched by tests/test_multiprocess.py).

Consumes: ``--rank``, ``--port`` (the coordinator on 127.0.0.1), ``--method`` (``shard`` = ShardParallel on a
(2, 4) mesh, ``data`` = DataParallel), ``--out`` (a JSON file to write). Every rank builds the same small MLP
train step (Adam via optax, fp32) and the same numpy inputs, runs it ``STEPS`` times through
``autopar.parallelize``, gathers the losses and the final params to host and writes them with the plan's JSON.
Produces: that JSON file; exit status 0. Refuses nothing: any error ends the process with a traceback.

The model and data builders are importable without side effects, so the test computes its single-process
reference from the same definitions.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

import numpy as np

NUM_PROCESSES = 2
LOCAL_DEVICES = 4
STEPS = 2
BATCH = 16
IN_DIM = 8
HIDDEN = 32
OUT_DIM = 4
LEARNING_RATE = 1e-2


def make_step() -> tuple[Callable[..., Any], Any]:
    """The train step ``step(state, batch) -> (state, loss)`` and its optimizer."""
    import jax
    import jax.numpy as jnp
    import optax

    opt = optax.adam(LEARNING_RATE)

    def loss_fn(params: Any, batch: Any) -> Any:
        x, y = batch
        h = jnp.tanh(x @ params["w1"] + params["b1"])
        pred = h @ params["w2"] + params["b2"]
        return jnp.mean((pred - y) ** 2)

    def step(state: Any, batch: Any) -> Any:
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step, opt


def make_inputs() -> tuple[Any, Any]:
    """Identical host (numpy) state and batch on every process: fixed seed, fp32."""
    import jax

    _, opt = make_step()
    rng = np.random.default_rng(0)
    params = {"w1": rng.normal(0, 0.3, (IN_DIM, HIDDEN)).astype(np.float32),
              "b1": rng.normal(0, 0.1, (HIDDEN,)).astype(np.float32),
              "w2": rng.normal(0, 0.3, (HIDDEN, OUT_DIM)).astype(np.float32),
              "b2": rng.normal(0, 0.1, (OUT_DIM,)).astype(np.float32)}
    opt_state = jax.tree.map(np.asarray, opt.init(params))
    batch = (rng.normal(0, 1, (BATCH, IN_DIM)).astype(np.float32),
             rng.normal(0, 1, (BATCH, OUT_DIM)).astype(np.float32))
    return (params, opt_state), batch


def run_steps(step: Callable[..., Any], state: Any, batch: Any, to_host: Callable[[Any], np.ndarray],
              steps: int = STEPS) -> dict[str, Any]:
    """Run ``steps`` steps; the losses and the final params as plain lists (JSON-ready)."""
    losses = []
    for _ in range(steps):
        state, loss = step(state, batch)
        losses.append(float(to_host(loss)))
    params = state[0]
    return {"losses": losses, "params": {k: to_host(v).tolist() for k, v in sorted(params.items())}}


def _method(name: str) -> Any:
    import autopar

    table = {"shard": lambda: autopar.ShardParallel(mesh_shape=(NUM_PROCESSES, LOCAL_DEVICES)),
             "data": lambda: autopar.DataParallel()}
    if name not in table:
        raise ValueError(f"--method {name!r}: use one of {sorted(table)}")
    return table[name]()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--method", default="shard")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}", num_processes=NUM_PROCESSES,
                               process_id=args.rank, initialization_timeout=120)
    try:
        from jax.experimental import multihost_utils

        import autopar

        assert jax.process_count() == NUM_PROCESSES and jax.local_device_count() == LOCAL_DEVICES, \
            (jax.process_count(), jax.local_device_count())
        step, _ = make_step()
        state, batch = make_inputs()
        pstep = autopar.parallelize(step, batch_argnums=(1,), method=_method(args.method))
        plan = pstep.get_plan(state, batch)

        def to_host(x: Any) -> np.ndarray:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))

        result = run_steps(pstep, state, batch, to_host)
        result.update(rank=args.rank, process_count=jax.process_count(), device_count=jax.device_count(),
                      plan=plan.to_json())
        with open(args.out, "w") as f:
            json.dump(result, f)
        multihost_utils.sync_global_devices("autopar-multiprocess-test-done")
    finally:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
