"""Tracing speed and memory on big abstract GPT training steps (acceptance of the foundation issue).

Run:  python -m bench.trace_speed            # 48-layer h=8192 and 128-layer h=25600 GPT steps with Adam
      python -m bench.trace_speed --quick    # the 48-layer case only

Each case runs in a fresh subprocess so its peak RSS is its own. Prints equations, ops, trace time, peak RSS,
Graph.flops() against the closed form 72·B·s·l·h²·(1 + s/6h + V/12lh), and checks the targets
(< 10 s / < 2 GB for 48 layers; < 30 s for 128 layers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = {
    "gpt-48l-h8192": dict(hidden=8192, layers=48, heads=64, seq=1024, vocab=51200, batch=1024, limit_s=10.0),
    "gpt-128l-h25600": dict(hidden=25600, layers=128, heads=160, seq=1024, vocab=51200, batch=1024, limit_s=30.0),
}
RSS_LIMIT = 2 * 1024**3


def closed_form_flops(hidden: int, layers: int, seq: int, vocab: int, batch: int) -> float:
    h, l, s, v, b = hidden, layers, seq, vocab, batch
    return 72.0 * b * s * l * h * h * (1 + s / (6 * h) + v / (12 * l * h))


def _child(name: str) -> None:
    import time

    import jax
    import psutil

    import autopar
    from bench.models.gpt import gpt

    cfg = {k: v for k, v in CASES[name].items() if k != "limit_s"}
    fn, args = gpt(abstract=True, batch_size=cfg["batch"], hidden=cfg["hidden"], layers=cfg["layers"],
                   heads=cfg["heads"], seq=cfg["seq"], vocab=cfg["vocab"])
    t0 = time.perf_counter()
    graph = autopar.trace(fn, *args, batch_argnums=1)
    elapsed = time.perf_counter() - t0
    rss = psutil.Process().memory_info().rss
    flops = graph.flops()
    ref = closed_form_flops(cfg["hidden"], cfg["layers"], cfg["seq"], cfg["vocab"], cfg["batch"])
    print(json.dumps(dict(case=name, ops=graph.num_ops(), tensors=len(graph.tensors), trace_s=elapsed,
                          rss_bytes=rss, flops=flops, closed_form=ref, jax=jax.__version__)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the 48-layer case")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        _child(a.child)
        return 0
    names = ["gpt-48l-h8192"] if a.quick else list(CASES)
    ok = True
    print(f"{'case':<18} {'ops':>7} {'trace s':>8} {'limit':>6} {'RSS GiB':>8} {'flops/closed':>12}")
    for name in names:
        proc = subprocess.run([sys.executable, "-m", "bench.trace_speed", "--child", name],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            return 1
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        ratio = r["flops"] / r["closed_form"]
        limit = CASES[name]["limit_s"]
        good = r["trace_s"] < limit and abs(ratio - 1) < 0.10 and (name != "gpt-48l-h8192" or r["rss_bytes"] < RSS_LIMIT)
        ok &= good
        print(f"{name:<18} {r['ops']:>7} {r['trace_s']:>8.2f} {limit:>6.0f} {r['rss_bytes'] / 1024**3:>8.2f} "
              f"{ratio:>12.4f} {'ok' if good else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
