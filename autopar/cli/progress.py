"""Progress display for long CLI work: a spinner on stderr naming the phase and the elapsed time, and a
one-line search summary (meshes tried, ILPs solved, best so far) once a plan exists.

Consumes: phase names, a finished Plan. Produces: output on stderr only when it is a terminal and ``--quiet``
is not given; otherwise nothing at all (piped output and tests stay clean).
The planner has no progress callback yet, so the live display shows the phase and its elapsed time; the
per-mesh numbers come from ``plan.search`` when the search is done.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console

__all__ = ["Progress"]


class Progress:
    def __init__(self, quiet: bool = False) -> None:
        self.enabled = not quiet and sys.stderr.isatty()
        self.console = Console(stderr=True, highlight=False)

    @contextmanager
    def phase(self, text: str) -> Iterator[None]:
        """Show ``text`` with a spinner and elapsed seconds while the block runs."""
        if not self.enabled:
            yield
            return
        start = time.perf_counter()
        with self.console.status(text) as status:
            from threading import Event, Thread

            done = Event()

            def tick() -> None:
                while not done.wait(0.5):
                    status.update(f"{text} ({time.perf_counter() - start:.0f} s)")

            thread = Thread(target=tick, daemon=True)
            thread.start()
            try:
                yield
            finally:
                done.set()
                thread.join()
        self.console.print(f"[dim]{text}: {time.perf_counter() - start:.1f} s[/dim]")

    def search_summary(self, plan: Any) -> None:
        if not self.enabled:
            return
        s = plan.search or {}
        meshes = s.get("meshes", [])
        ok = [m for m in meshes if "step_time_s" in m]
        if not meshes:
            return
        best = min(ok, key=lambda m: m["step_time_s"]) if ok else None
        text = (f"searched {len(meshes)} mesh(es), {len(ok)} ILP(s) solved"
                + (f", best mesh {tuple(best['mesh'])} at {best['step_time_s'] * 1e3:.3f} ms" if best else ""))
        self.console.print(f"[dim]{text}[/dim]")
