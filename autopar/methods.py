"""Parallelization methods: what the planner may search. Plain frozen option objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Method:
    name = "method"


def _check_microbatches(method: Method, m: int | None) -> None:
    if m is not None and (not isinstance(m, int) or m < 1):
        raise ValueError(f"{type(method).__name__}(num_microbatches={m!r}): give a count >= 1, or None")


@dataclass(frozen=True)
class ShardParallel(Method):
    """Intra-op only: one SPMD program over a logical mesh of all devices.

    ``mesh_shape=None`` tries the factorisations of the device count (1-D, 2-D and 3-D) and keeps the best.
    """

    mesh_shape: tuple[int, ...] | None = None
    num_microbatches: int | None = None
    name = "shard"

    def __post_init__(self) -> None:
        _check_microbatches(self, self.num_microbatches)
        if self.mesh_shape is not None:
            object.__setattr__(self, "mesh_shape", tuple(int(d) for d in self.mesh_shape))
            if any(d < 1 for d in self.mesh_shape):
                raise ValueError(f"mesh_shape {self.mesh_shape} has a non-positive axis")


@dataclass(frozen=True)
class DataParallel(Method):
    """Batch split over every device, parameters and optimizer state replicated (a constraint on the ILP).

    ``num_microbatches=m`` accumulates gradients over m microbatches of the batch (one program per
    microbatch's forward and backward, then one update), as data-parallel training of a large batch does."""

    num_microbatches: int | None = None
    name = "data"

    def __post_init__(self) -> None:
        _check_microbatches(self, self.num_microbatches)


@dataclass(frozen=True)
class ZeroParallel(Method):
    """Data parallelism with state sharding: stage 1 optimizer state, 2 + gradients, 3 + parameters.
    ``num_microbatches``: gradient accumulation, as for ``DataParallel``."""

    stage: int = 3
    num_microbatches: int | None = None
    name = "zero"

    def __post_init__(self) -> None:
        if self.stage not in (1, 2, 3):
            raise ValueError(f"ZeroParallel(stage={self.stage}): stage must be 1, 2 or 3")
        _check_microbatches(self, self.num_microbatches)


@dataclass(frozen=True)
class PipeshardParallel(Method):
    """Pipeline stages on sub-meshes with intra-op sharding inside each stage.

    ``layers``: "auto" (the ``mark_layer_boundary`` markers, else automatic clustering) or a layer count.
    ``stages``: "auto" (searched), a stage count (layers split by balanced flops), or a list with the number
    of layers of each stage. ``submeshes``: devices per stage (default: an equal share, or searched);
    ``logical_meshes``: each stage's mesh shape (default: searched). ``remat``: "auto" (rematerialize a
    stage when memory needs it), True / False, or one bool per stage. ``num_microbatches=None``: searched.
    """

    num_microbatches: int | None = None
    layers: str | int = "auto"
    stages: str | int | Sequence[int] = "auto"
    schedule: str = "1f1b"
    submeshes: Sequence[int] | None = None
    logical_meshes: Sequence[Sequence[int]] | None = None
    remat: str | bool | Sequence[bool] = "auto"
    name = "pipeshard"

    def __post_init__(self) -> None:
        if self.schedule not in ("1f1b", "gpipe"):
            raise ValueError(f"schedule={self.schedule!r}: use '1f1b' or 'gpipe'")
        if self.num_microbatches is not None and self.num_microbatches < 1:
            raise ValueError(f"num_microbatches={self.num_microbatches}: must be >= 1")
        for name in ("stages", "submeshes", "logical_meshes", "remat"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(tuple(x) if isinstance(x, list) else x for x in v))
        if isinstance(self.stages, tuple) and (not self.stages or min(self.stages) < 1):
            raise ValueError(f"stages={self.stages}: give the number of layers of each stage, each >= 1")
        if isinstance(self.stages, int) and not isinstance(self.stages, bool) and self.stages < 1:
            raise ValueError(f"stages={self.stages}: must be >= 1")


@dataclass(frozen=True)
class Manual3D(Method):
    """A fixed Megatron-style configuration: dp x tp per stage, pp stages (a baseline and what-if tool)."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    num_microbatches: int | None = None
    remat: str = "none"
    name = "manual3d"

    def __post_init__(self) -> None:
        if min(self.dp, self.tp, self.pp) < 1:
            raise ValueError(f"Manual3D(dp={self.dp}, tp={self.tp}, pp={self.pp}): all must be >= 1")
        if self.remat not in ("none", "selective", "full"):
            raise ValueError(f"remat={self.remat!r}: use 'none', 'selective' or 'full'")


@dataclass(frozen=True)
class Auto(Method):
    """Search both levels (pipeline stages and intra-op sharding)."""

    name = "auto"


def resolve_method(method: "Method | str | None") -> Method:
    if method is None or method == "auto":
        return Auto()
    if isinstance(method, Method):
        return method
    table = {"shard": ShardParallel, "data": DataParallel, "zero": ZeroParallel, "zero3": ZeroParallel,
             "pipeshard": PipeshardParallel}
    if method in table:
        return table[method]()
    raise ValueError(f"unknown method {method!r}: use 'auto', 'shard', 'data', 'zero3', 'pipeshard' or a "
                     "method object such as autopar.ShardParallel(mesh_shape=(2, 4))")
