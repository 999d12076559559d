"""The inspector CLI run for real in subprocesses on 8 fake CPU devices: ``inspect``, ``show``, ``diff``,
``audit``, ``run``, and the error messages for bad targets and flags.

A module-scoped fixture plans ``mlp_tiny`` once with ``inspect --mesh 8 --json --save --report``; the other
tests reuse its files. The JSON is checked against the key tables of ``docs/plan_format.md``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
       "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def autopar(*argv: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autopar.cli.main", *argv], capture_output=True, text=True,
                          env=ENV, cwd=cwd or ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def inspected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("inspect")
    r = autopar("inspect", "bench.models.mlp:mlp_tiny", "--mesh", "8", "--json", str(d / "plan.json"),
                "--save", str(d / "saved.json"), "--report", str(d / "report.html"), "--quiet")
    assert r.returncode == 0, r.stderr
    return {"dir": d, "out": r.stdout, "err": r.stderr}


def doc_keys(section: str) -> set[str]:
    """First-column keys of the table under ``section`` (a markdown heading) in docs/plan_format.md."""
    text = (ROOT / "docs" / "plan_format.md").read_text()
    body = text.split(section + "\n", 1)[1].split("\n#", 1)[0]
    keys: set[str] = set()
    for line in body.splitlines():
        m = re.match(r"\|\s*([^|]+?)\s*\|", line)
        if m and "---" not in m.group(1) and m.group(1) != "key":
            keys.update(re.findall(r"`([a-z_]+)`", m.group(1)))
    return keys


def test_inspect_prints_every_table(inspected: dict[str, Any]) -> None:
    out = inspected["out"]
    for title in ("Plan overview", "Stages", "Inputs (parameters, optimizer state, batch): 27", "Most expensive ops",
                  "Collectives"):
        assert title in out
    assert re.search(r"stage0\s+.\s+all \(0-3\)\s+.\s+0-7 \(8\)\s+.\s+x=8", out), out
    # mlp_tiny: 16->32->32->32->4, the two 32x32 kernels lead the input table (4 KiB each)
    assert re.search(r"\[0\]\[0\]\['layers'\]\[1\]\['kernel'\]\s+.\s+32x32\s+.\s+4.0 KiB\s+.\s+P\(", out)
    assert "dot_general" in out and inspected["err"] == ""


def test_json_follows_the_schema_doc(inspected: dict[str, Any]) -> None:
    plan = json.loads((inspected["dir"] / "plan.json").read_text())
    assert set(plan) == doc_keys("## Top level")
    assert plan["schema_version"] == 1 and plan["mesh"] == {"shape": [8], "axis_names": ["x"]}
    assert len(plan["stages"]) == 1
    assert set(plan["stages"][0]) == doc_keys("### `stages[i]`")
    assert set(plan["estimate"]) == doc_keys("### `estimate`")
    assert set(plan["cluster"]) == doc_keys("### `cluster`")
    assert plan["search"]["cli"] == {"target": "bench.models.mlp:mlp_tiny", "batch_argnums": None}
    assert (inspected["dir"] / "saved.json").read_text() == (inspected["dir"] / "plan.json").read_text()


def test_report_is_self_contained_with_pictures(inspected: dict[str, Any]) -> None:
    html = (inspected["dir"] / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 3                       # Gantt, stage bars, sharding maps
    for b64 in images:
        png = base64.b64decode(b64)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not re.search(r'(src|href)="(?!data:)', html)


def test_show_and_diff(inspected: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    d = inspected["dir"]
    r = autopar("show", str(d / "plan.json"))
    assert r.returncode == 0, r.stderr
    assert "Plan overview" in r.stdout and "P(None, None)" in r.stdout
    plan = json.loads((d / "plan.json").read_text())
    plan["stages"][0]["input_specs"][0][1] = [["x"]] + plan["stages"][0]["input_specs"][0][1][1:]
    plan["estimate"]["step_time_s"] *= 2
    (d / "b.json").write_text(json.dumps(plan))
    from autopar.cli.main import main

    assert main(["diff", str(d / "plan.json"), str(d / "b.json"), "--json", str(d / "diff.json")]) == 0
    out = capsys.readouterr().out
    name = plan["stages"][0]["input_specs"][0][0]
    assert name in out and "inputs resharded" in out
    diff = json.loads((d / "diff.json").read_text())
    assert name == "[0][0]['head']['bias']" and diff["inputs"] == [["stage0", name, "P(None)", "P('x')"]]
    a, b = diff["cost"]["step_time_s"]
    assert b == pytest.approx(2 * a) and re.search(r"step_time_s .* 2\.000", out)


def test_audit_of_a_saved_plan_and_strict_exit(inspected: dict[str, Any]) -> None:
    d = inspected["dir"]
    r = autopar("audit", str(d / "plan.json"), "--json", str(d / "audit.json"), "--strict", "--tolerance", "0")
    assert r.returncode == 1 and "outside 1 +- 0.0" in r.stderr, r.stderr
    assert "peak memory / device" in r.stdout
    report = json.loads((d / "audit.json").read_text())
    pred, comp = report["predicted"], report["compiled"]
    assert report["ratios"]["peak_memory_bytes"] == pytest.approx(pred["peak_memory_bytes"] / comp["peak_memory_bytes"])
    # mlp_tiny replicated on x=8: arguments are params + Adam state + batch, all on every device
    assert comp["peak_memory_bytes"] > (2788 * 3 + 160) * 4


@pytest.mark.parametrize("argv, message", [
    (["inspect", "no_such_model"], "unknown target 'no_such_model'"),
    (["inspect", "mlp_tiny", "--mesh", "2xq"], "--mesh '2xq': expected positive sizes"),
    (["inspect", "mlp_tiny", "--cluster", "dgx-z9"], "--cluster 'dgx-z9': unknown preset"),
    (["inspect", "mlp_tiny", "--method", "manual:2,2"], "write manual:dp,tp,pp"),
    (["inspect", "mlp_tiny", "--donate-argnums", "state"], "--donate-argnums 'state': expected argument positions"),
    (["inspect", "no_such_module_xyz:make"], "cannot import module 'no_such_module_xyz'"),
])
def test_clear_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from autopar.cli.main import main

    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_data_parallel_methods_take_microbatches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--method zero3 --microbatches 2``: ZeRO-3 with gradient accumulation, one microbatched stage; the
    overview labels a pipelined plan's compute / communication as device-time totals."""
    from autopar.cli.main import main

    assert main(["inspect", "mlp_tiny", "--method", "zero3", "--microbatches", "2", "--json",
                 str(tmp_path / "z.json"), "--quiet"]) == 0
    out = capsys.readouterr().out
    plan = json.loads((tmp_path / "z.json").read_text())
    assert plan["method"] == "zero" and plan["method_options"]["num_microbatches"] == 2
    assert plan["method_options"]["stage_layers"] == [[0, 1]] and len(plan["stages"]) == 1
    assert "(device-time totals)" in out
    assert main(["inspect", "mlp_tiny", "--method", "data", "--microbatches", "0"]) == 1
    assert "--microbatches 0: must be >= 1" in capsys.readouterr().err


def test_file_target_factory_errors_and_success(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from autopar.cli.main import main

    (tmp_path / "model.py").write_text(
        "import jax, jax.numpy as jnp\n"
        "def make():\n"
        "    w = jax.ShapeDtypeStruct((64, 32), jnp.float32); x = jax.ShapeDtypeStruct((16, 64), jnp.float32)\n"
        "    return (lambda w, x: jnp.tanh(x @ w).sum()), (w, x)\n"
        "def broken():\n"
        "    raise RuntimeError('factory exploded')\n")
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "model.py:broken"]) == 1
    err = capsys.readouterr().err
    assert "the factory raised RuntimeError" in err and "Traceback" in err
    assert "raise RuntimeError('factory exploded')" in err
    from autopar.cli.targets import TargetError, load_target

    with pytest.raises(TargetError, match="has no attribute 'nothing'"):
        load_target(f"{tmp_path / 'model.py'}:nothing")
    r = autopar("inspect", f"{tmp_path / 'model.py'}:make", "--mesh", "2x4", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "x=2 x y=4" in r.stdout and "64x32" in r.stdout


@pytest.mark.slow
def test_run_prints_plan_audit_and_measured_time() -> None:
    r = autopar("run", "mlp_tiny", "--mesh", "8", "--steps", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "Audit: predicted vs compiled" in r.stdout
    m = re.search(r"step time: measured ([0-9.]+) ms \(best of 2\), predicted ([0-9.]+) ms", r.stdout)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, r.stdout


@pytest.mark.slow
def test_inspect_gpt_39b_for_eight_p3_nodes(tmp_path: Path) -> None:
    """GPT-39B planned abstractly for 64 V100s (8 p3.16xlarge nodes) as a pipeline of 1024 microbatches with
    the train state donated: the stage search's plan fits in 16 GiB, and the report draws its Gantt chart."""
    r = autopar("inspect", "bench.models.gpt:gpt_39b", "--cluster", "p3.16xlarge", "--nodes", "8", "--method",
                "pipeshard", "--microbatches", "1024", "--donate-argnums", "0", "--json", str(tmp_path / "p.json"),
                "--report", str(tmp_path / "r.html"), "--quiet", timeout=1800)
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "p.json").read_text())
    assert set(plan) == doc_keys("## Top level") and plan["cluster"]["nodes"] == 8
    assert len(plan["stages"]) > 1 and sum(len(s["devices"]) for s in plan["stages"]) == 64
    assert plan["estimate"]["peak_memory_bytes"] <= 16 * 2**30
    assert len(_pngs((tmp_path / "r.html").read_text())) >= 2
    assert "V100" in r.stdout and "stage search over 1 microbatch count(s)" in r.stdout
    assert "pipeline bubble" in r.stdout


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]
