"""Plans are data: frozen, JSON-serializable, diffable, deterministic.

A Plan records the method, the logical mesh, the cluster it was planned for, one entry per stage (its mesh,
the sharding of every input and output, the shardings fixed on intermediate values) and the predicted
Estimate. ``docs/plan_format.md`` documents the schema; ``SCHEMA_VERSION`` changes when it does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

SCHEMA_VERSION = 1

Spec = tuple[tuple[str, ...], ...]  # per tensor dimension, the mesh axes splitting it


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mesh_shape": list(self.mesh_shape),
            "axis_names": list(self.axis_names),
            "devices": list(self.devices),
            "input_specs": [[n, _spec_to_json(s)] for n, s in self.input_specs],
            "output_specs": [_spec_to_json(s) for s in self.output_specs],
            "op_specs": [[i, [_spec_to_json(s) for s in ss]] for i, ss in self.op_specs],
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
            estimate=Estimate.from_dict(d["estimate"]))


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

    # ---- serialization ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "method": self.method,
            "method_options": dict(self.method_options),
            "mesh": {"shape": list(self.mesh_shape), "axis_names": list(self.axis_names)},
            "cluster": dict(self.cluster),
            "stages": [s.to_dict() for s in self.stages],
            "estimate": self.estimate.to_dict(),
            "graph_fingerprint": self.graph_fingerprint,
            "search": dict(self.search),
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

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
