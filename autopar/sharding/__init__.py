"""Sharding: logical meshes, per-tensor specs, resharding costs and per-primitive strategy rules.

Importing this package has no side effects beyond building the rule table (a dict).
"""

from autopar.sharding.mesh import LogicalMesh as LogicalMesh
from autopar.sharding.reshard import CollectiveStep as CollectiveStep
from autopar.sharding.reshard import reshard_steps as reshard_steps, reshard_time as reshard_time
from autopar.sharding.rules import AutoparWarning as AutoparWarning
from autopar.sharding.rules import sharding_rules as sharding_rules, strategies_for as strategies_for
from autopar.sharding.spec import ShardingSpec as ShardingSpec
from autopar.sharding.strategy import Rule as Rule, RuleContext as RuleContext, Strategy as Strategy
