"""Plan identity: the same plan is equal, hashes alike and has one fingerprint on every process.

``Plan.search`` records wall-clock timings (``autopar.plan.WALL_CLOCK_KEYS``), which differ on every run; they
stay in saved files but are no part of a plan's identity (``==``, ``hash``, ``Plan.fingerprint()``,
``to_json(include_timings=False)``). Checked on hand-built plans (timings at every depth of ``search``,
a changed spec, a JSON round trip, a schema-1 file as the previous code wrote it) and end to end: two
``autopar.plan`` calls in two Python processes with different hash seeds give the same fingerprint and the
same JSON without timings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


from autopar.plan import SCHEMA_VERSION, WALL_CLOCK_KEYS, Estimate, Plan, StagePlan

REPO = Path(__file__).resolve().parents[1]


def _plan(search: dict[str, Any], spec: tuple[tuple[str, ...], ...] = (("x",), ())) -> Plan:
    est = Estimate(step_time_s=1e-3, compute_time_s=8e-4, comm_time_s=2e-4, bubble_fraction=0.0, flops=1e9,
                   mfu=0.5, peak_memory_bytes=1e6, comm_bytes={"all-reduce": 4096.0},
                   collective_counts={"all-reduce": 1})
    stage = StagePlan(name="stage0", mesh_shape=(2, 4), axis_names=("x", "y"), devices=tuple(range(8)),
                      input_specs=(("[0]", spec), ("[1]", ((), ()))), output_specs=((), spec),
                      op_specs=((3, (spec,)),), estimate=est)
    return Plan(method="shard", method_options={"mesh_shape": [2, 4]}, mesh_shape=(2, 4), axis_names=("x", "y"),
                cluster={"name": "cpu", "nodes": 1}, stages=(stage,), estimate=est,
                graph_fingerprint="0123456789abcdef", search=search)


def _search(t: float) -> dict[str, Any]:
    """A search record like shard_parallel's and pipeshard's, every timing set to ``t``."""
    mesh = {"mesh": [2, 4], "step_time_s": 1e-3, "objective": 1e-3, "status": "optimal", "build_time_s": t,
            "solve_time_s": t}
    return {"search_time_s": t, "solver": "ortools", "meshes": [mesh, {"mesh": [8], "error": "memory"}],
            "ilp": {"nodes": 3, "variables": 12, "status": "optimal"},
            "stages": [{"search_time_s": t, "meshes": [dict(mesh)]}]}


def test_timings_are_not_identity_but_are_saved(tmp_path: Path) -> None:
    a, b = _plan(_search(1.5)), _plan(_search(7.25))
    assert a.to_json() != b.to_json()                          # the saved text differs: timings are recorded
    assert a == b and hash(a) == hash(b) and a.fingerprint() == b.fingerprint()
    assert a.to_json(include_timings=False) == b.to_json(include_timings=False)
    stripped = json.dumps(a.to_dict(include_timings=False))
    assert not any(f'"{k}"' in stripped for k in WALL_CLOCK_KEYS), stripped
    assert '"step_time_s": 0.001' in stripped                  # estimates are not timings: kept
    assert len(a.fingerprint()) == 16 and int(a.fingerprint(), 16) >= 0
    assert a.summary().startswith(f"autopar plan {a.fingerprint()}: method shard")   # the id people see
    a.save(tmp_path / "p.json")
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["search"]["search_time_s"] == 1.5 and saved["search"]["meshes"][0]["solve_time_s"] == 1.5
    assert saved["search"]["stages"][0]["search_time_s"] == 1.5
    loaded = Plan.load(tmp_path / "p.json")
    assert loaded == a and loaded.fingerprint() == a.fingerprint() and loaded.search == a.search


def test_a_different_plan_differs() -> None:
    a = _plan(_search(1.0))
    for other in (_plan(_search(1.0), spec=(("y",), ())),                     # one spec changed
                  dataclasses.replace(a, mesh_shape=(4, 2)),
                  dataclasses.replace(a, estimate=dataclasses.replace(a.estimate, step_time_s=2e-3)),
                  dataclasses.replace(a, search={**a.search, "solver": "pulp"})):   # deterministic search data
        assert other != a and other.fingerprint() != a.fingerprint()
        assert other.to_json(include_timings=False) != a.to_json(include_timings=False)
    assert a != "a plan" and a in {a: 1}


def test_schema_1_file_from_before_still_loads() -> None:
    """The layout is unchanged: a file written before ``include_timings`` existed loads and keeps its times."""
    text = json.dumps({
        "schema_version": 1, "method": "shard", "method_options": {"mesh_shape": None},
        "mesh": {"shape": [8], "axis_names": ["x"]}, "cluster": {"name": "cpu"},
        "stages": [{"name": "stage0", "mesh_shape": [8], "axis_names": ["x"], "devices": list(range(8)),
                    "input_specs": [["[0]", [["x"]]]], "output_specs": [[["x"]]], "op_specs": [[0, [[["x"]]]]],
                    "estimate": {"step_time_s": 1.0, "compute_time_s": 1.0, "comm_time_s": 0.0,
                                 "bubble_fraction": 0.0, "flops": 1.0, "mfu": 0.1, "peak_memory_bytes": 8.0}}],
        "estimate": {"step_time_s": 1.0, "compute_time_s": 1.0, "comm_time_s": 0.0, "bubble_fraction": 0.0,
                     "flops": 1.0, "mfu": 0.1, "peak_memory_bytes": 8.0},
        "graph_fingerprint": "feedfacefeedface", "search": {"search_time_s": 3.0, "solver": "ortools"}})
    plan = Plan.from_json(text)
    assert plan.schema_version == SCHEMA_VERSION == 1 and plan.search["search_time_s"] == 3.0
    assert plan.to_dict(include_timings=False)["search"] == {"solver": "ortools"}
    assert Plan.from_json(plan.to_json()) == plan


# ---- across processes ---------------------------------------------------------------------------------------
_WORKER = """
import json, autopar
from bench.models import MODELS
step, args = MODELS["mlp_tiny"](abstract=True)
plan = autopar.plan(step, *args, cluster="cpu", method=autopar.ShardParallel(mesh_shape=(8,)), batch_argnums=(1,))
print("RESULT " + json.dumps({"fingerprint": plan.fingerprint(), "bare": plan.to_json(include_timings=False),
                              "full": plan.to_json()}))
"""


def _launch(seed: str) -> subprocess.Popen[str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONHASHSEED": seed}   # different set/dict-of-str orders
    return subprocess.Popen([sys.executable, "-c", _WORKER], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    line = [x for x in out.splitlines() if x.startswith("RESULT ")]
    assert line, out[-2000:] + err[-2000:]
    return json.loads(line[-1][len("RESULT "):])


def _paths_differing(a: Any, b: Any, at: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(set(a) | set(b)) for p in _paths_differing(a.get(k), b.get(k), f"{at}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in _paths_differing(x, y, f"{at}[{i}]")]
    return [] if a == b else [at]


def test_two_processes_plan_the_same_plan() -> None:
    procs = [_launch("1"), _launch("2")]
    first, second = (_result(p) for p in procs)
    diff = _paths_differing(json.loads(first["bare"]), json.loads(second["bare"]))
    assert not diff, (f"plans differ across processes at {diff}; a wall-clock field belongs in "
                      f"autopar.plan.WALL_CLOCK_KEYS, anything else is a determinism bug")
    assert first["bare"] == second["bare"] and first["fingerprint"] == second["fingerprint"]
    a, b = Plan.from_json(first["full"]), Plan.from_json(second["full"])
    assert a == b and a.fingerprint() == first["fingerprint"]
    assert "search_time_s" in json.loads(first["full"])["search"]          # the saved form keeps the timings
    assert a.stages[0].mesh_shape == (8,) and a.search["meshes"][0]["status"] == "optimal"
