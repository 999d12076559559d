"""Benchmark suites: which train steps to plan, for which cluster, with which method and baselines.

Consumes: a suite name (``"ci"``, ``"full"``: the TOML files in ``bench/suites/``) or the path of a user's
suite file (TOML or JSON, same schema). Produces: a frozen ``Suite`` of ``Case``s. Refuses: unknown keys,
missing ``name``/``model``, bad methods or clusters, with a ValueError naming the field and the fix.

Suite file schema (TOML shown; JSON takes the same keys)::

    name = "my-suite"
    [defaults]                      # optional; every case key may be given here
    cluster = "p3.16xlarge"         # a ClusterSpec preset, or a cluster file (.toml/.json)
    nodes = 1
    baselines = ["data", "zero3", "manual3d"]

    [[case]]
    name = "my-gpt"                 # unique; the key of the regression gate
    model = "mypkg.models:my_gpt"   # a factory ``f(**args) -> (step_fn, (state, batch))`` (bench.models style)
    args = { batch_size = 16 }      # keyword arguments of the factory (abstract=True is added if accepted)
    gpus = 4                        # optional: fewer devices than a whole node (one node's first gpus)
    method = { name = "shard", mesh_shape = [8] }   # or "auto", "data", "zero3", "pipeshard", ...
    alpa = "gpt_15b_32"             # optional: the published Alpa plan to compare with (bench.baselines)
    donate_argnums = [0]            # optional: arguments the step overwrites (its train state), for every plan
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from autopar.cost_models.cluster import read_description

SUITES_DIR = Path(__file__).resolve().parent / "suites"
BUILTIN_SUITES = ("ci", "full")
BASELINE_KINDS = ("data", "zero3", "manual3d", "alpa")
CASE_KEYS = {"name", "model", "args", "cluster", "nodes", "gpus", "method", "baselines", "alpa", "family",
             "note", "donate_argnums"}


@dataclass(frozen=True)
class Case:
    """One benchmark case: plan ``model(**args)`` on ``cluster`` x ``nodes`` (or ``gpus`` of one node)."""

    name: str
    model: str
    args: Mapping[str, Any] = field(default_factory=dict)
    cluster: str = "p3.16xlarge"
    nodes: int = 1
    gpus: int | None = None
    method: Any = "auto"                      # a method spec (see ``method_from_spec``)
    baselines: tuple[str, ...] = ("data", "zero3", "manual3d")
    alpa: str | None = None
    family: str = ""                          # groups cases for scaling plots (e.g. "gpt")
    note: str = ""
    donate_argnums: tuple[int, ...] = ()      # arguments the step overwrites (its train state: 0)

    def describe_cluster(self) -> str:
        if self.gpus is not None:
            return f"{self.cluster} x {self.gpus} GPU"
        return f"{self.cluster} x {self.nodes} node" + ("s" if self.nodes > 1 else "")


@dataclass(frozen=True)
class Suite:
    name: str
    cases: tuple[Case, ...]
    source: str = ""

    def select(self, names: list[str] | None) -> "Suite":
        """Only the named cases (in suite order); unknown names raise ValueError listing the known ones."""
        if not names:
            return self
        known = {c.name for c in self.cases}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"--case {', '.join(unknown)}: not in suite {self.name!r}; cases: "
                             f"{', '.join(c.name for c in self.cases)}")
        return Suite(self.name, tuple(c for c in self.cases if c.name in names), self.source)


def method_from_spec(spec: Any) -> Any:
    """An ``autopar`` method object from a suite's method spec.

    Accepted: a method object; a name (``"auto"``, ``"shard"``, ``"data"``, ``"zero3"``, ``"pipeshard"``);
    a table ``{name = ..., <options>}`` whose name is one of those or ``"manual3d"``/``"zero"``.
    """
    import autopar
    from autopar.methods import Method, resolve_method

    if isinstance(spec, Method):
        return spec
    if isinstance(spec, str):
        return resolve_method(spec)
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"method {spec!r}: give a name ('auto', 'shard', 'data', 'zero3', 'pipeshard') or a "
                         "table such as {name = 'shard', mesh_shape = [2, 4]}")
    opts = {k: (tuple(v) if isinstance(v, list) and k == "mesh_shape" else v) for k, v in spec.items()
            if k != "name"}
    table = {"auto": autopar.Auto, "shard": autopar.ShardParallel, "data": autopar.DataParallel,
             "zero": autopar.ZeroParallel, "zero3": autopar.ZeroParallel, "pipeshard": autopar.PipeshardParallel,
             "manual3d": autopar.Manual3D}
    cls = table.get(spec["name"])
    if cls is None:
        raise ValueError(f"method name {spec['name']!r}: use one of {', '.join(table)}")
    try:
        return cls(**opts)
    except TypeError as e:
        raise ValueError(f"method {dict(spec)!r}: {e}; see autopar/methods.py for the options of "
                         f"{cls.__name__}") from None


def method_label(spec: Any) -> str:
    """Short text for a method spec (tables and records)."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        opts = ",".join(f"{k}={'x'.join(map(str, v)) if isinstance(v, list) else v}"
                        for k, v in spec.items() if k != "name")
        return f"{spec.get('name')}({opts})" if opts else str(spec.get("name"))
    return type(spec).__name__


def _case_from_dict(d: Mapping[str, Any], defaults: Mapping[str, Any], where: str) -> Case:
    merged = {**defaults, **d}
    unknown = set(merged) - CASE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(CASE_KEYS)}")
    for key in ("name", "model"):
        if not isinstance(merged.get(key), str) or not merged[key]:
            raise ValueError(f"{where}: '{key}' is required and must be a non-empty string")
    if ":" not in merged["model"] and "." in merged["model"]:
        raise ValueError(f"{where}: model {merged['model']!r}: write 'module:function', e.g. "
                         "'bench.models.gpt:gpt_350m'")
    args = merged.get("args", {})
    if not isinstance(args, Mapping):
        raise ValueError(f"{where}: 'args' must be a table of keyword arguments, got {type(args).__name__}")
    nodes = merged.get("nodes", 1)
    gpus = merged.get("gpus")
    if not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"{where}: nodes={nodes!r} must be an integer >= 1")
    if gpus is not None and (not isinstance(gpus, int) or gpus < 1 or nodes != 1):
        raise ValueError(f"{where}: gpus={gpus!r} must be an integer >= 1 and only used with nodes = 1")
    baselines = tuple(merged.get("baselines", Case.baselines))
    bad = [b for b in baselines if b not in BASELINE_KINDS]
    if bad:
        raise ValueError(f"{where}: baselines {bad} unknown; use any of {list(BASELINE_KINDS)}")
    method = merged.get("method", "auto")
    method_from_spec(method)   # validate early
    donate = merged.get("donate_argnums", [])
    if not isinstance(donate, list) or not all(isinstance(i, int) and i >= 0 for i in donate):
        raise ValueError(f"{where}: donate_argnums={donate!r} must be a list of argument positions, e.g. [0]")
    return Case(name=merged["name"], model=merged["model"], args=dict(args),
                cluster=str(merged.get("cluster", Case.cluster)), nodes=nodes, gpus=gpus, method=method,
                baselines=baselines, alpa=merged.get("alpa"), family=str(merged.get("family", "")),
                note=str(merged.get("note", "")), donate_argnums=tuple(donate))


def suite_from_dict(d: Mapping[str, Any], where: str = "suite") -> Suite:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: top level must be a table/object")
    cases = d.get("case", d.get("cases"))
    if not isinstance(cases, list) or not cases:
        raise ValueError(f"{where}: no cases; add [[case]] tables (TOML) or a \"cases\" list (JSON)")
    defaults = d.get("defaults", {})
    out = tuple(_case_from_dict(c, defaults, f"{where}: case {i} ({c.get('name', '?')})")
                for i, c in enumerate(cases))
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{where}: case names must be unique; repeated: {dup}")
    return Suite(str(d.get("name", Path(where).stem)), out, where)


def load_suite(name_or_path: str | Path) -> Suite:
    """A built-in suite (``"ci"``, ``"full"``) or a suite file (``.toml`` / ``.json``)."""
    p = Path(name_or_path)
    if str(name_or_path) in BUILTIN_SUITES:
        p = SUITES_DIR / f"{name_or_path}.toml"
    elif p.suffix.lower() not in (".toml", ".json"):
        raise ValueError(f"--suite {name_or_path!s}: use {' or '.join(BUILTIN_SUITES)} or a .toml/.json suite file")
    return suite_from_dict(read_description(p, "suite file"), str(p))


def cluster_for(case: Case) -> Any:
    """The ClusterSpec of a case: a preset or cluster file with ``nodes`` nodes, cut to ``gpus`` devices."""
    import dataclasses

    from autopar.cost_models.cluster import ClusterSpec

    if Path(case.cluster).suffix.lower() in (".toml", ".json"):
        cluster = ClusterSpec.from_file(case.cluster)
    else:
        cluster = ClusterSpec.preset(case.cluster, nodes=case.nodes)
    if case.gpus is None:
        return cluster
    if case.gpus > cluster.devices_per_node:
        raise ValueError(f"case {case.name}: gpus={case.gpus} exceeds the {cluster.devices_per_node} devices of "
                         f"one {case.cluster} node; use nodes = {-(-case.gpus // cluster.devices_per_node)}")
    links = tuple(dataclasses.replace(l, span=min(l.span, case.gpus)) for l in cluster.links)
    return dataclasses.replace(cluster, devices_per_node=case.gpus, links=links)
