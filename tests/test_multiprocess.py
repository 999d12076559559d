"""``autopar.parallelize`` across processes: 2 ``jax.distributed`` processes x 4 fake CPU devices (gloo).

Each case launches tests/multiprocess_worker.py twice (ranks 0 and 1), which plan and run the same small MLP
train step (Adam, fp32) for two steps and write the losses, the final params and the plan's JSON. Checked:
both ranks planned the same plan (byte-identical JSON once the wall-clock timings in ``search`` are removed),
the plan spans all 8 devices of both processes, and the numbers equal ``jax.jit(step)`` run here on one device.
A hung worker fails the test after ``TIMEOUT_S`` instead of blocking CI; workers are always killed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

import autopar

from tests import multiprocess_worker as worker

TIMEOUT_S = 240
MAX_REL_ERROR = 1e-5
WORKER = Path(__file__).with_name("multiprocess_worker.py")
# Wall-clock measurements inside ``Plan.search``: they differ run to run, everything else must not.

CASES = {"shard": (worker.NUM_PROCESSES, worker.LOCAL_DEVICES),
         "data": (worker.NUM_PROCESSES * worker.LOCAL_DEVICES,)}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={worker.LOCAL_DEVICES}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def _launch(method: str, tmp: Path) -> list[dict[str, Any]]:
    """Run both ranks; their result files, in rank order. Fails (never hangs) on error or timeout."""
    port = _free_port()
    procs, logs, outs = [], [], []
    try:
        for rank in range(worker.NUM_PROCESSES):
            out, log = tmp / f"rank{rank}.json", tmp / f"rank{rank}.log"
            cmd = [sys.executable, str(WORKER), "--rank", str(rank), "--port", str(port), "--method", method,
                   "--out", str(out)]
            with open(log, "w") as f:
                procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_worker_env(),
                                              cwd=WORKER.parent.parent))
            logs.append(log)
            outs.append(out)
        deadline = time.monotonic() + TIMEOUT_S   # one budget for both ranks, not one each
        for rank, p in enumerate(procs):
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"rank {rank} did not finish within {TIMEOUT_S} s (hang?); log tail:\n"
                            f"{_tail(logs[rank])}")
        for rank, p in enumerate(procs):
            assert p.returncode == 0, f"rank {rank} exited with {p.returncode}; log tail:\n{_tail(logs[rank])}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    return [json.loads(o.read_text()) for o in outs]


def _deterministic(plan_json: str) -> str:
    """The plan's canonical JSON: everything but the wall-clock timings (``Plan.canonical_json``)."""
    return autopar.Plan.from_json(plan_json).canonical_json()


def _reference() -> dict[str, Any]:
    """The same two steps with ``jax.jit`` on one device of this process."""
    step, _ = worker.make_step()
    state, batch = worker.make_inputs()
    dev = jax.devices()[0]
    state, batch = jax.device_put((state, batch), dev)
    return worker.run_steps(jax.jit(step), state, batch, np.asarray)


def _rel_error(got: Any, want: Any) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return _reference()


@pytest.mark.parametrize("method", sorted(CASES))
def test_two_processes_match_single_process(method: str, tmp_path: Path, reference: dict[str, Any]) -> None:
    results = _launch(method, tmp_path)
    for rank, r in enumerate(results):
        assert r["rank"] == rank and r["process_count"] == 2 and r["device_count"] == 8, r

    plans = [_deterministic(r["plan"]) for r in results]
    assert plans[0] == plans[1], "the two processes planned different plans"
    plan = json.loads(plans[0])
    assert tuple(plan["mesh"]["shape"]) == CASES[method]
    assert plan["stages"][0]["devices"] == list(range(8))

    # The steps did something: the loss moved, so equality with the reference is not vacuous.
    assert abs(reference["losses"][1] - reference["losses"][0]) > 1e-3
    for rank, r in enumerate(results):
        assert len(r["losses"]) == len(reference["losses"]) == worker.STEPS
        err = _rel_error(r["losses"], reference["losses"])
        assert err <= MAX_REL_ERROR, f"rank {rank} losses {r['losses']} vs {reference['losses']} ({err:.2e})"
        assert sorted(r["params"]) == sorted(reference["params"])
        for name, want in reference["params"].items():
            err = _rel_error(r["params"][name], want)
            assert err <= MAX_REL_ERROR, f"rank {rank} param {name}: relative error {err:.2e}"
