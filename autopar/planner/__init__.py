"""Planner: the intra-op sharding ILP (``solve``) over a ``ShardingProblem``, and a brute-force reference."""

from autopar.planner.brute_force import brute_force as brute_force
from autopar.planner.brute_force import brute_force_min_budget as brute_force_min_budget
from autopar.planner.ilp import min_memory_budget as min_memory_budget
from autopar.planner.ilp import solve as solve
from autopar.planner.problem import Alias as Alias
from autopar.planner.problem import Edge as Edge
from autopar.planner.problem import InfeasibleMemoryError as InfeasibleMemoryError
from autopar.planner.problem import SolverTimeLimitError as SolverTimeLimitError
from autopar.planner.problem import MemoryGroup as MemoryGroup
from autopar.planner.problem import ShardingProblem as ShardingProblem
from autopar.planner.problem import Solution as Solution
from autopar.planner.problem import evaluate as evaluate
