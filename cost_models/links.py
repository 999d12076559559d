"""Links between devices and the (alpha, beta) a logical mesh axis gets from them.

A cluster is a hierarchy of links: level 0 joins the devices of one node (NVLink, ICI), level 1 joins nodes
(InfiniBand, Ethernet). A logical mesh axis placed on that hierarchy communicates over the slowest level it
spans; ``AxisLink`` is what the collective formulas consume.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinkSpec:
    """One level of the interconnect hierarchy.

    bandwidth: bytes/s one device can send (one direction) over this level when all devices of the level
    communicate at once; latency: seconds per message (alpha); span: how many devices this level joins
    (devices per node for the intra-node level, all devices for the top level).
    """

    name: str
    bandwidth: float
    latency: float
    span: int


@dataclass(frozen=True)
class AxisLink:
    """A logical mesh axis as the collectives see it: ``size`` devices joined by one link level."""

    name: str          # mesh axis name ("x", "dp", ...) or a joined name for a group of axes
    size: int          # devices along the axis
    alpha: float       # seconds per message step
    bandwidth: float   # bytes/s per device, one direction

    @property
    def beta(self) -> float:
        """Seconds per byte."""
        return 1.0 / self.bandwidth
