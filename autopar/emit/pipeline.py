"""Emit a multi-stage or microbatched plan: rebuild the stage split and start a ``PipelineRuntime``.

Consumes: a Plan whose ``method_options`` hold ``num_microbatches``, ``layers``, ``stage_layers``,
``schedule`` and ``remat`` (written by ``planner.pipeshard``), the Graph traced at the microbatch size, and
the devices. Produces: the runtime, pinning each stage's resharded operands (``StagePlan.operand_specs``). Refuses a plan made for another program (graph fingerprint) or one needing
more devices than given.
"""

from __future__ import annotations

from typing import Any, Sequence

from autopar.ir.graph import Graph
from autopar.pipeline.layers import op_layers
from autopar.pipeline.partition import split_stages
from autopar.plan import Plan
from autopar.planner.pipeshard import stage_specs
from autopar.planner.shard_parallel import graph_fingerprint
from autopar.runtime.pipeline import PipelineRuntime
from autopar.sharding.mesh import LogicalMesh
from autopar.sharding.spec import ShardingSpec


def is_pipelined(plan: Plan) -> bool:
    return "stage_layers" in plan.method_options


def emit_pipeline(plan: Plan, graph: Graph, devices: Sequence[Any]) -> PipelineRuntime:
    if plan.graph_fingerprint != graph_fingerprint(graph):
        raise ValueError("the plan was made for a different program (graph fingerprint "
                         f"{plan.graph_fingerprint} != {graph_fingerprint(graph)}); re-plan, or pass the same "
                         "function and argument shapes the plan was made for")
    opts = plan.method_options
    layers = op_layers(graph, opts["layers"])
    ranges = [tuple(r) for r in opts["stage_layers"]]
    layer_stage = {layer: s for s, (a, b) in enumerate(ranges) for layer in range(a, b)}
    split = split_stages(graph, layer_stage, len(ranges), op_layer=layers)
    specs, fixed = stage_specs(plan, split)
    need = max(d for st in plan.stages for d in st.devices) + 1
    if len(devices) < need:
        raise ValueError(f"the plan needs {need} devices, {len(devices)} are available")
    meshes = [LogicalMesh(st.mesh_shape, st.axis_names).to_jax_mesh([devices[i] for i in st.devices])
              for st in plan.stages]
    operands = [{(o, k): ShardingSpec(w) for o, k, w in st.operand_specs} for st in plan.stages]
    return PipelineRuntime(split, meshes, specs, fixed, int(opts["num_microbatches"]), opts["schedule"],
                           tuple(bool(r) for r in opts["remat"]), operands)
