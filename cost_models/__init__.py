"""autopar.cost_models: hardware catalog, cluster specs and presets, compute / collective / memory models,
calibration from measurements. Planning never needs the devices it plans for."""

from autopar.cost_models.links import AxisLink as AxisLink, LinkSpec as LinkSpec
