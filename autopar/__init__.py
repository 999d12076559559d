"""autopar: an auto-parallelizing compiler for JAX.

The public surface is re-exported here; implementation modules are private to the package.
"""

from autopar.ir import Graph as Graph, Op as Op, Role as Role, Section as Section, Tensor as Tensor
from autopar.ir import trace as trace
from autopar.markers import grad as grad, mark_layer_boundary as mark_layer_boundary
from autopar.markers import value_and_grad as value_and_grad

__version__ = "0.1.0"
