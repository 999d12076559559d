"""Registry of framework training steps used as fixtures, and the primitive census.

``FRAMEWORK_STEPS`` maps a name to a factory returning ``(step_fn, args, batch_argnums)``; see
``tests/frameworks/libs.py`` (Flax linen / NNX, Haiku, Equinox, Keras 3) and ``tests/frameworks/plain.py``
(plain JAX). ``python -m tests.frameworks.steps --census`` traces every step with ``autopar.trace`` and
writes the sorted set of primitive names (structured bodies included) to ``tests/frameworks/primitives.txt``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

from tests.frameworks import libs, plain

Step = tuple[Callable[..., Any], tuple[Any, ...], tuple[int, ...]]

FRAMEWORK_STEPS: dict[str, Callable[[], Step]] = {
    "flax_linen_cnn": libs.flax_linen_cnn_step,
    "flax_nnx_transformer": libs.flax_nnx_transformer_step,
    "haiku_mlp": libs.haiku_mlp_step,
    "equinox_convnet": libs.equinox_convnet_step,
    "keras_sequential": libs.keras_sequential_step,
    "jax_resnet": plain.resnet_step,
    "jax_gpt_block": plain.gpt_step,
    "jax_mlp": plain.mlp_step,
    "jax_moe_top2": plain.moe_step,
}

CENSUS_PATH = Path(__file__).with_name("primitives.txt")


def primitive_census(names: list[str] | None = None) -> dict[str, set[str]]:
    """Primitive names of each traced step (recursive into scan/while/cond bodies)."""
    import autopar

    out: dict[str, set[str]] = {}
    for name in names or sorted(FRAMEWORK_STEPS):
        fn, args, batch_argnums = FRAMEWORK_STEPS[name]()
        graph = autopar.trace(fn, *args, batch_argnums=batch_argnums)
        out[name] = set(graph.primitive_counts(recursive=True))
    return out


def census_text(census: dict[str, set[str]]) -> str:
    names = sorted(set().union(*census.values()))
    header = ("# Primitives in the traced framework training steps (tests/frameworks/steps.py), one per line.\n"
              f"# Regenerate: python -m tests.frameworks.steps --census   (steps: {', '.join(sorted(census))})\n")
    return header + "".join(f"{n}\n" for n in names)


def read_census(path: Path = CENSUS_PATH) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--census", action="store_true", help=f"write {CENSUS_PATH.name}")
    parser.add_argument("--out", type=Path, default=CENSUS_PATH)
    ns = parser.parse_args(argv)
    if not ns.census:
        parser.print_help()
        return 2
    os.environ.setdefault("KERAS_BACKEND", "jax")
    census = primitive_census()
    ns.out.write_text(census_text(census))
    for name, prims in sorted(census.items()):
        print(f"{name:<24} {len(prims):>3} primitives")
    print(f"wrote {len(read_census(ns.out))} primitive names to {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
