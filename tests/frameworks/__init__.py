"""Training steps written with popular JAX frameworks, used as test fixtures (see ``steps.py``)."""
