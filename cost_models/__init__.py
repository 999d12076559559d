"""autopar.cost_models: hardware catalog, cluster specs and presets, compute / collective / memory models,
calibration from measurements. Planning never needs the devices it plans for."""

from autopar.cost_models.cluster import PRESETS as PRESETS, ClusterSpec as ClusterSpec, group_link as group_link
from autopar.cost_models.collectives import CollectiveCost as CollectiveCost, bytes_sent as bytes_sent
from autopar.cost_models.collectives import collective_cost as collective_cost
from autopar.cost_models.collectives import collective_rules as collective_rules
from autopar.cost_models.collectives import collective_time as collective_time
from autopar.cost_models.compute import OpClass as OpClass, OpCost as OpCost, efficiency_rules as efficiency_rules
from autopar.cost_models.compute import graph_compute_time as graph_compute_time, op_cost as op_cost
from autopar.cost_models.hardware import DEVICES as DEVICES, DeviceSpec as DeviceSpec, device as device
from autopar.cost_models.links import AxisLink as AxisLink, LinkSpec as LinkSpec
from autopar.cost_models.memory import MemoryEstimate as MemoryEstimate, estimate_memory as estimate_memory
