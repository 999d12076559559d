"""autopar: an auto-parallelizing compiler for JAX.

The public surface is re-exported here; implementation modules are private to the package.
"""

from autopar.audit import AuditReport as AuditReport, audit as audit
from autopar.api import ParallelFunction as ParallelFunction, parallelize as parallelize, plan as plan
from autopar.cost_models.cluster import ClusterSpec as ClusterSpec
from autopar.ir import Graph as Graph, Op as Op, Role as Role, Section as Section, Tensor as Tensor
from autopar.ir import trace as trace
from autopar.markers import grad as grad, mark_layer_boundary as mark_layer_boundary
from autopar.markers import value_and_grad as value_and_grad
from autopar.methods import Auto as Auto, DataParallel as DataParallel, Manual3D as Manual3D
from autopar.methods import PipeshardParallel as PipeshardParallel, ShardParallel as ShardParallel
from autopar.methods import ZeroParallel as ZeroParallel
from autopar.plan import Estimate as Estimate, Plan as Plan
from autopar.planner.problem import InfeasibleMemoryError as InfeasibleMemoryError
from autopar.planner.problem import SolverTimeLimitError as SolverTimeLimitError
from autopar.runtime.pipeline import TimelineEvent as TimelineEvent
from autopar.sharding.rules import AutoparWarning as AutoparWarning

__version__ = "0.1.0"
