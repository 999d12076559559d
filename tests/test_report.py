"""The HTML report and its pictures, for one stage and for a hand-built two-stage pipeline plan.

(a) the predicted schedule has the closed-form makespan ((M + S - 1) (f + b) for equal GPipe stages) and the
    1F1B order keeps every stage's task count; (b) sharding maps put each block on the right devices;
(c) PNGs are non-empty; the HTML embeds them and links nothing; (d) rich tables show one row per stage;
(e) headless Chromium renders the report without console errors (skipped only where Chromium is absent).
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from autopar.plan import Estimate, Plan, StagePlan
from autopar.report import figures
from autopar.report.html import build_html, write_report
from autopar.report.schedule import FORWARD_SHARE, pipeline_schedule, task_order


def _estimate(step: float, mem: float, **kw: float) -> Estimate:
    return Estimate(step_time_s=step, compute_time_s=step * 0.8, comm_time_s=step * 0.2, bubble_fraction=0.0,
                    flops=1e12, mfu=0.4, peak_memory_bytes=mem, comm_bytes={"all-reduce": 1e6},
                    collective_counts={"all-reduce": 2}, **kw)


def _plan(stage_times: list[float], micro: int = 4, schedule: str = "gpipe") -> Plan:
    n = len(stage_times)
    per = 8 // n
    stages = tuple(StagePlan(name=f"stage{i}", mesh_shape=(2, per // 2), axis_names=("x", "y"),
                             devices=tuple(range(i * per, (i + 1) * per)),
                             input_specs=((f"[0]['w{i}']", (("x",), ("y",))), (f"[1]['b{i}']", ((), ()))),
                             output_specs=((),), op_specs=(), estimate=_estimate(t, 1e9 * (i + 1)))
                   for i, t in enumerate(stage_times))
    total = _estimate(sum(stage_times), 1e9 * n)
    return Plan(method="pipeshard", method_options={"num_microbatches": micro, "schedule": schedule},
                mesh_shape=(2, per // 2), axis_names=("x", "y"),
                cluster={"name": "test", "nodes": 1, "devices_per_node": 8, "device": {"memory_bytes": 16e9}},
                stages=stages, estimate=total, graph_fingerprint="0" * 16,
                search={"stage_layers": [[i * 2, i * 2 + 2] for i in range(n)]})


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_equal_stages_makespan_is_closed_form(schedule: str) -> None:
    slots = pipeline_schedule(_plan([0.04, 0.04], micro=4, schedule=schedule))
    per_micro = 0.04 / 4
    assert max(s.end for s in slots) == pytest.approx((4 + 2 - 1) * per_micro)
    assert len(slots) == 2 * 2 * 4
    first_b = min(s.start for s in slots if s.kind == "B" and s.stage == 1)
    assert first_b == pytest.approx(2 * per_micro * FORWARD_SHARE if schedule == "1f1b" else 5 * per_micro / 3)


def test_1f1b_order_and_single_stage() -> None:
    assert task_order(3, 4, 0, "1f1b") == [("F", 0), ("F", 1), ("F", 2), ("B", 0), ("F", 3), ("B", 1), ("B", 2),
                                           ("B", 3)]
    slots = pipeline_schedule(_plan([0.03], micro=1))
    assert [(s.kind, s.start, s.end) for s in slots] == [("F", 0.0, pytest.approx(0.01)),
                                                         ("B", pytest.approx(0.01), pytest.approx(0.03))]


def test_block_devices_follow_the_mesh() -> None:
    # mesh x=2, y=4 over devices 0..7 row-major: device k has x = k // 4, y = k % 4
    blocks = figures.block_devices((("x",), ("y",)), (2, 4), ("x", "y"), range(8))
    assert blocks[(1, 2)] == [6] and len(blocks) == 8
    blocks = figures.block_devices((("y", "x"),), (2, 4), ("x", "y"), range(8))
    assert blocks[(3,)] == [5] and blocks[(1,)] == [4] and blocks[(2,)] == [1]   # index y * 2 + x
    assert figures.block_devices(((), ()), (2, 4), ("x", "y"), range(8)) == {(0, 0): list(range(8))}


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_two_stage_report_and_tables() -> None:
    plan = _plan([0.05, 0.03])
    html = build_html(plan, title="two stages")
    pngs = _pngs(html)
    assert len(pngs) == 2 and all(p[:4] == b"\x89PNG" and len(p) > 5000 for p in pngs)
    assert "stage1" in html and "2-3" in html and "P(&#x27;x&#x27;, &#x27;y&#x27;)" in html
    assert not re.search(r'(src|href)="(?!data:)', html) and "<script" not in html

    from autopar.cli.render import stages_table

    console = Console(width=160, record=True, no_color=True)
    console.print(stages_table(plan))
    text = console.export_text()
    assert re.search(r"stage0\s+.\s+0-1\s+.\s+0-3 \(4\)\s+.\s+x=2 x y=2\s+.\s+50.000 ms", text), text
    assert re.search(r"stage1\s+.\s+2-3\s+.\s+4-7 \(4\)", text)


def test_sharding_map_png() -> None:
    plan = _plan([0.05])
    png = figures.sharding_map_png([("w", (64, 32), (("x",), ("y",)), plan.stages[0]),
                                    ("b", (128,), (("x", "y"),), plan.stages[0])])
    assert png[:4] == b"\x89PNG" and len(png) > 5000


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHECK_IMAGES = ("<script>window.addEventListener('load', () => { for (const i of document.images) "
                "{ if (!i.naturalWidth) console.error('broken image ' + i.alt); } });</script>")


def _console_messages(html_path: Path) -> list[str]:
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                        "--v=0", "--virtual-time-budget=3000", "--dump-dom", html_path.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert "</html>" in r.stdout or "</body>" in r.stdout, r.stderr[-2000:]
    return [line for line in r.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it with "
                                              "`apt-get install -y chromium`)")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    write_report(page, _plan([0.05, 0.03]))
    html = page.read_text()
    page.write_text(html.replace("</body>", CHECK_IMAGES + "</body>"))
    assert _console_messages(page) == []
    broken = tmp_path / "broken.html"                     # the check itself sees a broken picture
    broken.write_text(html.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
                      .replace("</body>", CHECK_IMAGES + "</body>"))
    assert any("broken image" in m for m in _console_messages(broken))
