"""Per-call overhead of a ParallelFunction against plain ``jax.jit`` on the same train step.

    python -m bench.dispatch_overhead [--steps 20] [--repeats 5]

Runs gpt_tiny's train step (87 state leaves) planned as one program on one CPU device, and the same step under
``jax.jit``, both with the state donated; prints the best per-step time of each and their ratio. The step is
small so the Python work per call (signature, flattening, placement) shows. Target: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    import autopar
    from bench.models.gpt import gpt_tiny
    from bench.step_fidelity import best_step_time

    step, (state, batch) = gpt_tiny(batch_size=8)
    fresh = lambda: jax.tree.map(jnp.array, state)  # noqa: E731 -- each run donates its own copy
    pf = autopar.parallelize(step, method=autopar.ShardParallel(mesh_shape=(1,)), batch_argnums=(1,),
                             donate_argnums=(0,), devices=jax.devices()[:1])
    jf = jax.jit(step, donate_argnums=0)
    ours = plain = float("inf")
    for r in range(args.repeats):     # interleaved, so drifting machine load hits both alike
        warm = 3 if r == 0 else 1
        ours = min(ours, best_step_time(pf, fresh(), batch, 1, steps_per_timing=args.steps, warmup=warm) * 1e3)
        plain = min(plain, best_step_time(jf, fresh(), batch, 1, steps_per_timing=args.steps, warmup=warm) * 1e3)
    ratio = ours / plain
    print(f"autopar {ours:.2f} ms, jax.jit {plain:.2f} ms per step: ratio {ratio:.2f} (target <= 1.10)")
    return 0 if ratio <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
