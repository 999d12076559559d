"""autopar.passes: Graph -> Graph / Graph -> Analysis transformations around the planner.

Remat selection, pipeline rematerialization, ZeRO-style state sharding, collective/compute overlap and
precision passes live here (installed as ``autopar.passes``).
"""
