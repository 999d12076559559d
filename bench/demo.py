"""autopar demo: plan and run a GPT training step on 8 fake CPU devices (one SPMD program, then a 2-stage
pipeline), then plan a bigger one for a described cluster it cannot see.

    python -m bench.demo            # from the repository root, after `pip install -e .`
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main() -> int:
    import jax
    import numpy as np

    import autopar
    from bench.models.gpt import gpt

    print(f"autopar {autopar.__version__} on jax {jax.__version__}: {len(jax.devices())} {jax.devices()[0].platform} devices\n")

    # 1. The program: a small GPT train step (Flax NNX + optax Adam), real arrays.
    step, (state, batch) = gpt(hidden=128, layers=4, heads=4, seq=64, vocab=512, batch_size=16, abstract=False)
    graph = autopar.trace(step, state, batch, batch_argnums=1)
    print("== The traced program ==")
    print(graph.summary(top=8), "\n")

    # 2. Plan it for the local devices on a 2 x 4 mesh and run it. (Bare `autopar.parallelize(step)` also
    #    tries the 1-D and 3-D meshes and keeps the best; that search takes a few minutes on 2 CPU cores.)
    pstep = autopar.parallelize(step, batch_argnums=(1,), method=autopar.ShardParallel(mesh_shape=(2, 4)))
    plan = pstep.get_plan(state, batch)
    print("== The plan ==")
    print(plan.summary(), "\n")

    ref_state, par_state = state, state
    jstep = jax.jit(step)
    worst = 0.0
    for i in range(3):
        ref_loss, ref_state = jstep(ref_state, batch)
        t0 = time.perf_counter()
        par_loss, par_state = pstep(par_state, batch)
        jax.block_until_ready(par_loss)
        dt = time.perf_counter() - t0
        rel = abs(float(par_loss) - float(ref_loss)) / max(abs(float(ref_loss)), 1e-12)
        worst = max(worst, rel)
        print(f"step {i}: loss {float(par_loss):.6f} (jax.jit {float(ref_loss):.6f}, rel. diff {rel:.1e}), "
              f"{dt * 1e3:.1f} ms")
    def max_rel(a_tree, b_tree):
        return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (np.max(np.abs(np.asarray(b))) + 1e-12))
                   for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree)))

    moment_err = max_rel(par_state[1], ref_state[1])   # Adam's moments: the gradients, accumulated
    param_err = max_rel(par_state[0], ref_state[0])
    print(f"Adam moments (accumulated gradients): max relative difference to jax.jit {moment_err:.1e}")
    print(f"parameters: max relative difference {param_err:.1e} (Adam turns float rounding noise in gradients "
          "that are exactly zero in theory, like the attention key bias, into +-learning-rate steps)\n")

    # 3. The same step as a pipeline: 2 stages of 4 devices, 1F1B over 4 microbatches (gradients accumulated).
    pipe = autopar.parallelize(step, batch_argnums=(1,), method=autopar.PipeshardParallel(
        num_microbatches=4, stages=2, logical_meshes=[(4,), (4,)], remat=False))
    pipe_plan = pipe.get_plan(state, batch)
    print("== A 2-stage pipeline of the same step ==")
    print(pipe_plan.summary(max_inputs=3))
    pipe.record_timeline()
    pipe_loss, _ = pipe(state, batch)
    ref_loss0, _ = jstep(state, batch)
    pipe_rel = abs(float(pipe_loss) - float(ref_loss0)) / max(abs(float(ref_loss0)), 1e-12)
    order = " ".join(f"{e.phase[0].upper()}{'' if e.microbatch is None else e.microbatch}@s{e.stage}"
                     for e in pipe.timeline)
    print(f"pipelined loss {float(pipe_loss):.6f} (jax.jit {float(ref_loss0):.6f}, rel. diff {pipe_rel:.1e})")
    print(f"what ran, in order: {order}\n")
    worst = max(worst, pipe_rel)

    # 4. Plan a bigger model for a cluster that is not here (abstract shapes, nothing allocated).
    big_step, big_args = gpt(hidden=1024, layers=4, heads=16, seq=1024, vocab=51200, batch_size=64, abstract=True)
    cluster = autopar.ClusterSpec.preset("dgx-a100")
    t0 = time.perf_counter()
    big_plan = autopar.plan(big_step, *big_args, cluster=cluster, batch_argnums=(1,),
                            method=autopar.ShardParallel(mesh_shape=(8,)))
    print(f"== A 4-layer h=1024 GPT on one {cluster.name} node, planned in {time.perf_counter() - t0:.1f} s ==")
    print(big_plan.summary(max_inputs=6))
    # Losses must agree to 1e-5; per-leaf moment ratios are looser because a leaf whose gradient is zero in
    # theory has a reference made of rounding noise (the tests check gradients leaf by leaf with that masked).
    ok = worst <= 1e-5 and moment_err <= 1e-3
    print("\nparallel run matches jax.jit" if ok else "\nMISMATCH against jax.jit")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
