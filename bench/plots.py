"""Render benchmark records: a markdown table, a terminal table (rich) and scaling plots (PNG, matplotlib).

Consumes: the records of ``bench.runner.run_suite``. Produces: text, or PNG files written to a directory
(one per case family with at least two cluster sizes: predicted step time and MFU against device count,
autopar and each baseline). Refuses: nothing; outcomes without a time are shown as their status.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

BASELINE_COLUMNS = (("data", "DataParallel"), ("zero3", "ZeRO-3"), ("manual3d", "best Manual3D"),
                    ("alpa", "Alpa's plan"))


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**30:.2f}"


def _outcome_cell(o: Mapping[str, Any] | None, main_time: float | None) -> str:
    """``1.23 s (2.1x)``: a baseline's step time and autopar's speedup over it, or its status."""
    if o is None:
        return "-"
    status = o.get("status", "?")
    if status != "ok":
        if status == "does not fit":
            need = o.get("min_memory_bytes")
            return f"does not fit (needs {_gib(need)} GiB)" if need else "does not fit"
        return status.split(":")[0]
    t = o["step_time_s"]
    return f"{t:.3g} s ({t / main_time:.2f}x)" if main_time else f"{t:.3g} s"


def table_rows(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows shared by the markdown and terminal tables."""
    cols = [k for k, _ in BASELINE_COLUMNS if any(k in r.get("baselines", {}) for r in records)]
    head = ["case", "cluster", "devices", "method", "step s", "MFU", "peak GiB", "search s"]
    head += [dict(BASELINE_COLUMNS)[k] for k in cols]
    rows = []
    for r in records:
        ok = r.get("status") == "ok"
        main_time = r.get("step_time_s") if ok else None
        row = [r["case"], r["cluster"], str(r["num_devices"]), r["method"],
               f"{r['step_time_s']:.4g}" if ok else _outcome_cell(r, None),
               f"{r['mfu']:.3f}" if ok else "-", _gib(r.get("peak_memory_bytes")),
               f"{r['search_time_s']:.1f}" if r.get("search_time_s") is not None else "-"]
        row += [_outcome_cell(r.get("baselines", {}).get(k), main_time) for k in cols]
        rows.append(row)
    return head, rows


def markdown_table(records: list[dict[str, Any]]) -> str:
    head, rows = table_rows(records)
    right = {"devices", "step s", "MFU", "peak GiB", "search s"}
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if h in right else "---" for h in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(records: list[dict[str, Any]], title: str = "") -> None:
    """The table on the terminal (rich); plain markdown when rich is missing."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(markdown_table(records))
        return
    head, rows = table_rows(records)
    table = Table(title=title or None)
    for h in head:
        table.add_column(h, justify="right" if h in ("devices", "step s", "MFU", "peak GiB", "search s") else "left")
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)


def scaling_plots(records: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """One PNG per family with >= 2 device counts: step time and MFU vs devices (log2 x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    families: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        families.setdefault(r.get("family") or r["case"].split("-")[0], []).append(r)
    written = []
    for fam, recs in sorted(families.items()):
        recs = sorted(recs, key=lambda r: r["num_devices"])
        if len({r["num_devices"] for r in recs}) < 2:
            continue
        out.mkdir(parents=True, exist_ok=True)
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
        series = [("autopar", lambda r: r)] + [(label, (lambda k: lambda r: r.get("baselines", {}).get(k))(k))
                                               for k, label in BASELINE_COLUMNS]
        for label, pick in series:
            pts = [(r["num_devices"], pick(r)) for r in recs]
            pts = [(n, o) for n, o in pts if o is not None and o.get("status") == "ok"]
            if not pts:
                continue
            xs = [n for n, _ in pts]
            ax_t.plot(xs, [o["step_time_s"] for _, o in pts], marker="o", label=label)
            ax_m.plot(xs, [o["mfu"] for _, o in pts], marker="o", label=label)
        for ax, ylabel in ((ax_t, "predicted step time (s)"), (ax_m, "predicted MFU")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("devices")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
        ax_t.legend(fontsize=8)
        fig.suptitle(f"{fam}: weak scaling (" + ", ".join(r["case"] for r in recs) + ")", fontsize=9)
        fig.tight_layout()
        path = out / f"scaling_{fam}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
