"""benchmarks/reliability.py in its reduced mode, so that the suite keeps running and keeps its
promises: no crash or traceback on bad input, bursts refused cleanly, clients that never read do not
stop a fifth request, no leaked slot, no failed request through Redis faults, no corrupt or forged
value served, resume across replicas identical."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_the_reduced_suite_runs_and_holds(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERSAMPLING_")}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "reliability.py"), "--quick", "--json", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert done.stdout.startswith("scenario ") and "| figure " in done.stdout  # the table

    broken = {k: v for k, v in figures.items() if "scenario error" in k or "cut off" in k}
    assert not broken, broken
    assert figures["bad inputs: malformed requests sent"] >= 100
    assert figures["bad inputs: server crashes"] == 0
    assert figures["bad inputs: tracebacks in the server log"] == 0
    assert figures["server: crashed during the suite"] is False
    (never_read,) = {k.split(":")[0] for k in figures if "clients never reading" in k}
    assert figures[f"{never_read}: request 5: outcome"] == "OK"
    assert figures[f"{never_read}: server still serving after"] is True
    for multiple in (10, 50):
        assert figures[f"burst {multiple}x capacity: other outcomes"] == 0
        assert figures[f"burst {multiple}x capacity: completed"] >= 4
        assert figures[f"burst {multiple}x capacity: RESOURCE_EXHAUSTED"] > 0
    assert figures["random cancellations: cancelled mid-stream"] > 0
    assert figures["random cancellations: slots leaked"] == 0
    for fault in ("SIGKILL, then restart", "SIGSTOP, then SIGCONT", "full (noeviction)"):
        assert figures[f"Redis {fault}: requests failed"] == 0
    assert figures["corrupt and forged values: values tried"] >= 15
    assert figures["corrupt and forged values: served"] == 0
    assert figures["corrupt and forged values: requests failed"] == 0
    assert figures["replica SIGKILLed, same secret: resumed on the other replica"] is True
    assert figures["replica SIGKILLed, different secrets: resumed on the other replica"] is False
    for secrets in ("same secret", "different secrets"):
        assert figures[f"replica SIGKILLed, {secrets}: answer identical to an uninterrupted run"] is True
