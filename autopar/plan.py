"""Plans are data: frozen, JSON-serializable, diffable, deterministic.

A Plan records the method, the logical mesh, the cluster it was planned for, one entry per stage (its mesh,
the sharding of every input and output, the shardings fixed on intermediate values) and the predicted
Estimate. ``docs/plan_format.md`` documents the schema; ``SCHEMA_VERSION`` changes when it does.

Identity: the ``search`` record holds wall-clock timings (``WALL_CLOCK_KEYS``), which differ on every run
even when the plan is the same. They are kept in saved files but are not part of a plan's identity:
``==``, ``hash``, ``Plan.fingerprint()`` and ``to_json(include_timings=False)`` leave them out, so the same
program planned for the same cluster gives equal plans and the same fingerprint on every process.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

SCHEMA_VERSION = 1

Spec = tuple[tuple[str, ...], ...]  # per tensor dimension, the mesh axes splitting it

# Keys, at any depth of ``Plan.search``, whose values are wall-clock measurements (not deterministic). A
# planner that records another timing in ``search`` names its key here, or plans stop comparing equal.
WALL_CLOCK_KEYS: frozenset[str] = frozenset({"search_time_s", "build_time_s", "solve_time_s", "trace_time_s",
                                              "layer_time_s", "dp_time_s", "stage_plan_time_s"})


@dataclass(frozen=True)
class Estimate:
    step_time_s: float
    compute_time_s: float
    comm_time_s: float
    bubble_fraction: float
    flops: float
    mfu: float
    peak_memory_bytes: float                      # per device
    comm_bytes: Mapping[str, float] = field(default_factory=dict)  # per device, by collective kind
    collective_counts: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["comm_bytes"] = dict(sorted(self.comm_bytes.items()))
        d["collective_counts"] = dict(sorted(self.collective_counts.items()))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Estimate":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class StagePlan:
    name: str
    mesh_shape: tuple[int, ...]
    axis_names: tuple[str, ...]
    devices: tuple[int, ...]                      # indices into the device list the plan runs on
    input_specs: tuple[tuple[str, Spec], ...]     # (input name, spec), in flat argument order
    output_specs: tuple[Spec, ...]                # in flat output order
    op_specs: tuple[tuple[int, tuple[Spec, ...]], ...]  # (op id, spec of each output) fixed by the plan
    estimate: Estimate
    operand_specs: tuple[tuple[int, int, Spec], ...] = ()  # (op id, operand index, spec it is resharded to)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mesh_shape": list(self.mesh_shape),
            "axis_names": list(self.axis_names),
            "devices": list(self.devices),
            "input_specs": [[n, _spec_to_json(s)] for n, s in self.input_specs],
            "output_specs": [_spec_to_json(s) for s in self.output_specs],
            "op_specs": [[i, [_spec_to_json(s) for s in ss]] for i, ss in self.op_specs],
            "operand_specs": [[i, k, _spec_to_json(s)] for i, k, s in self.operand_specs],
            "estimate": self.estimate.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StagePlan":
        return cls(
            name=d["name"], mesh_shape=tuple(d["mesh_shape"]), axis_names=tuple(d["axis_names"]),
            devices=tuple(d["devices"]),
            input_specs=tuple((n, _spec_from_json(s)) for n, s in d["input_specs"]),
            output_specs=tuple(_spec_from_json(s) for s in d["output_specs"]),
            op_specs=tuple((int(i), tuple(_spec_from_json(s) for s in ss)) for i, ss in d["op_specs"]),
            estimate=Estimate.from_dict(d["estimate"]),
            operand_specs=tuple((int(i), int(k), _spec_from_json(s)) for i, k, s in d.get("operand_specs", ())))


@dataclass(frozen=True)
class Plan:
    method: str
    method_options: Mapping[str, Any]
    mesh_shape: tuple[int, ...]
    axis_names: tuple[str, ...]
    cluster: Mapping[str, Any]
    stages: tuple[StagePlan, ...]
    estimate: Estimate
    graph_fingerprint: str
    search: Mapping[str, Any] = field(default_factory=dict)   # search time, ILP size, solver, candidates
    schema_version: int = SCHEMA_VERSION

    # ---- identity -----------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return self.canonical_json() == other.canonical_json()

    def __hash__(self) -> int:
        return hash(self.canonical_json())

    def canonical_json(self) -> str:
        """The plan without its wall-clock timings as compact JSON with sorted keys: the text that ``==``
        compares and ``fingerprint`` hashes (tuples and lists, as after a save and load, read the same)."""
        return json.dumps(self.to_dict(include_timings=False), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        """16 hex digits of a SHA-256 over ``canonical_json()``: the same on every process and run for the
        same plan; a different value means a different plan."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    # ---- serialization ----------------------------------------------------------------------------
    def to_dict(self, include_timings: bool = True) -> dict[str, Any]:
        """The schema of ``docs/plan_format.md``; ``include_timings=False`` drops ``WALL_CLOCK_KEYS`` from
        ``search`` (what is left is deterministic)."""
        search = dict(self.search) if include_timings else _without_timings(self.search)
        return {
            "schema_version": self.schema_version,
            "method": self.method,
            "method_options": dict(self.method_options),
            "mesh": {"shape": list(self.mesh_shape), "axis_names": list(self.axis_names)},
            "cluster": dict(self.cluster),
            "stages": [s.to_dict() for s in self.stages],
            "estimate": self.estimate.to_dict(),
            "graph_fingerprint": self.graph_fingerprint,
            "search": search,
        }

    def to_json(self, indent: int | None = 1, include_timings: bool = True) -> str:
        """``to_dict`` as JSON; with ``include_timings=False`` the same plan gives the same text everywhere."""
        return json.dumps(self.to_dict(include_timings=include_timings), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Plan":
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"plan schema_version {version!r} is not supported (this autopar reads "
                             f"{SCHEMA_VERSION}); re-plan with this version")
        return cls(method=d["method"], method_options=d.get("method_options", {}),
                   mesh_shape=tuple(d["mesh"]["shape"]), axis_names=tuple(d["mesh"]["axis_names"]),
                   cluster=d.get("cluster", {}), stages=tuple(StagePlan.from_dict(s) for s in d["stages"]),
                   estimate=Estimate.from_dict(d["estimate"]), graph_fingerprint=d["graph_fingerprint"],
                   search=d.get("search", {}), schema_version=version)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"plan file {p} does not exist")
        return cls.from_json(p.read_text())

    def summary(self, max_inputs: int = 12) -> str:
        """Readable text: the estimate, the search, and the sharding of the first ``max_inputs`` inputs."""
        from autopar.plan_summary import plan_summary

        return plan_summary(self, max_inputs=max_inputs)


def _spec_to_json(spec: Spec) -> list[list[str]]:
    return [list(axes) for axes in spec]


def _spec_from_json(spec: list[list[str]]) -> Spec:
    return tuple(tuple(axes) for axes in spec)


def _without_timings(value: Any) -> Any:
    """A copy of ``value`` (nested dicts and lists) without any ``WALL_CLOCK_KEYS`` entry."""
    if isinstance(value, Mapping):
        return {k: _without_timings(v) for k, v in value.items() if k not in WALL_CLOCK_KEYS}
    if isinstance(value, (list, tuple)):
        return [_without_timings(v) for v in value]
    return value
