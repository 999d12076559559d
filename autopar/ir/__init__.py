"""autopar's program representation: trace a JAX function into a Graph of ops and tensors."""

from autopar.ir.graph import Graph as Graph, Op as Op, Role as Role, Section as Section, Tensor as Tensor
from autopar.ir.trace import trace as trace
