"""Per-op timing: each distinct matmul and convolution of a bench model, measured on the local device and set
against the compute model's roofline for it.

    python -m bench.op_timing export --cases gpt-350m-fp32-b8,wresnet-250m-fp32-b32 --out ops.json  # anywhere
    python -m bench.op_timing time ops.json --out timed.json                                         # on the device
    python -m bench.op_timing compare timed.json                                                     # anywhere

``export`` traces the cases of ``bench.step_fidelity`` abstractly and writes every distinct ``dot_general`` /
``conv_general_dilated`` (shapes, dtypes, parameters, how often the step runs it). ``time`` runs each alone
with random operands (jitted; ``--repeats`` calls dispatched back to back and waited for once, best of three
such batches, per call) and adds the seconds. ``compare`` prints, per op family
and dtype, measured seconds (weighted by count) against the roofline of the recorded device's catalog entry,
and the efficiency that would make them agree: the figures ``cost_models.compute``'s table is set from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from typing import Any

PRIMS = ("dot_general", "conv_general_dilated")


def _params_json(prim: str, p: dict[str, Any]) -> dict[str, Any]:
    def prec(v: Any) -> Any:
        if v is None:
            return None
        return [str(x).split(".")[-1] for x in (v if isinstance(v, (tuple, list)) else (v, v))]

    out: dict[str, Any] = {"precision": prec(p.get("precision")),
                           "preferred_element_type": None if p.get("preferred_element_type") is None
                           else str(p["preferred_element_type"])}
    if prim == "dot_general":
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        out["dimension_numbers"] = [[list(lc), list(rc)], [list(lb), list(rb)]]
    else:
        dn = p["dimension_numbers"]
        out.update(window_strides=list(p["window_strides"]), padding=[list(x) for x in p["padding"]],
                   lhs_dilation=list(p["lhs_dilation"]), rhs_dilation=list(p["rhs_dilation"]),
                   dimension_numbers=[list(dn.lhs_spec), list(dn.rhs_spec), list(dn.out_spec)],
                   feature_group_count=p["feature_group_count"], batch_group_count=p["batch_group_count"])
    return out


def export(cases: list[str]) -> list[dict[str, Any]]:
    import autopar
    from bench.step_fidelity import GPU_CASES, TINY_CASES, _build

    known = {**GPU_CASES, **TINY_CASES}
    ops: dict[str, dict[str, Any]] = {}
    for case in cases:
        step, args = _build(known[case], abstract=True)
        g = autopar.trace(step, *args, batch_argnums=1)
        for op in g.ops:
            if op.primitive not in PRIMS:
                continue
            rec = {"primitive": op.primitive, "case": case,
                   "operands": [[list(g.tensors[t].shape), g.tensors[t].dtype.name] for t in op.inputs],
                   "params": _params_json(op.primitive, dict(op.params))}
            key = json.dumps([rec["primitive"], rec["operands"], rec["params"], case], sort_keys=True)
            ops.setdefault(key, dict(rec, count=0))["count"] += 1
    return list(ops.values())


def _fn(rec: dict[str, Any]) -> Any:
    import jax
    import jax.numpy as jnp

    p = rec["params"]
    precision = None if p["precision"] is None else tuple(jax.lax.Precision[x] for x in p["precision"])
    pet = None if p["preferred_element_type"] is None else jnp.dtype(p["preferred_element_type"])
    if rec["primitive"] == "dot_general":
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        dn = ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb)))
        return lambda a, b: jax.lax.dot_general(a, b, dn, precision=precision, preferred_element_type=pet)
    lhs, rhs, out = (tuple(x) for x in p["dimension_numbers"])
    dn = jax.lax.ConvDimensionNumbers(lhs, rhs, out)
    return lambda a, b: jax.lax.conv_general_dilated(
        a, b, tuple(p["window_strides"]), [tuple(x) for x in p["padding"]], tuple(p["lhs_dilation"]),
        tuple(p["rhs_dilation"]), dn, p["feature_group_count"], p["batch_group_count"], precision=precision,
        preferred_element_type=pet)


def time_ops(records: list[dict[str, Any]], repeats: int, out_path: str | None = None) -> list[dict[str, Any]]:
    """Time each record; with ``out_path``, the records timed so far are rewritten there every 10 ops."""
    import jax
    import jax.numpy as jnp

    d0 = jax.devices()[0]
    key = jax.random.key(0)
    out = []
    for i, rec in enumerate(records):
        operands = [jax.random.normal(jax.random.fold_in(key, 2 * i + j), tuple(s), jnp.dtype(dt))
                    for j, (s, dt) in enumerate(rec["operands"])]
        f = jax.jit(_fn(rec))
        jax.block_until_ready(f(*operands))
        best = float("inf")
        for _ in range(3):   # `repeats` calls dispatched back to back, one wait: the host's round trip per call
            t0 = time.perf_counter()        # (0.1-0.3 ms on a GPU VM) would swamp sub-millisecond kernels
            jax.block_until_ready([f(*operands) for _ in range(repeats)])
            best = min(best, (time.perf_counter() - t0) / repeats)
        out.append(dict(rec, seconds=best, platform=d0.platform, device_kind=getattr(d0, "device_kind", "")))
        if out_path and (len(out) % 10 == 0 or len(out) == len(records)):
            with open(out_path, "w") as f:
                json.dump(out, f)
    return out


def _roofline(rec: dict[str, Any], device: Any) -> tuple[float, float]:
    """(flops, predicted seconds) of one record under the compute model on ``device``."""
    import jax

    import autopar
    from autopar.cost_models.compute import op_cost

    shapes = [jax.ShapeDtypeStruct(tuple(s), dt) for s, dt in rec["operands"]]
    g = autopar.trace(_fn(rec), *shapes)
    (op,) = [o for o in g.ops if o.primitive == rec["primitive"]]
    c = op_cost(g, op, device)
    return c.flops, c.time


def compare(records: list[dict[str, Any]]) -> str:
    from autopar.cost_models.calibration import catalog_name_for
    from autopar.cost_models.hardware import device

    dev = device(catalog_name_for(records[0]["platform"], records[0]["device_kind"]))
    groups: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    for rec in records:
        flops, pred = _roofline(rec, dev)
        gkey = (rec["primitive"], rec["operands"][0][1])
        acc = groups[gkey]
        acc[0] += rec["count"] * flops
        acc[1] += rec["count"] * rec["seconds"]
        acc[2] += rec["count"] * pred
        acc[3] += rec["count"]
    rows = [f"device: {dev.name} (catalog); ops timed alone, weighted by how often one step runs them",
            "| op | dtype | ops per step | measured s | predicted s | pred/meas | achieved TFLOP/s |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for (prim, dt), (flops, meas, pred, n) in sorted(groups.items()):
        rows.append(f"| {prim} | {dt} | {n} | {meas:.4f} | {pred:.4f} | {pred / meas:.2f} | "
                    f"{flops / meas / 1e12:.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write the distinct matmuls/convolutions of some cases")
    e.add_argument("--cases", required=True, help="comma-separated bench.step_fidelity case names")
    e.add_argument("--out", required=True)
    t = sub.add_parser("time", help="time each exported op on the local device")
    t.add_argument("ops")
    t.add_argument("--out", required=True)
    t.add_argument("--repeats", type=int, default=20)
    c = sub.add_parser("compare", help="measured against the roofline, per op family and dtype")
    c.add_argument("timed")
    args = ap.parse_args(argv)
    if args.cmd == "export":
        recs = export(args.cases.split(","))
        print(f"{len(recs)} distinct ops ({sum(r['count'] for r in recs)} per step in all)")
        with open(args.out, "w") as f:
            json.dump(recs, f)
    elif args.cmd == "time":
        with open(args.ops) as f:
            recs = time_ops(json.load(f), args.repeats, args.out)
        print(f"timed {len(recs)} ops on {recs[0]['device_kind'] if recs else '-'}")
    else:
        with open(args.timed) as f:
            print(compare(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
