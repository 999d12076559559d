"""Emission: turn a Plan into runnable JAX programs (jit with shardings, pipeline stages)."""
