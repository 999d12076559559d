"""Cost-model fidelity: autopar's predicted flops and per-device memory against XLA's own accounting.

    python -m bench.cost_model_fidelity

For an MLP and a transformer-block train step (Adam), replicated on one device and sharded by autopar's plan
on a 2 x 4 mesh of fake CPU devices, prints predicted / XLA ratios of
- matmul flops per device (dot_general; XLA: ``cost_analysis()["flops"]`` of the graph's dots compiled alone,
  with the shardings the plan chose for them), and
- per-device memory: arguments + outputs + temporaries (XLA: ``memory_analysis()``).
Targets: flops within 1%, memory within 15%. Exit status 1 when a case misses.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import autopar  # noqa: E402
from autopar.cost_models.memory import estimate_memory  # noqa: E402
from autopar.ir.flops import op_flops  # noqa: E402
from autopar.planner.shard_parallel import plan_intra_op  # noqa: E402
from autopar.sharding.spec import ShardingSpec  # noqa: E402

F32 = jnp.float32


def _adam_step(loss):
    opt = optax.adam(1e-3)

    def step(state, batch):
        p, s = state
        val, g = autopar.value_and_grad(loss)(p, batch)
        u, s = opt.update(g, s, p)
        return val, (optax.apply_updates(p, u), s)

    return step, opt


def mlp_case(batch=1024, hidden=512, layers=4):
    def loss(p, batch):
        h = batch["x"]
        for i, w in enumerate(p):
            h = h @ w
            if i < len(p) - 1:
                h = jax.nn.gelu(h)
        return jnp.mean((h - batch["y"]) ** 2)

    step, opt = _adam_step(loss)
    params = [jax.ShapeDtypeStruct((hidden, hidden), F32) for _ in range(layers)]
    data = {"x": jax.ShapeDtypeStruct((batch, hidden), F32), "y": jax.ShapeDtypeStruct((batch, hidden), F32)}
    return step, ((params, jax.eval_shape(opt.init, params)), data)


def block_case(batch=8, seq=128, hidden=256, heads=8):
    def norm(x):
        return (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5)

    def loss(p, batch):
        x = batch["x"]
        b, s, h = x.shape
        q, k, v = (norm(x) @ p[n] for n in ("wq", "wk", "wv"))
        q, k, v = (t.reshape(b, s, heads, h // heads) for t in (q, k, v))
        a = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / (h // heads) ** 0.5, axis=-1)
        x = x + jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, s, h) @ p["wo"]
        x = x + jax.nn.gelu(norm(x) @ p["w1"]) @ p["w2"]
        return jnp.mean(x ** 2)

    step, opt = _adam_step(loss)
    shapes = {"wq": (hidden, hidden), "wk": (hidden, hidden), "wv": (hidden, hidden), "wo": (hidden, hidden),
              "w1": (hidden, 4 * hidden), "w2": (4 * hidden, hidden)}
    params = {k: jax.ShapeDtypeStruct(v, F32) for k, v in shapes.items()}
    data = {"x": jax.ShapeDtypeStruct((batch, seq, hidden), F32)}
    return step, ((params, jax.eval_shape(opt.init, params)), data)


def _xla_memory(compiled) -> float:
    ma = compiled.memory_analysis()
    return float(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes)


def _xla_flops(compiled) -> float:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca["flops"])


def _dot_only(graph):
    """A program of the graph's dot_generals alone (on fresh operands), to read XLA's matmul flops."""
    dots = [op for op in graph.ops if op.primitive == "dot_general"]
    operands = [[jax.ShapeDtypeStruct(graph.tensors[t].shape, graph.tensors[t].dtype) for t in op.inputs]
                for op in dots]

    def f(*flat):
        outs = []
        for i, op in enumerate(dots):
            outs.append(jax.lax.dot_general(flat[2 * i], flat[2 * i + 1], op.params["dimension_numbers"]))
        return outs

    return f, [x for pair in operands for x in pair]


def replicated(name, step, args):
    graph = autopar.trace(step, *args, batch_argnums=1)
    compiled = jax.jit(step).lower(*args).compile()
    f, dots = _dot_only(graph)
    xla_dot_flops = _xla_flops(jax.jit(f).lower(*dots).compile())
    pred_dot = sum(op_flops(graph, op) for op in graph.ops if op.primitive == "dot_general")
    mem = estimate_memory(graph, platform="cpu").total_bytes
    return dict(case=f"{name} replicated", flops=pred_dot / xla_dot_flops, memory=mem / _xla_memory(compiled),
                pred_mem=mem, xla_mem=_xla_memory(compiled))


def sharded(name, step, args, mesh_shape=(2, 4)):
    pf = autopar.parallelize(step, batch_argnums=(1,), method=autopar.ShardParallel(mesh_shape=mesh_shape))
    graph = autopar.trace(step, *args, batch_argnums=1)
    result = plan_intra_op(graph, autopar.ClusterSpec.local(), autopar.ShardParallel(mesh_shape=mesh_shape))
    ip, choices = result.intra, result.solution.choices
    specs = ip.tensor_specs(choices)
    mesh = ip.mesh

    def tensor_bytes(t):
        s = specs.get(t.id)
        return float(t.nbytes) if s is None else float(s.bytes_per_device(t.shape, t.dtype, mesh))

    mem = estimate_memory(graph, tensor_bytes, platform="cpu").total_bytes
    pf._fixed_plan = result.plan
    compiled = pf.lower(*args).compile()
    # matmul flops per device: each dot's flops divided by the ways its chosen strategy splits the work;
    # XLA's truth: the same dots alone, compiled with the chosen strategies' operand/result shardings
    from jax.sharding import NamedSharding

    strategy = {}
    for v, node in enumerate(ip.nodes):
        if node.kind == "op":
            for op_id in (node.key, *node.tied_ops):
                strategy[op_id] = node.strategies[choices[v]]
    dots = [op for op in graph.ops if op.primitive == "dot_general"]
    pred_dot = sum(op_flops(graph, op) / strategy[op.id].work_shards for op in dots)
    jmesh = mesh.to_jax_mesh(jax.devices()[:mesh.num_devices])
    ins, outs = [], []
    for op in dots:
        st = strategy[op.id]
        for k, t in enumerate(op.inputs):
            spec = st.in_specs[k] or ShardingSpec.replicated(len(graph.tensors[t].shape))
            ins.append(NamedSharding(jmesh, spec.to_partition_spec()))
        outs.append(NamedSharding(jmesh, st.out_specs[0].to_partition_spec()))
    f, operands = _dot_only(graph)
    xla_dot = _xla_flops(jax.jit(f, in_shardings=tuple(ins), out_shardings=outs).lower(*operands).compile())
    return dict(case=f"{name} sharded {mesh_shape[0]}x{mesh_shape[1]}", flops=pred_dot / xla_dot,
                memory=mem / _xla_memory(compiled), pred_mem=mem, xla_mem=_xla_memory(compiled))


def main() -> int:
    rows = []
    for name, make in (("mlp", mlp_case), ("transformer-block", block_case)):
        step, args = make()
        rows.append(replicated(name, step, args))
        rows.append(sharded(name, step, args))
    ok = True
    print(f"{'case':<34} {'flops pred/XLA':>15} {'memory pred/XLA':>16} {'pred MiB':>9} {'XLA MiB':>9}")
    for r in rows:
        good = abs(r["flops"] - 1) <= 0.01 and 0.85 <= r["memory"] <= 1.15
        ok &= good
        print(f"{r['case']:<34} {r['flops']:>15.4f} {r['memory']:>16.3f} {r['pred_mem'] / 2**20:>9.2f} "
              f"{r['xla_mem'] / 2**20:>9.2f} {'ok' if good else 'MISS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
