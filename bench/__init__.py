"""autopar's benchmark suite: Flax NNX models with functional train steps (``bench.models``)."""
