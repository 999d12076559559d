"""Step-time and memory fidelity on the local devices: autopar's estimate against a measured train step.

    python -m bench.step_fidelity [--profile PROFILE.json] [--cases gpu|tiny|NAME,...] [--steps N] [--json FILE]

For each case (a bench model at a size that runs on the local devices, real arrays), plans
``ShardParallel(mesh_shape=(n,))`` for ``ClusterSpec.local()`` (the catalog figures of the detected device)
and, with ``--profile``, for ``ClusterSpec.local(profile)`` (measured figures, from ``autopar calibrate``);
runs the emitted program and plain ``jax.jit`` with the state donated (one warm-up step, then the best of
``--steps``); and compiles it once more through ``autopar.audit`` for XLA's per-device memory. Prints
predicted / measured step time and predicted / XLA peak memory per case; ``--json`` writes the records.

Meant for a real accelerator (``--cases gpu``: GPT, MoE, Wide-ResNet and Llama train steps of 10^8-10^9
parameters, fp32 and bf16); ``--cases tiny`` runs the tiny models on CPU in seconds (the test of this script).
On fake CPU devices the times say nothing about the cost model: the devices share the host's cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

# name -> (factory "module:function", kwargs); sizes chosen to run in seconds on one 80 GB GPU.
GPU_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt-125m-fp32-b8": ("bench.models.gpt:gpt_125m", {"batch_size": 8}),
    "gpt-125m-bf16-b16": ("bench.models.gpt:gpt_125m", {"batch_size": 16, "dtype": "bfloat16"}),
    "moe-380m-fp32-b8": ("bench.models.moe:moe_380m", {"batch_size": 8}),
    "wresnet-250m-fp32-b32": ("bench.models.wide_resnet:wresnet_250m", {"batch_size": 32}),
    "llama-1b-bf16-b8": ("bench.models.llama:llama", {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8,
                                                      "ffn": 8192, "seq": 1024, "vocab": 32000, "batch_size": 8,
                                                      "dtype": "bfloat16"}),
    "gpt-350m-fp32-b8": ("bench.models.gpt:gpt_350m", {"batch_size": 8}),
    "gpt-760m-bf16-b8": ("bench.models.gpt:gpt_760m", {"batch_size": 8, "dtype": "bfloat16"}),
}
TINY_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt-tiny": ("bench.models.gpt:gpt_tiny", {"batch_size": 8}),
    "mlp-tiny": ("bench.models.mlp:mlp_tiny", {"batch_size": 8}),
}


@dataclass(frozen=True)
class Record:
    case: str
    platform: str
    device_kind: str
    devices: int
    predicted_step_s: float              # catalog figures
    predicted_step_calibrated_s: float | None
    measured_step_s: float               # the emitted program, best of N
    jit_step_s: float                    # plain jax.jit, best of N
    predicted_peak_bytes: float
    compiled_peak_bytes: float
    flops: float
    compute_s: float
    comm_s: float

    @property
    def time_ratio(self) -> float:
        return self.predicted_step_s / self.measured_step_s

    @property
    def memory_ratio(self) -> float:
        return self.predicted_peak_bytes / self.compiled_peak_bytes


def _build(spec: tuple[str, dict[str, Any]], *, abstract: bool) -> tuple[Callable[..., Any], tuple[Any, Any]]:
    import importlib

    import jax.numpy as jnp

    target, kwargs = spec
    module, fn = target.split(":")
    kwargs = dict(kwargs, abstract=abstract)
    if "dtype" in kwargs:
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    return getattr(importlib.import_module(module), fn)(**kwargs)


def best_step_time(run: Callable[[Any, Any], Any], state: Any, batch: Any, repeats: int, *,
                   steps_per_timing: int = 1, warmup: int = 1) -> float:
    """Seconds per step: ``warmup`` untimed steps (compile, settle the state's sharding), then the fastest of
    ``repeats`` timings of ``steps_per_timing`` steps each; the state is threaded through (it may be donated)."""
    import jax

    for _ in range(warmup):
        loss, state = run(state, batch)
    jax.block_until_ready(state)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps_per_timing):
            loss, state = run(state, batch)
        jax.block_until_ready((loss, state))
        best = min(best, (time.perf_counter() - t0) / steps_per_timing)
    return best


def _plans(name: str, spec: tuple[str, dict[str, Any]], clusters: list[Any], *, abstract: bool,
           log: Callable[[str], None]) -> tuple[Any, list[Any]]:
    """Build the case and plan it as one SPMD program over all devices of each cluster."""
    import autopar

    step, args = _build(spec, abstract=abstract)
    n = clusters[0].num_devices
    opts = {"method": autopar.ShardParallel(mesh_shape=(n,)), "batch_argnums": 1, "donate_argnums": 0}
    log(f"{name}: planning")
    return (step, args), [autopar.plan(step, *args, cluster=c, **opts) for c in clusters]


def measure_case(name: str, spec: tuple[str, dict[str, Any]], *, profile: str | None, steps: int,
                 log: Callable[[str], None]) -> Record:
    import jax

    import autopar

    clusters = [autopar.ClusterSpec.local()] + ([] if profile is None else [autopar.ClusterSpec.local(profile)])
    (step, (state, batch)), plans = _plans(name, spec, clusters, abstract=False, log=log)
    plan = plans[0]
    log(f"{name}: auditing (compiles the emitted program)")
    report = autopar.audit(step, state, batch, plan=plan, batch_argnums=1, donate_argnums=0)
    log(f"{name}: timing the emitted program")
    pfn = autopar.parallelize(step, plan=plan, batch_argnums=(1,), donate_argnums=(0,))
    measured = best_step_time(pfn, jax.tree.map(lambda x: x.copy(), state), batch, steps)
    log(f"{name}: timing jax.jit")
    jitted = best_step_time(jax.jit(step, donate_argnums=0), jax.tree.map(lambda x: x.copy(), state), batch, steps)
    est = plan.estimate
    d0 = jax.devices()[0]
    return Record(name, d0.platform, getattr(d0, "device_kind", d0.platform), len(jax.devices()),
                  est.step_time_s, None if profile is None else plans[1].estimate.step_time_s, measured, jitted,
                  report.predicted.peak_memory_bytes, report.compiled.peak_memory_bytes, est.flops,
                  est.compute_time_s, est.comm_time_s)


def replay_case(recorded: dict[str, Any], *, profile: str | None, log: Callable[[str], None]) -> Record:
    """Re-predict a recorded measurement with the current cost model, abstractly (no devices needed): the
    cluster is the recorded device's catalog entry (and the profile's figures), the times are the recording's."""
    from autopar.cost_models.calibration import catalog_node, cluster_from_profile, load_profile

    name, n = recorded["case"], int(recorded["devices"])
    known = {**GPU_CASES, **TINY_CASES}
    if name not in known:
        raise ValueError(f"recorded case {name!r} is not one of this script's cases ({', '.join(known)})")
    clusters = [catalog_node(recorded["platform"], recorded["device_kind"], n)]
    if profile is not None:
        clusters.append(cluster_from_profile(load_profile(profile), where=profile, num_devices=n))
    _, plans = _plans(name, known[name], clusters, abstract=True, log=log)
    est = plans[0].estimate
    return Record(name, recorded["platform"], recorded["device_kind"], n, est.step_time_s,
                  None if profile is None else plans[1].estimate.step_time_s, recorded["measured_step_s"],
                  recorded["jit_step_s"], est.peak_memory_bytes, recorded["compiled_peak_bytes"], est.flops,
                  est.compute_time_s, est.comm_time_s)


def table(records: list[Record]) -> str:
    head = ("| case | device | predicted s (catalog) | predicted s (calibrated) | measured s | jax.jit s | "
            "time pred/meas | memory pred/XLA | achieved TFLOP/s |")
    rows = [head, "|" + "---|" * 9]
    for r in records:
        cal = "-" if r.predicted_step_calibrated_s is None else (
            f"{r.predicted_step_calibrated_s:.4f} ({r.predicted_step_calibrated_s / r.measured_step_s:.2f}x)")
        rows.append(f"| {r.case} | {r.device_kind} x {r.devices} | {r.predicted_step_s:.4f} | {cal} | "
                    f"{r.measured_step_s:.4f} | {r.jit_step_s:.4f} | {r.time_ratio:.2f} | {r.memory_ratio:.3f} | "
                    f"{r.flops / r.measured_step_s / 1e12:.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", help="calibration profile of these devices (autopar calibrate --out ...)")
    ap.add_argument("--cases", default="gpu", help="gpu, tiny, or comma-separated case names (default: gpu)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per program, best kept (default: 5)")
    ap.add_argument("--json", help="write the records here (rewritten after each case)")
    ap.add_argument("--replay", metavar="RECORDS.json",
                    help="re-predict these recorded measurements with the current cost model (no devices needed)")
    ap.add_argument("--cache", help="jax persistent compilation cache directory (the audit's compile and the "
                                    "run's then share one)")
    args = ap.parse_args(argv)
    if args.cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", args.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if args.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}")
    known = {**GPU_CASES, **TINY_CASES}
    names = {"gpu": list(GPU_CASES), "tiny": list(TINY_CASES)}.get(args.cases, args.cases.split(","))
    unknown = [c for c in names if c not in known]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {', '.join(known)} (or 'gpu', 'tiny')")

    def log(m: str) -> None:
        print(f"  {m}", file=sys.stderr, flush=True)

    if args.replay:
        with open(args.replay) as f:
            recorded = {r["case"]: r for r in json.load(f)}
        names = [c for c in recorded if args.cases in ("gpu", "tiny") or c in names]
    records, failed = [], []
    for name in names:
        try:
            records.append(replay_case(recorded[name], profile=args.profile, log=log) if args.replay else
                           measure_case(name, known[name], profile=args.profile, steps=args.steps, log=log))
        except Exception as e:  # noqa: BLE001 -- one case's failure is reported, the others still run
            failed.append(name)
            print(f"{name}: FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        if records and records[-1].case == name:
            print(table(records[-1:]).splitlines()[-1], flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump([dict(asdict(r), time_ratio=r.time_ratio, memory_ratio=r.memory_ratio)
                               for r in records], f, indent=2)
    print(table(records))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
