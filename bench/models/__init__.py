"""Benchmark models: a registry of train-step factories.

Every factory is a module-level function ``f(batch_size=..., abstract=..., dtype=...) -> (step_fn, args)``
(see ``bench.models.common``), usable by name (``MODELS["gpt_39b"]``) or as a CLI target string
``"bench.models.gpt:gpt_39b"`` (``resolve``). Tiny models default to real arrays (``abstract=False``);
named large models default to ``jax.ShapeDtypeStruct``s (``abstract=True``).
"""

from __future__ import annotations

import importlib
from typing import Callable

from bench.models import gpt, llama, mlp, moe, wide_resnet
from bench.models.common import Benchmark, param_count as param_count

Factory = Callable[..., Benchmark]

MODELS: dict[str, Factory] = {
    "gpt_tiny": gpt.gpt_tiny,
    **{name: getattr(gpt, name) for name in gpt.GPT_CONFIGS},
    "mlp_tiny": mlp.mlp_tiny,
    "mlp_1b": mlp.mlp_1b,
    "moe_tiny": moe.moe_tiny,
    **{name: getattr(moe, name) for name in moe.MOE_CONFIGS},
    "wresnet_tiny": wide_resnet.wresnet_tiny,
    **{name: getattr(wide_resnet, name) for name in wide_resnet.WRESNET_CONFIGS},
    "llama_tiny": llama.llama_tiny,
    "llama_7b": llama.llama_7b,
    "llama3_8b": llama.llama3_8b,
}

# Nominal parameter counts of the named models (the sizes in their names / source papers).
NOMINAL_PARAMS: dict[str, float] = {
    **gpt.GPT_NOMINAL_PARAMS, **moe.MOE_NOMINAL_PARAMS, **wide_resnet.WRESNET_NOMINAL_PARAMS,
    **llama.LLAMA_NOMINAL_PARAMS, "mlp_1b": 1.0e9,
}


def resolve(target: str) -> Factory:
    """A factory from a registry name (``"gpt_39b"``) or a ``"module:function"`` target string."""
    if ":" not in target:
        if target not in MODELS:
            raise ValueError(f"unknown model {target!r}; known: {', '.join(sorted(MODELS))}, "
                             f"or give a 'module:function' target such as 'bench.models.gpt:gpt_39b'")
        return MODELS[target]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"target {target!r}: cannot import module {module_name!r} ({e})") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"target {target!r}: module {module_name!r} has no function {attr!r}")
    return fn
