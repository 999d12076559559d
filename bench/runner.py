"""Run a benchmark suite and gate it against a committed baseline.

Consumes: a ``Suite`` (``bench.suite``). Produces: one JSON-ready record per case (``run_case``): the case's
predicted step time, MFU, peak memory per device and search time, each baseline's outcome and the ratio
``baseline step time / autopar step time`` (> 1: autopar is faster); and, for the gate, the list of
``Violation``s of a run against a baseline document (``check``). Refuses: baseline documents of another
schema (ValueError naming the fix: ``--update``).

Gate rules (per case of the baseline): the case must still plan ("ok" stays "ok"); its predicted step time
and peak memory may not grow by more than ``tolerance`` (1 %); its search time may not grow by more than
``search_factor`` (2x), where times under ``search_floor_s`` (1 s) count as that floor, so sub-second
searches never trip on machine noise. A case missing from the run is a violation; a new case is reported
(``--update`` adds it).
"""

from __future__ import annotations

import inspect
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from bench.baselines import Outcome, evaluate, outcome_text, run_baselines
from bench.suite import Case, Suite, cluster_for, method_from_spec, method_label

BASELINE_SCHEMA = 1
GATED = ("step_time_s", "peak_memory_bytes", "search_time_s")


def build_case(case: Case) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The case's train step and abstract arguments (``abstract=True`` is passed when the factory takes it)."""
    from bench.models import resolve

    factory = resolve(case.model)
    kwargs = dict(case.args)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if "abstract" in params and "abstract" not in kwargs:
        kwargs["abstract"] = True
    try:
        built = factory(**kwargs)
    except TypeError as e:
        raise ValueError(f"case {case.name}: {case.model}(**{kwargs}) failed: {e}; fix the case's args") from None
    if not (isinstance(built, tuple) and len(built) == 2 and callable(built[0])):
        raise ValueError(f"case {case.name}: {case.model} must return (step_fn, args_tuple), got "
                         f"{type(built).__name__}")
    fn, args = built
    return fn, tuple(args)


def batch_size_of(args: tuple[Any, ...]) -> int | None:
    """The leading dimension of the first batch leaf (arguments after the first are the batch)."""
    import jax

    for a in args[1:]:
        for leaf in jax.tree_util.tree_leaves(a):
            shape = getattr(leaf, "shape", ())
            if shape:
                return int(shape[0])
    return None


def run_case(case: Case, *, baselines: bool = True, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Plan one case (its method and, unless ``baselines=False``, its baselines) and return its record."""
    t0 = time.perf_counter()
    fn, args = build_case(case)
    cluster = cluster_for(case)
    log(f"{case.name}: {method_label(case.method)} on {case.describe_cluster()} ({cluster.num_devices} devices)")
    main = evaluate(fn, args, cluster, method_from_spec(case.method), method_label(case.method),
                    donate=case.donate_argnums)
    log(f"  {main.label}: {outcome_text(main)}")
    others: dict[str, Outcome] = {}
    if baselines:
        others = run_baselines(case.baselines, fn, args, cluster, batch_size_of(args), case.alpa,
                               donate=case.donate_argnums, log=log)
    return case_record(case, cluster.num_devices, main, others, time.perf_counter() - t0)


def case_record(case: Case, num_devices: int, main: Outcome, others: Mapping[str, Outcome],
                wall_s: float) -> dict[str, Any]:
    """The JSON-ready record of a case from its own method's outcome and its baselines'."""
    ratios = {k: o.step_time_s / main.step_time_s for k, o in others.items()
              if o.ok and main.ok and o.step_time_s and main.step_time_s}
    rec: dict[str, Any] = {
        "case": case.name, "model": case.model, "args": dict(case.args), "family": case.family,
        "cluster": case.describe_cluster(), "num_devices": num_devices,
        "method": method_label(case.method), **main.to_dict(),
        "baselines": {k: o.to_dict() for k, o in others.items()},
        "speedup_vs": ratios, "wall_s": wall_s,
    }
    rec.pop("label", None)
    return rec


def warm_up() -> None:
    """Pay once, untimed, what the first case's search would otherwise pay: lazily imported planner modules,
    OR-Tools' native SCIP library and jax's tracing machinery (about 1 s in a fresh CI checkout, where the
    gate then read 2.3 s against a 1.1 s baseline for the first case)."""
    import jax
    import jax.numpy as jnp
    from ortools.linear_solver import pywraplp

    import autopar

    pywraplp.Solver.CreateSolver("SCIP")
    x = jax.ShapeDtypeStruct((64, 32), jnp.float32)
    w = jax.ShapeDtypeStruct((32, 32), jnp.float32)
    autopar.plan(lambda w_, x_: jnp.sum(jnp.tanh(x_ @ w_)), w, x, cluster=autopar.ClusterSpec.preset("dgx-a100"),
                 method=autopar.ShardParallel(mesh_shape=(2, 4)), batch_argnums=1)


def run_suite(suite: Suite, *, baselines: bool = True, log: Callable[[str], None] = lambda m: None) -> list[dict[str, Any]]:
    warm_up()
    return [run_case(c, baselines=baselines, log=log) for c in suite.cases]


# ---- baseline documents and the gate -------------------------------------------------------------------
def baseline_document(suite: Suite, records: list[dict[str, Any]]) -> dict[str, Any]:
    import jax

    return {"schema": BASELINE_SCHEMA, "suite": suite.name,
            "note": "regenerate on purpose: autopar bench --suite <suite> --check <this file> --update",
            "recorded_with": {"python": platform.python_version(), "jax": jax.__version__},
            "cases": {r["case"]: r for r in records}}


def write_baseline(path: str | Path, suite: Suite, records: list[dict[str, Any]]) -> None:
    """Write (or merge into) a baseline: cases of this run replace theirs, other cases are kept."""
    p = Path(path)
    doc = baseline_document(suite, records)
    if p.exists():
        old = load_baseline(p)
        doc["cases"] = {**old["cases"], **doc["cases"]}
    p.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def load_baseline(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as e:
        raise ValueError(f"baseline {p}: cannot read it ({e.strerror}); create it with --update") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"baseline {p}: not valid JSON ({e}); regenerate it with --update") from None
    if not isinstance(doc, dict) or doc.get("schema") != BASELINE_SCHEMA or not isinstance(doc.get("cases"), dict):
        raise ValueError(f"baseline {p}: not a schema-{BASELINE_SCHEMA} baseline document; regenerate it with "
                         "--update")
    return doc


@dataclass(frozen=True)
class Violation:
    case: str
    metric: str
    baseline: Any
    now: Any
    rule: str

    def row(self) -> str:
        return f"{self.case:<28} {self.metric:<18} {_fmt(self.baseline):>14} {_fmt(self.now):>14}  {self.rule}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def check(records: list[dict[str, Any]], baseline: Mapping[str, Any], *, tolerance: float = 0.01,
          search_factor: float = 2.0, search_floor_s: float = 1.0,
          cases: list[str] | None = None) -> tuple[list[Violation], list[str]]:
    """Violations of ``records`` against a baseline document, and notes (new cases, improvements).
    ``cases``: only these baseline cases are expected (a run of part of a suite)."""
    now = {r["case"]: r for r in records}
    violations: list[Violation] = []
    notes: list[str] = []
    for name, old in sorted(baseline["cases"].items()):
        if cases is not None and name not in cases:
            continue
        new = now.get(name)
        if new is None:
            violations.append(Violation(name, "case", "present", "missing", "the case is in the baseline but "
                                        "was not run (renamed or removed? regenerate with --update)"))
            continue
        if old.get("status") == "ok" and new.get("status") != "ok":
            violations.append(Violation(name, "status", "ok", new.get("status"), "planned before, fails now"))
            continue
        if old.get("status") != "ok":
            if new.get("status") == "ok":
                notes.append(f"{name}: plans now (was {old.get('status')!r}); --update records it")
            continue
        for metric in ("step_time_s", "peak_memory_bytes"):
            a, b = float(old[metric]), float(new[metric])
            if b > a * (1 + tolerance):
                violations.append(Violation(name, metric, a, b, f"+{(b / a - 1) * 100:.2f}% > {tolerance * 100:g}%"))
            elif b < a * (1 - tolerance):
                notes.append(f"{name}: {metric} improved {a:.6g} -> {b:.6g}; --update records it")
        a = max(float(old.get("search_time_s", 0.0)), search_floor_s)
        b = float(new.get("search_time_s", 0.0))
        if b > search_factor * a:
            violations.append(Violation(name, "search_time_s", float(old.get("search_time_s", 0.0)), b,
                                        f"> {search_factor:g}x max(baseline, {search_floor_s:g} s)"))
    for name in sorted(set(now) - set(baseline["cases"])):
        notes.append(f"{name}: new case, not in the baseline; --update adds it")
    return violations, notes


def format_violations(violations: list[Violation]) -> str:
    head = f"{'case':<28} {'metric':<18} {'baseline':>14} {'now':>14}  rule"
    return "\n".join([head, "-" * len(head)] + [v.row() for v in violations])
