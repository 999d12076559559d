"""Memory traffic under fusion (cost_models/traffic.py), and the compute and memory models against measurements
recorded on real GPUs (bench/data/h200: an H200, bench/data/h100: an H100, both jax 0.11.2; re-predicted here with
the current model, no GPU needed)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import autopar
from autopar.cost_models.traffic import op_traffic, traffic_key

S = jax.ShapeDtypeStruct
F32 = jnp.float32
DATA = Path(__file__).resolve().parent.parent / "bench" / "data" / "h200"
H100 = DATA.parent / "h100"


def _ops(g: autopar.Graph, prim: str) -> list:
    return [op for op in g.ops if op.primitive == prim]


def test_elementwise_chain_reads_inputs_and_writes_result_once() -> None:
    n = 1 << 16
    g = autopar.trace(lambda x, y: jnp.exp(x) * 2.0 + y, S((n,), F32), S((n,), F32))
    traffic = {op.primitive: op_traffic(g, op) for op in g.ops}
    assert traffic["exp"] == 4 * n           # reads x; its result stays in the kernel
    assert traffic["mul"] == 0               # operands fused, result read only by the fused add
    assert traffic["add"] == 2 * 4 * n       # reads y, writes the output
    assert sum(traffic.values()) == 3 * 4 * n    # = x + y + result: one kernel's worth


def test_matmul_ends_fusion_and_broadcast_reads_its_source() -> None:
    g = autopar.trace(lambda x, w, b: jax.nn.relu(x @ w + b), S((256, 512), F32), S((512, 128), F32),
                      S((128,), F32))
    (dot,) = _ops(g, "dot_general")
    assert op_traffic(g, dot) == 4 * (256 * 512 + 512 * 128 + 256 * 128)   # reads both, writes its result
    (add,) = _ops(g, "add")
    assert op_traffic(g, add) == 4 * (256 * 128 + 128)     # the dot's result, and the bias, not its broadcast
    (relu,) = _ops(g, "max")
    assert op_traffic(g, relu) == 4 * 256 * 128            # writes the output
    assert traffic_key(g, add) == ((True, True), (False,), 4 * (256 * 128 + 128))


def test_value_read_by_a_matmul_is_written() -> None:
    g = autopar.trace(lambda x, w: jnp.tanh(x) @ w, S((64, 64), F32), S((64, 64), F32))
    (tanh,) = _ops(g, "tanh")
    assert op_traffic(g, tanh) == 2 * 4 * 64 * 64        # read x, write tanh(x) for the dot


def test_reduction_fuses_its_producer() -> None:
    g = autopar.trace(lambda x: jnp.sum(jnp.exp(x), axis=-1), S((128, 1024), F32))
    (exp,) = _ops(g, "exp")
    (red,) = _ops(g, "reduce_sum")
    assert op_traffic(g, exp) == 4 * 128 * 1024 and op_traffic(g, red) == 4 * 128


def test_op_of_another_graph_has_no_traffic_entry() -> None:
    g = autopar.trace(lambda x: x + 1.0, S((8,), F32))
    h = autopar.trace(lambda x: x * 2.0, S((8,), F32))
    assert op_traffic(g, h.ops[0]) is None and traffic_key(g, h.ops[0]) is None


def _replayed(cases: list[str], data: Path = DATA) -> dict:
    from bench.step_fidelity import replay_case

    recorded = {r["case"]: r for r in json.loads((data / "step_fidelity.json").read_text())}
    return {c: replay_case(recorded[c], profile=None, log=lambda _m: None) for c in cases}


FAST_CASES = ["gpt-125m-fp32-b8", "gpt-125m-bf16-b16", "wresnet-250m-fp32-b32"]
ALL_CASES = FAST_CASES + ["moe-380m-fp32-b8", "llama-1b-bf16-b8", "gpt-350m-fp32-b8", "gpt-760m-bf16-b8"]


def _check(records: dict, fp32_memory: tuple[float, float] = (0.95, 1.05)) -> None:
    for name, r in records.items():
        # whole train steps on one GPU (best of 5): before fusion-aware traffic and TF32 the model was 2.7-5.9x
        # too slow on the H200; the catalog figures now predict 0.82-0.97 of the measured step there, 0.86-1.07
        # on the H100
        assert 0.75 <= r.time_ratio <= 1.25, (name, r.time_ratio)
        # predicted / XLA:GPU peak memory (bench/data/*/step_fidelity.json, memory_analysis() of the same program)
        if "bf16" in name:        # 1.23-1.33 before XLA:GPU's recomputed exp / logistic (memory.py); now 0.998-1.000
            assert 0.97 <= r.memory_ratio <= 1.03, (name, r.memory_ratio)
        elif "wresnet" in name:   # 0.84 before the cuDNN-layout kernel copies; XLA's deferred weight gradients remain
            assert 0.88 <= r.memory_ratio <= 0.95, (name, r.memory_ratio)
        else:
            assert fp32_memory[0] <= r.memory_ratio <= fp32_memory[1], (name, r.memory_ratio)


def test_recorded_h200_steps_are_predicted_within_25_percent() -> None:
    _check(_replayed(FAST_CASES))


@pytest.mark.slow
def test_all_recorded_h200_steps_are_predicted_within_25_percent() -> None:
    _check(_replayed(ALL_CASES))


# fp32 transformers on the H100: XLA:GPU recomputes the tanh-GELU's tanh in the backward there (and keeps it on the
# H200, like the model): 1.06-1.13 of XLA, one tanh-sized activation per layer high
H100_FP32_MEMORY = (1.0, 1.15)


def test_recorded_h100_steps_are_predicted_within_25_percent() -> None:
    _check(_replayed(FAST_CASES, H100), H100_FP32_MEMORY)


@pytest.mark.slow
def test_all_recorded_h100_steps_are_predicted_within_25_percent() -> None:
    _check(_replayed(ALL_CASES, H100), H100_FP32_MEMORY)


def test_recorded_h200_matmuls_and_convs_match_the_efficiency_table() -> None:
    from bench.op_timing import compare

    table = compare(json.loads((DATA / "op_timing.json").read_text()))
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): float(line.split("|")[6])
            for line in table.splitlines() if line.startswith("| dot") or line.startswith("| conv")}
    assert set(rows) == {("dot_general", "bfloat16"), ("dot_general", "float32"),
                         ("conv_general_dilated", "float32")}
    for key, ratio in rows.items():      # predicted / measured, count-weighted, ops timed alone
        assert 0.85 <= ratio <= 1.15, (key, ratio)
