"""Wide-ResNet (bottleneck ResNet with a width factor) in Flax NNX, with Alpa's benchmark sizes.

Consumes: depth (50 / 101 / 152 / 200, or explicit stage sizes), base channels ``C``, width factor ``W``,
image size, classes, batch size, ``abstract`` and ``dtype``.
Produces: ``(step_fn, (state, batch))`` with batch ``{"images": [batch, I, I, 3] (NHWC, dtype),
"labels": int32 [batch]}`` and softmax cross-entropy loss.
Refuses: unknown depths, non-positive sizes (ValueError naming the field).

Architecture: Alpa's ``alpa/model/wide_resnet.py`` (itself Flax's ImageNet ResNet): 7x7/2 stem conv, 3x3/2 max
pool, stages of bottleneck blocks ``1x1 (f) -> 3x3 (f W, stride) -> 1x1 (4 f)`` with ``f = C 2^stage`` and a
1x1 projection shortcut when the shape changes, ReLU, global mean pool, dense classifier.
``autopar.mark_layer_boundary()`` follows every block (16 blocks at depth 50, 33 at 101 — Alpa's layer counts).
**Normalisation differs from Alpa**: BatchNorm is replaced by LayerNorm over the channel axis (per pixel), so
there are no mutable batch statistics and the step stays a pure function; it has the same per-channel
scale and bias parameters as BatchNorm, hence the same parameter count.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

import autopar
from bench.models.common import BatchField, Benchmark, build_train_step, check_positive

STAGE_SIZES: dict[int, tuple[int, ...]] = {   # depth -> blocks per stage (Alpa's model_configs)
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}


def _conv(cin: int, cout: int, k: int, stride: int, dtype: Any, rngs: Any) -> nnx.Conv:
    pad: Any = [(k // 2, k // 2)] * 2
    return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=pad, use_bias=False, dtype=dtype,
                    param_dtype=dtype, rngs=rngs)


def _norm(c: int, dtype: Any, rngs: Any) -> nnx.LayerNorm:
    return nnx.LayerNorm(c, epsilon=1e-5, dtype=dtype, param_dtype=dtype, rngs=rngs)


class Bottleneck(nnx.Module):
    def __init__(self, cin: int, filters: int, width: int, stride: int, *, dtype: Any, rngs: Any) -> None:
        cout = 4 * filters
        self.conv1, self.norm1 = _conv(cin, filters, 1, 1, dtype, rngs), _norm(filters, dtype, rngs)
        self.conv2 = _conv(filters, filters * width, 3, stride, dtype, rngs)
        self.norm2 = _norm(filters * width, dtype, rngs)
        self.conv3, self.norm3 = _conv(filters * width, cout, 1, 1, dtype, rngs), _norm(cout, dtype, rngs)
        needs_proj = cin != cout or stride != 1
        self.proj = _conv(cin, cout, 1, stride, dtype, rngs) if needs_proj else None
        self.proj_norm = _norm(cout, dtype, rngs) if needs_proj else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.norm1(self.conv1(x)))
        y = jax.nn.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        if self.proj is not None and self.proj_norm is not None:
            x = self.proj_norm(self.proj(x))
        return jax.nn.relu(x + y)


class WideResNet(nnx.Module):
    def __init__(self, stages: Sequence[int], channels: int, width: int, classes: int, *, dtype: Any,
                 rngs: Any) -> None:
        self.stem = nnx.Conv(3, channels, (7, 7), strides=(2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                             dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.stem_norm = _norm(channels, dtype, rngs)
        blocks, cin = [], channels
        for i, n in enumerate(stages):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(Bottleneck(cin, channels * 2 ** i, width, stride, dtype=dtype, rngs=rngs))
                cin = 4 * channels * 2 ** i
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(cin, classes, dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.stem_norm(self.stem(images)))
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")
        for block in self.blocks:
            x = block(x)
            autopar.mark_layer_boundary()
        return self.head(jnp.mean(x, axis=(1, 2)))


def classification_loss(model: nnx.Module, batch: dict[str, jax.Array]) -> jax.Array:
    logp = jax.nn.log_softmax(model(batch["images"]).astype(jnp.float32), axis=-1)
    onehot = jax.nn.one_hot(batch["labels"], logp.shape[-1], dtype=logp.dtype)
    return -jnp.mean(jnp.sum(onehot * logp, axis=-1))


def wide_resnet(depth: int | Sequence[int], channels: int, width: int, image_size: int = 224,
                classes: int = 1024, batch_size: int = 32, abstract: bool = True,
                dtype: Any = jnp.float32) -> Benchmark:
    """A Wide-ResNet train step; ``depth`` is 50/101/152/200 or an explicit tuple of blocks per stage."""
    if isinstance(depth, int):
        if depth not in STAGE_SIZES:
            raise ValueError(f"depth={depth} is not one of {sorted(STAGE_SIZES)}; or pass stage sizes")
        stages: tuple[int, ...] = STAGE_SIZES[depth]
    else:
        stages = tuple(depth)
        if not stages:
            raise ValueError("depth=(): give at least one stage")
        check_positive(**{f"depth[{i}]": n for i, n in enumerate(stages)})
    check_positive(channels=channels, width=width, image_size=image_size, classes=classes,
                   batch_size=batch_size)
    fields = {"images": BatchField((batch_size, image_size, image_size, 3), dtype),
              "labels": BatchField((batch_size,), jnp.int32, classes)}
    return build_train_step(lambda rngs: WideResNet(stages, channels, width, classes, dtype=dtype, rngs=rngs),
                            classification_loss, fields, abstract=abstract)


# ---- named configurations: Alpa's benchmark/alpa/suite_wresnet.py (224 px, 1024 classes) ---------------
WRESNET_CONFIGS: dict[str, tuple[int, int, int]] = {   # name -> (depth, channels, width factor)
    "wresnet_250m": (50, 160, 2),
    "wresnet_500m": (50, 224, 2),
    "wresnet_1b": (50, 320, 2),
    "wresnet_2b": (50, 448, 2),
    "wresnet_4b": (50, 640, 2),
    "wresnet_6_8b": (50, 320, 16),
    "wresnet_13b": (101, 320, 16),
}
WRESNET_NOMINAL_PARAMS: dict[str, float] = {
    "wresnet_250m": 250e6, "wresnet_500m": 500e6, "wresnet_1b": 1e9, "wresnet_2b": 2e9, "wresnet_4b": 4e9,
    "wresnet_6_8b": 6.8e9, "wresnet_13b": 13e9,
}


def _named(name: str, batch_size: int, abstract: bool, dtype: Any) -> Benchmark:
    depth, channels, width = WRESNET_CONFIGS[name]
    return wide_resnet(depth, channels, width, 224, 1024, batch_size, abstract, dtype)


def wresnet_tiny(batch_size: int = 4, abstract: bool = False, dtype: Any = jnp.float32) -> Benchmark:
    """32 px, 8 channels, width 2, two stages of one block each, 10 classes."""
    return wide_resnet((1, 1), 8, 2, 32, 10, batch_size, abstract, dtype)


def wresnet_250m(batch_size: int = 1536, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("wresnet_250m", batch_size, abstract, dtype)


def wresnet_500m(batch_size: int = 1536, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("wresnet_500m", batch_size, abstract, dtype)


def wresnet_1b(batch_size: int = 1536, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("wresnet_1b", batch_size, abstract, dtype)


def wresnet_2b(batch_size: int = 1536, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("wresnet_2b", batch_size, abstract, dtype)


def wresnet_4b(batch_size: int = 1536, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("wresnet_4b", batch_size, abstract, dtype)


def wresnet_6_8b(batch_size: int = 1536, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("wresnet_6_8b", batch_size, abstract, dtype)


def wresnet_13b(batch_size: int = 1536, abstract: bool = True, dtype: Any = jnp.float32) -> Benchmark:
    return _named("wresnet_13b", batch_size, abstract, dtype)
