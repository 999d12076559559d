"""Load a CLI target: ``module:factory``, ``path/to/file.py:factory`` or a bench model name (``gpt_tiny``).

Consumes: the target string. Produces: ``Target(fn, args, label)`` by calling the factory with no arguments;
the factory returns ``(fn, args)`` with ``args`` a tuple of argument pytrees (real arrays or
``jax.ShapeDtypeStruct``). Refuses (``TargetError``, a ValueError): a module or file that does not import, a
missing or non-callable attribute, a factory that raises (its traceback is part of the message), a factory
that returns anything but ``(callable, tuple)``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["Target", "TargetError", "load_target", "resolve_factory"]


class TargetError(ValueError):
    """A target that cannot be loaded; the message names the target and the fix."""


@dataclass(frozen=True)
class Target:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    label: str


def _import_file(path: Path, target: str) -> Any:
    if not path.exists():
        raise TargetError(f"target {target!r}: file {str(path)!r} does not exist")
    name = f"_autopar_target_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"target {target!r}: cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise TargetError(f"target {target!r}: importing {str(path)!r} failed:\n{_traceback(e)}") from e
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _import_module(name: str, target: str) -> Any:
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, "")      # `autopar inspect mymodel:make` finds mymodel.py in the working directory
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise TargetError(f"target {target!r}: cannot import module {name!r} ({e}); give 'module:factory' with "
                          "an importable module or 'path/to/file.py:factory'") from e
    except Exception as e:
        raise TargetError(f"target {target!r}: importing module {name!r} failed:\n{_traceback(e)}") from e


def _traceback(e: BaseException) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip()


def resolve_factory(target: str) -> Callable[..., Any]:
    """The factory a target names (not called)."""
    if ":" not in target:
        try:
            from bench.models import MODELS
        except ImportError:
            MODELS = {}
        if target in MODELS:
            return MODELS[target]
        known = f" (bench models: {', '.join(sorted(MODELS))})" if MODELS else ""
        raise TargetError(f"unknown target {target!r}: give 'module:factory' or 'path/to/file.py:factory'{known}")
    where, _, attr = target.rpartition(":")
    if not where or not attr:
        raise TargetError(f"target {target!r}: expected 'module:factory' or 'path/to/file.py:factory'")
    module = _import_file(Path(where), target) if where.endswith(".py") else _import_module(where, target)
    fn = getattr(module, attr, None)
    if fn is None:
        raise TargetError(f"target {target!r}: {where!r} has no attribute {attr!r}")
    if not callable(fn):
        raise TargetError(f"target {target!r}: {where}:{attr} is a {type(fn).__name__}, not a factory function")
    return fn


def load_target(target: str) -> Target:
    """Resolve and call the factory; check it returned ``(fn, args)``."""
    factory = resolve_factory(target)
    try:
        result = factory()
    except Exception as e:
        raise TargetError(f"target {target!r}: the factory raised {type(e).__name__}:\n{_traceback(e)}") from e
    if not (isinstance(result, tuple) and len(result) == 2 and callable(result[0])):
        raise TargetError(f"target {target!r}: the factory must return (fn, args), got {type(result).__name__}"
                          + (f" of length {len(result)}" if isinstance(result, tuple) else ""))
    fn, args = result
    if not isinstance(args, (tuple, list)):
        raise TargetError(f"target {target!r}: the factory's args must be a tuple of arguments, got "
                          f"{type(args).__name__}")
    return Target(fn=fn, args=tuple(args), label=target)
