"""A logical device mesh: named axes with sizes, and optionally the links each axis communicates over.

Consumes: axis sizes and names (and, for costing, one ``AxisLink`` per axis from the cluster description).
Produces: axis lookups, the ``AxisLink``s a collective over some axes uses, and a ``jax.sharding.Mesh``
over real devices for the emitter. A LogicalMesh is a description: planning never needs devices.
Refuses: mismatched shape/name/link lengths, repeated or empty axis names, sizes < 1, unknown axis names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import jax

    from autopar.cost_models.links import AxisLink


@dataclass(frozen=True)
class LogicalMesh:
    shape: tuple[int, ...]
    axis_names: tuple[str, ...]
    links: tuple["AxisLink", ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "axis_names", tuple(self.axis_names))
        if len(self.shape) != len(self.axis_names):
            raise ValueError(f"LogicalMesh: shape {self.shape} and axis_names {self.axis_names} differ in "
                             f"length; give one name per mesh axis")
        if any(s < 1 for s in self.shape):
            raise ValueError(f"LogicalMesh: shape {self.shape} has a size < 1; every axis needs >= 1 device")
        if any(not isinstance(n, str) or not n for n in self.axis_names):
            raise ValueError(f"LogicalMesh: axis_names {self.axis_names} must be non-empty strings")
        if len(set(self.axis_names)) != len(self.axis_names):
            raise ValueError(f"LogicalMesh: axis_names {self.axis_names} repeat a name; names must be unique")
        if self.links is not None:
            links = tuple(self.links)
            object.__setattr__(self, "links", links)
            if len(links) != len(self.shape):
                raise ValueError(f"LogicalMesh: {len(links)} links for {len(self.shape)} axes; give one "
                                 f"AxisLink per axis")
            for link, size, name in zip(links, self.shape, self.axis_names):
                if link.size != size:
                    raise ValueError(f"LogicalMesh: links for axis {name!r} has size {link.size}, the axis "
                                     f"has {size}; build the AxisLink for the axis size")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def num_devices(self) -> int:
        return math.prod(self.shape)

    def index(self, axis: str) -> int:
        try:
            return self.axis_names.index(axis)
        except ValueError:
            raise ValueError(f"mesh axis {axis!r} is not one of {self.axis_names}") from None

    def size(self, axis: str | Sequence[str]) -> int:
        """Devices along one axis, or the product over several."""
        if isinstance(axis, str):
            return self.shape[self.index(axis)]
        return math.prod(self.shape[self.index(a)] for a in axis)

    def axis_links(self, axes: Sequence[str]) -> list["AxisLink"]:
        """The AxisLink of each named axis, in the order given (what ``collective_time`` consumes)."""
        if self.links is None:
            raise ValueError("LogicalMesh.links is None: this mesh carries no link description; build it "
                             "with links=(AxisLink, ...) (e.g. from a ClusterSpec) to cost collectives")
        return [self.links[self.index(a)] for a in axes]

    def to_jax_mesh(self, devices: Sequence[Any]) -> "jax.sharding.Mesh":
        """A ``jax.sharding.Mesh`` over ``devices`` (row-major into ``shape``), all axes ``AxisType.Auto``."""
        import jax
        import numpy as np

        devs = list(np.asarray(devices, dtype=object).reshape(-1))
        if len(devs) != self.num_devices:
            raise ValueError(f"to_jax_mesh: {len(devs)} devices for a mesh of {self.num_devices} "
                             f"{self.shape}; pass exactly that many devices")
        arr = np.empty(len(devs), dtype=object)
        arr[:] = devs
        return jax.sharding.Mesh(arr.reshape(self.shape), self.axis_names,
                                 axis_types=(jax.sharding.AxisType.Auto,) * self.ndim)

    def __str__(self) -> str:
        return "{" + ", ".join(f"{n}={s}" for n, s in zip(self.axis_names, self.shape)) + "}"
