"""The core packages (ir, planner, sharding) type-check with mypy (``[tool.mypy]`` in pyproject.toml): a
wrong Optional, a misspelt name on an error path (``lp_lower_bound`` once read an undefined variable whenever
its LP ran) or a reused variable of another type fails here before it fails at run time."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_core_packages_type_check() -> None:
    from mypy import api

    packages = [str(ROOT / "autopar" / name) for name in ("ir", "planner", "sharding")]
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--no-error-summary",
                                "--cache-dir", str(ROOT / ".mypy_cache"), *packages])
    assert status == 0, f"mypy found problems:\n{out}{err}"
