"""How one tensor is laid out on a LogicalMesh: the mesh axes splitting each dimension, plus partial sums.

``ShardingSpec(dims=(("dp",), (), ("tp", "pp")))`` splits dim 0 over ``dp`` and dim 2 over ``tp`` then
``pp`` (major to minor), and replicates dim 1. ``partial=("tp",)`` means each device along ``tp`` holds a
partial sum of the value (only inside a strategy's own communication; never at an op boundary).
Consumes: axis names and tensor shapes. Produces: per-device shapes and bytes, PartitionSpecs, compact text.
Refuses: an axis used twice (across dims and partial), non-string axis names, splits that do not divide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import jax

    from autopar.sharding.mesh import LogicalMesh


@dataclass(frozen=True)
class ShardingSpec:
    dims: tuple[tuple[str, ...], ...]
    partial: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        dims = tuple(tuple(d) if not isinstance(d, str) else (d,) for d in self.dims)
        partial = (self.partial,) if isinstance(self.partial, str) else tuple(self.partial)
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "partial", partial)
        used = [a for d in dims for a in d] + list(partial)
        for a in used:
            if not isinstance(a, str) or not a:
                raise ValueError(f"ShardingSpec: mesh axis names must be non-empty strings, got {a!r}")
        if len(set(used)) != len(used):
            dup = sorted({a for a in used if used.count(a) > 1})
            raise ValueError(f"ShardingSpec {dims} partial={partial}: mesh axis {dup} used more than once; "
                             f"each mesh axis may split at most one dim (or be partial) per tensor")

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def replicated(cls, ndim: int) -> "ShardingSpec":
        return cls(dims=((),) * ndim)

    @classmethod
    def from_partition_spec(cls, pspec: "jax.sharding.PartitionSpec | Sequence[Any]",
                            ndim: int | None = None) -> "ShardingSpec":
        """From a PartitionSpec (entries None, a name or a tuple of names); padded with None to ``ndim``."""
        entries = list(pspec)
        if ndim is not None:
            if len(entries) > ndim:
                raise ValueError(f"PartitionSpec {pspec} has {len(entries)} entries for a rank-{ndim} tensor")
            entries += [None] * (ndim - len(entries))
        dims = tuple(() if e is None else (e,) if isinstance(e, str) else tuple(e) for e in entries)
        return cls(dims=dims)

    def with_dim(self, dim: int, axes: tuple[str, ...]) -> "ShardingSpec":
        dims = list(self.dims)
        dims[dim] = tuple(axes)
        return ShardingSpec(tuple(dims), self.partial)

    # ---- queries --------------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.dims)

    @property
    def is_replicated(self) -> bool:
        return not self.partial and all(not d for d in self.dims)

    def axes(self) -> tuple[str, ...]:
        """Mesh axes splitting some dim (partial axes excluded), dim by dim, major to minor."""
        return tuple(a for d in self.dims for a in d)

    def to_partition_spec(self) -> "jax.sharding.PartitionSpec":
        """The jax PartitionSpec (partial axes have no PartitionSpec form and are dropped)."""
        from jax.sharding import PartitionSpec

        return PartitionSpec(*(None if not d else d[0] if len(d) == 1 else tuple(d) for d in self.dims))

    def num_shards(self, mesh: "LogicalMesh") -> int:
        """Distinct pieces the tensor is cut into (devices along unused axes hold copies)."""
        return math.prod(mesh.size(a) for a in self.axes())

    def _check_rank(self, shape: Sequence[int]) -> None:
        if len(shape) != self.ndim:
            raise ValueError(f"ShardingSpec {self} has {self.ndim} dims, the tensor shape {tuple(shape)} "
                             f"has {len(shape)}; give one entry per tensor dim")

    def divides(self, shape: Sequence[int], mesh: "LogicalMesh") -> bool:
        """True when every split dim is divisible by the product of its axes' sizes."""
        self._check_rank(shape)
        return all(int(n) % mesh.size(d) == 0 for n, d in zip(shape, self.dims) if d)

    def shard_shape(self, shape: Sequence[int], mesh: "LogicalMesh") -> tuple[int, ...]:
        """The per-device block shape; raises when a split does not divide its dim."""
        if not self.divides(shape, mesh):
            raise ValueError(f"ShardingSpec {self} does not divide shape {tuple(shape)} on mesh {mesh}; "
                             f"a dim split over axes must be a multiple of their size product")
        return tuple(int(n) // mesh.size(d) if d else int(n) for n, d in zip(shape, self.dims))

    def bytes_per_device(self, shape: Sequence[int], dtype: Any, mesh: "LogicalMesh") -> int:
        return math.prod(self.shard_shape(shape, mesh)) * np.dtype(dtype).itemsize

    # ---- text -----------------------------------------------------------------------------------
    def __str__(self) -> str:
        body = "".join("R" if not d else f"S[{','.join(d)}]" for d in self.dims) or "scalar"
        return body + (f"+P[{','.join(self.partial)}]" if self.partial else "")
