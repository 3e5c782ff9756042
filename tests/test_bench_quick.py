"""The benchmark suite runs end to end: `python -m bench --quick` exits 0 and writes its files.

CI never judges speed (the quick run's counts are too small to mean anything);
this only proves that every figure can still be measured, that the table, the
raw JSON and the propagation CDF are written, and that the daemon's --trace
and ipc ``trace`` op still work, since figure 1 is built on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(240)
def test_quick_bench_writes_table_json_and_cdf(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (out / "latest.md").read_text()
    for figure in ("1. Merge propagation", "2. GET /budget", "3. Sign-ups", "4. Boot", "5. 2 nodes", "6. Heal",
                   "7. Read flask.session", "7c. Session write", "8. Login, daemon part", "8c. Figure 1"):
        assert figure in table, table
    assert "FAILED" not in table
    raw = json.loads((out / "latest.json").read_text())
    assert raw["errors"] == {}
    assert raw["figures"]["1"]["samples_us"]["logonmesh 2 nodes"], "no propagation samples"
    png = (out / "propagation_cdf.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert proc.stdout.startswith("Machine:")


def test_trace_is_refused_when_off(local_cluster):
    from logonmesh.daemon.client import DaemonError
    (node,) = local_cluster.start_nodes("t", 1, web=False)
    with pytest.raises(DaemonError, match="tracing is off"):
        node.call("trace")
