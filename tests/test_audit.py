"""``autopar.audit``: HLO reading against hand-computed bytes, and predicted vs compiled on small targets.

(a) collective counting and wire bytes of HLO text in every replica-group syntax (closed forms);
(b) compiled programs with known collectives (an all-reduce of a contracted-dim matmul, an all-gather):
    the bytes read equal the ring formula for the known buffer sizes;
(c) ``autopar.audit`` on a data-parallel MLP: memory and all-reduce bytes match the prediction within 15 %
    (the acceptance tolerance), counts match exactly;
(d) ratios, failures and JSON conversion;
(e) pipelined / microbatched plans: one StageAudit per stage whose compiled memory is the largest program
    footprint + (in flight - 1) x stash + the accumulator, with the accumulator's closed form, and the real
    ``autopar audit`` CLI on ``mlp_tiny``, whose default plan is pipelined.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import autopar  # noqa: E402
from autopar.audit import (AuditReport, ProgramCost, StageAudit, audit, collective_bytes,  # noqa: E402
                           count_collectives, group_size, lowered_for, ratio)

HLO = """
HloModule m
ENTRY %main {
  %ar = f32[64,32]{1,0} all-reduce(%x), channel_id=1, replica_groups={{0,1,2,3},{4,5,6,7}}, to_apply=%add
  %ag = bf16[8,128]{1,0} all-gather(%y), channel_id=2, replica_groups=[1,8]<=[8], dimensions={0}
  %rs = f32[16]{0} reduce-scatter(%z), channel_id=3, replica_groups=mesh['axis_0'=2,'axis_1'=4], \
device_ids=([2,4]T(1,0)) {'axis_1'}, dimensions={0}
  %t = (f32[10]{0}, f32[6]{0}) all-reduce(%a, %b), channel_id=4, replica_groups={}, to_apply=%add
  %cp = f32[100]{0} collective-permute(%c), channel_id=5, source_target_pairs={{0,1},{1,2}}
  %ags = (f32[4]{0}, f32[32]{0}) all-gather-start(%d), channel_id=6, replica_groups=[1,8]<=[8], dimensions={0}
  %agd = f32[32]{0} all-gather-done(%ags)
}
"""


def test_counts_per_kind_and_tuple_elements() -> None:
    assert count_collectives(HLO) == {"all-reduce": 3, "all-gather": 2, "reduce-scatter": 1, "collective-permute": 1}


def test_group_sizes_in_every_syntax() -> None:
    lines = HLO.strip().splitlines()[2:]
    assert [group_size(line, 8) for line in lines[:6]] == [4, 8, 4, 8, 2, 8]


def test_wire_bytes_closed_forms() -> None:
    got = collective_bytes(HLO, num_devices=8)
    ar = 2 * 3 / 4 * 64 * 32 * 4 + 2 * 7 / 8 * (10 + 6) * 4       # ring all-reduce 2(n-1)/n S
    ag = 7 / 8 * 8 * 128 * 2 + 7 / 8 * 32 * 4                       # all-gather (n-1)/n S, S = output
    rs = 3 / 4 * 16 * 4 * 4                                         # reduce-scatter: S = input = n * output
    assert got == pytest.approx({"all-reduce": ar, "all-gather": ag, "reduce-scatter": rs,
                                 "collective-permute": 400.0})


def _mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("a", "b"))


def test_compiled_all_reduce_and_all_gather_bytes() -> None:
    mesh = _mesh()
    x = jax.ShapeDtypeStruct((16, 64), jnp.float32, sharding=NamedSharding(mesh, P(None, "b")))
    w = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=NamedSharding(mesh, P("b", None)))
    out = NamedSharding(mesh, P())
    text = jax.jit(lambda x, w: x @ w, out_shardings=out).lower(x, w).compile().as_text()
    assert count_collectives(text) == {"all-reduce": 1}
    assert collective_bytes(text, 8) == pytest.approx({"all-reduce": 2 * 3 / 4 * 16 * 32 * 4})

    v = jax.ShapeDtypeStruct((64, 8), jnp.float32, sharding=NamedSharding(mesh, P(("a", "b"), None)))
    text = jax.jit(lambda v: v * 2, out_shardings=out).lower(v).compile().as_text()
    assert count_collectives(text) == {"all-gather": 1}
    assert collective_bytes(text, 8) == pytest.approx({"all-gather": 7 / 8 * 64 * 8 * 4})


def _mlp(batch: int = 64, h: int = 32) -> tuple:
    params = {"w1": jnp.ones((h, h)) * 0.1, "w2": jnp.ones((h, h)) * 0.1}
    data = {"x": jnp.ones((batch, h)), "y": jnp.zeros((batch, h))}

    def step(p: dict, b: dict) -> tuple:
        def loss(p: dict) -> jax.Array:
            return jnp.mean((jnp.tanh(b["x"] @ p["w1"]) @ p["w2"] - b["y"]) ** 2)

        value, g = jax.value_and_grad(loss)(p)
        return value, jax.tree.map(lambda w, gw: w - 0.1 * gw, p, g)

    return step, (params, data)


def test_audit_data_parallel_mlp_matches_prediction() -> None:
    step, args = _mlp()
    report = audit(step, *args, method="data", batch_argnums=(1,), cluster="cpu")
    assert isinstance(report, AuditReport) and len(report.stages) == 1
    p, c = report.predicted, report.compiled
    # data parallel: each weight gradient (32 x 32 f32) and the loss (a scalar) all-reduced over 8 devices
    assert c.comm_bytes == pytest.approx({"all-reduce": 2 * 7 / 8 * (2 * 32 * 32 * 4 + 4)})
    assert p.collective_counts == c.collective_counts == {"all-reduce": 3}
    assert 0.85 <= report.ratios()["comm_bytes[all-reduce]"] <= 1.15
    assert 0.85 <= report.ratios()["peak_memory_bytes"] <= 1.15, (p.peak_memory_bytes, c.peak_memory_bytes)
    assert c.flops > 0 and p.flops > 0
    assert set(report.to_dict()) == {"predicted", "compiled", "ratios", "compile_time_s", "stages"}


def test_audit_refuses_plans_larger_than_the_local_devices() -> None:
    step, args = _mlp()
    plan = autopar.plan(step, *args, method="data", batch_argnums=(1,),
                        cluster=autopar.ClusterSpec.preset("dgx-a100", nodes=2))
    with pytest.raises(ValueError, match="needs 16 devices but 8 are local"):
        audit(step, *args, plan=plan, batch_argnums=(1,))


def test_cpu_lowers_reduce_scatter_to_all_reduce() -> None:
    planned = ProgramCost(10.0, {"reduce-scatter": 700.0, "all-reduce": 5.0, "all-gather": 700.0},
                          {"reduce-scatter": 3, "all-reduce": 1, "all-gather": 3}, 1.0)
    cpu = lowered_for(planned, "cpu")
    assert cpu.comm_bytes == {"all-reduce": 1405.0, "all-gather": 700.0}
    assert cpu.collective_counts == {"all-reduce": 4, "all-gather": 3}
    assert lowered_for(planned, "gpu") == planned


def test_ratios_failures_and_combination() -> None:
    assert ratio(0, 0) == 1.0 and math.isinf(ratio(1, 0)) and ratio(3, 2) == 1.5
    a = StageAudit("stage0", 4, ProgramCost(100, {"all-reduce": 10}, {"all-reduce": 1}, 5),
                   ProgramCost(100, {"all-reduce": 10}, {"all-reduce": 1}, 5))
    b = StageAudit("stage1", 4, ProgramCost(200, {"all-gather": 30}, {}, 5),
                   ProgramCost(100, {}, {}, 5))
    r = AuditReport(plan=None, stages=(a, b))
    assert r.predicted.peak_memory_bytes == 200 and r.compiled.peak_memory_bytes == 100
    assert r.predicted.comm_bytes == {"all-reduce": 10, "all-gather": 30}
    assert r.failures(0.1) == {"peak_memory_bytes": 2.0, "comm_bytes[all-gather]": math.inf,
                               "stage1/peak_memory_bytes": 2.0, "stage1/comm_bytes[all-gather]": math.inf}
    assert r.to_dict()["ratios"]["comm_bytes[all-gather]"] is None
    assert AuditReport(plan=None, stages=(a,)).failures(0.0) == {}


def _bench(name: str) -> tuple:
    from bench.models import gpt, mlp, wide_resnet

    table = {"mlp": lambda: mlp.mlp(256, 2, batch_size=256, abstract=True),
             "gpt": lambda: gpt.gpt_tiny(batch_size=8, abstract=True),
             # batch 16: at 8 images the cost model (fusion-aware since the H200 calibration) finds gathering the
             # batch and computing replicated cheaper than 30 latency-bound gradient all-reduces, and that plan
             # meets the known XLA:CPU convolution-gradient gap (0.64); at 16 the data-parallel plan is kept
             "wresnet": lambda: wide_resnet.wresnet_tiny(batch_size=16, abstract=True)}
    return table[name]()


SLOW = pytest.mark.slow
METHODS = {"data": "data", "shard8": autopar.ShardParallel(mesh_shape=(8,)),
           "shard2x4": autopar.ShardParallel(mesh_shape=(2, 4)), "shard": autopar.ShardParallel(),
           "auto": "auto"}
# Fast where one audit takes < 10 s on two shared cores; the rest run in the slow set.
ACCEPTANCE = [
    pytest.param("mlp", "data", id="mlp-data"),
    pytest.param("mlp", "shard8", id="mlp-shard8"),
    pytest.param("mlp", "shard2x4", id="mlp-shard2x4"),
    pytest.param("gpt", "shard8", id="gpt-shard8"),
    pytest.param("wresnet", "data", id="wresnet-data"),
    pytest.param("gpt", "data", id="gpt-data", marks=SLOW),
    # 1.194x XLA's peak while the YNN shared-input rule double-counted the cross-entropy's shifted logits and
    # one-hot, and the tied embedding's folded transpose was held (cost_models/memory.py); 1.131x since
    pytest.param("gpt", "shard2x4", id="gpt-shard2x4", marks=SLOW),
    pytest.param("wresnet", "shard8", id="wresnet-shard8", marks=SLOW),
    # 0.76 of XLA's peak (a known underestimate) until XLA:CPU's output-allocation reuse, LayerNorm broadcasts
    # and hoisted convolution relayout copies were modelled (cost_models/backend_rules.py)
    pytest.param("wresnet", "shard2x4", id="wresnet-shard2x4", marks=SLOW),
    # the mesh left to the planner (``autopar audit TARGET --method shard``): every mesh of 8 is searched
    pytest.param("mlp", "shard", id="mlp-shard", marks=SLOW),
    pytest.param("gpt", "shard", id="gpt-shard", marks=SLOW),
    pytest.param("wresnet", "shard", id="wresnet-shard", marks=SLOW),
    # ``autopar audit TARGET``'s default method. For gpt_tiny the stage search's best is one (2, 4) stage with
    # one microbatch, which Auto plans as the single SPMD program it is (asserted below)
    pytest.param("gpt", "auto", id="gpt-auto", marks=SLOW),
]


@pytest.mark.parametrize("model, method", ACCEPTANCE)
def test_acceptance_ratios_within_15_percent(model: str, method: str) -> None:
    """Issue 6 acceptance: per-device memory and per-kind collective bytes within 0.85-1.15 of XLA's."""
    fn, args = _bench(model)
    report = audit(fn, *args, method=METHODS[method], batch_argnums=(1,), cluster="cpu")
    assert report.compiled.comm_bytes, "expected collectives in the compiled program"
    assert report.failures(0.15) == {}, report.ratios()
    assert report.predicted.collective_counts == report.compiled.collective_counts
    if method == "auto":
        assert report.plan.method == "shard" and len(report.plan.stages) == 1, report.plan.method


# ---- pipelined / microbatched plans ----------------------------------------------------------------
PP2 = autopar.PipeshardParallel(num_microbatches=2, stages=2)


def _tiny(name: str) -> tuple:
    from bench.models import MODELS

    return MODELS[name]()


def _check_pipelined_report(report: AuditReport) -> None:
    """The compiled memory of every stage is assembled from its parts as the module docstring defines."""
    for st in report.stages:
        parts = dict(st.memory_parts)
        programs = [v for k, v in parts.items() if k.startswith(f"s{st.name[len('stage'):]}.")]
        assert programs, parts
        keep = parts["in_flight"]
        want = max(programs) + (keep - 1) * parts["stash"] + parts["accumulator"]
        assert st.compiled.peak_memory_bytes == pytest.approx(want)
    assert report.compiled.peak_memory_bytes == max(s.compiled.peak_memory_bytes for s in report.stages)


def test_audit_pipelined_mlp_two_stages_two_microbatches() -> None:
    """mlp_tiny (16 -> 32 -> 32 -> 32 -> 4) in two stages of two layers, two microbatches, 1F1B: stage 0 keeps
    two microbatches in flight, stage 1 one; each stage's accumulator holds its layers' gradients (replicated
    f32), the last stage's also the loss."""
    fn, args = _tiny("mlp_tiny")
    report = audit(fn, *args, method=PP2, batch_argnums=(1,))
    assert [s.name for s in report.stages] == ["stage0", "stage1"]
    s0, s1 = report.stages
    assert s0.memory_parts["in_flight"] == 2 and s1.memory_parts["in_flight"] == 1
    assert s0.memory_parts["accumulator"] == 4 * (16 * 32 + 32 + 32 * 32 + 32)
    assert s1.memory_parts["accumulator"] == 4 * (32 * 32 + 32 + 32 * 4 + 4 + 1)
    assert set(s0.memory_parts) >= {"s0.forward", "s0.backward", "s0.apply", "stash"}
    assert s0.memory_parts["stash"] > 0
    _check_pipelined_report(report)
    assert report.failures(0.15) == {}, report.ratios()
    assert set(report.ratios()) >= {"peak_memory_bytes", "stage0/peak_memory_bytes", "stage1/peak_memory_bytes"}
    d = report.to_dict()
    assert d["stages"][0]["memory_parts"]["in_flight"] == 2.0


@SLOW
def test_audit_microbatched_single_stage() -> None:
    """One stage, two microbatches: one microbatch in flight, so the stash adds nothing; the accumulator holds
    every gradient (32 x 16, 32 x 32 twice, 4 x 32 and the biases, f32) and the loss, at most replicated."""
    fn, args = _tiny("mlp_tiny")
    report = audit(fn, *args, method=autopar.PipeshardParallel(num_microbatches=2, stages=1), batch_argnums=(1,))
    (st,) = report.stages
    _check_pipelined_report(report)
    assert st.memory_parts["in_flight"] == 1
    grads = 4 * (16 * 32 + 32 + 2 * (32 * 32 + 32) + 32 * 4 + 4 + 1)
    assert grads / 8 <= st.memory_parts["accumulator"] <= grads
    assert report.failures(0.15) == {}, report.ratios()


ROOT = Path(__file__).resolve().parents[1]


@SLOW
def test_cli_audit_of_a_searched_pipelined_plan(tmp_path: Path) -> None:
    """``autopar audit mlp_tiny --method pipeshard`` (the stage search on 8 fake CPU devices) runs for real,
    ``--strict`` at the default tolerance exits 1 on the searched plan's memory ratio (the known
    over-prediction below), and without ``--strict`` the report is written with every stage's parts."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = tmp_path / "audit.json"
    cmd = [sys.executable, "-m", "autopar.cli.main", "audit", "mlp_tiny", "--method", "pipeshard", "--json",
           str(out), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Audit: predicted vs compiled" in r.stdout
    d = json.loads(out.read_text())
    assert len(d["stages"]) >= 1 and all("memory_parts" in s for s in d["stages"])
    assert all(v is not None and v > 0 for v in d["ratios"].values()), d["ratios"]
    strict = subprocess.run(cmd + ["--strict"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    outside = {k: v for k, v in d["ratios"].items() if not 0.9 <= v <= 1.1}
    assert strict.returncode == (1 if outside else 0), (strict.stderr, d["ratios"])


PIPELINED = [
    pytest.param("gpt_tiny", "pp2", id="gpt_tiny-pp2", marks=SLOW),
    # a stage's memory is its largest program's footprint (cost_models/program_memory.py): while a stage was
    # modelled as one program, mlp_tiny's searched two-stage pipeline read 1.16 / 1.19 of XLA's peak (0.996 /
    # 0.995 now) and wresnet_tiny's pp2 stages 0.69 / 0.87
    pytest.param("mlp_tiny", "pipeshard", id="mlp_tiny-pipeshard", marks=SLOW),
    pytest.param("wresnet_tiny", "pp2", id="wresnet_tiny-pp2", marks=SLOW),
    # the searched plan (two stages of 4 devices, as the default audit): stage 0 read 0.841 of XLA's peak (its
    # backward 0.84) while the walk charged the backward program's max-pool select half and its arguments'
    # relayout copies at their readers; XLA:CPU's breadth-first schedule runs them at the program's start
    # (cost_models/backend_rules.py ``_made_at``): 0.886 / 0.974
    pytest.param("wresnet_tiny", "pipeshard", id="wresnet_tiny-pipeshard", marks=SLOW),
]


@pytest.mark.parametrize("model, method", PIPELINED)
def test_acceptance_pipelined_ratios_within_15_percent(model: str, method: str) -> None:
    fn, args = _tiny(model)
    report = audit(fn, *args, method=PP2 if method == "pp2" else method, batch_argnums=(1,))
    assert "stage_layers" in report.plan.method_options
    _check_pipelined_report(report)
    assert report.failures(0.15) == {}, report.ratios()
    assert report.predicted.collective_counts == report.compiled.collective_counts


# ---- one device, the whole batch there: activation memory on XLA:CPU (docs/cost_model.md) -------------------
ONE_DEVICE = [
    pytest.param("wresnet_tiny", 2, id="wresnet_tiny-b2"),
    pytest.param("wresnet_tiny", 4, id="wresnet_tiny-b4"),
    pytest.param("wresnet_tiny", 16, id="wresnet_tiny-b16", marks=SLOW),
    pytest.param("gpt_tiny", 4, id="gpt_tiny-b4"),
    pytest.param("gpt_tiny", 64, id="gpt_tiny-b64", marks=SLOW),
]


_ONE_DEVICE_AUDIT = """
import sys, autopar
from bench.models import MODELS
fn, args = MODELS[sys.argv[1]](batch_size=int(sys.argv[2]))
r = autopar.audit(fn, *args, method=autopar.ShardParallel(mesh_shape=(1,)), batch_argnums=(1,))
print(r.ratios()["peak_memory_bytes"])
"""


@pytest.mark.parametrize("model, batch", ONE_DEVICE)
def test_acceptance_one_device_memory_within_15_percent(model: str, batch: int) -> None:
    """Before XLA:CPU's output-allocation reuse, the LayerNorm broadcasts and the hoisted convolution relayout
    copies were modelled (cost_models/memory.py): wresnet_tiny 0.86 / 0.70 / 0.53 at 2 / 4 / 16 images,
    gpt_tiny 1.208 / 0.823 at batch 4 / 64. One device: a process of its own."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-c", _ONE_DEVICE_AUDIT, model, str(batch)], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    ratio = float(r.stdout.strip().splitlines()[-1])
    assert 0.85 <= ratio <= 1.15, ratio


def test_default_audit_of_wresnet_tiny_memory_within_15_percent(tmp_path: Path) -> None:
    """``autopar audit bench.models.wide_resnet:wresnet_tiny`` (8 devices; Auto plans a two-stage pipeline of 4
    devices a stage): 0.699 of XLA's peak before the rules above, 0.841 with them (stage 0's backward program
    predicted 915 KB against 1.09 MB compiled), 0.886 since that program's max-pool select half and its
    arguments' relayout copies are made at its start (``wresnet_tiny-pipeshard`` above)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = tmp_path / "audit.json"
    cmd = [sys.executable, "-m", "autopar.cli.main", "audit", "bench.models.wide_resnet:wresnet_tiny", "--json",
           str(out), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    ratio = json.loads(out.read_text())["ratios"]["peak_memory_bytes"]
    assert 0.85 <= ratio <= 1.15, ratio
