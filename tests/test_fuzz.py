"""Fuzzing (issue 8): schemathesis against a real `llmp serve` on the tiny model, every
operation of its own /openapi.json, bounded in time (`benchmarks/fuzz.py` does the work;
`benchmarks/fuzz.sh` is the longer run). No 5xx, every status and body as documented (every
4xx in the spec's error format), auth enforced, and the server still answers /health and
exits cleanly afterwards."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: schemathesis' time budget: with the server's start and stop the test takes about a minute
MAX_TIME_S = 45


def test_schemathesis_finds_nothing(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fuzz.py"), "--max-examples", "8",
         "--max-time", str(MAX_TIME_S), "--seed", "8", "--keep", str(tmp_path)],
        capture_output=True, text=True, timeout=MAX_TIME_S + 150, cwd=ROOT)
    out = run.stdout + run.stderr
    summary = json.loads(out[out.rindex("\n{"):])
    assert run.returncode == 0, out[-20000:]
    assert summary["health_after"] == 200 and summary["server_exit"] == 0
    assert summary["server_tracebacks"] == 0 and summary["five_xx_in_log"] == 0
