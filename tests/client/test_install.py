"""The client distribution installs on its own (grpcio and protobuf, no torch) and talks to a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.conftest import ThreadedServer

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"

SCRIPT = """
import importlib.util, json, sys
import powersampling_client
from powersampling_client import PowerSamplingClient
with PowerSamplingClient(sys.argv[1]) as client:
    result = client.reason("abc?", seed=1, max_new_tokens=8, block_size=4, mcmc_steps=1)
print(json.dumps({
    "text": result.text,
    "module": powersampling_client.__file__,
    "server_package": importlib.util.find_spec("powersampling") is not None,
}))
"""


@pytest.mark.slow
def test_the_client_installs_alone_in_a_fresh_venv(server: ThreadedServer, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    python = venv / "bin" / "python"
    # As a user would: pip resolves grpcio and protobuf from the configured index.
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(CLIENT_DIR)],
        check=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert {"powersampling-client", "grpcio", "protobuf"} <= names
    assert "torch" not in names and "powersampling" not in names

    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, env=env, cwd=tmp_path)
    assert no_torch.returncode != 0

    run = subprocess.run(
        [str(python), "-c", SCRIPT, server.target],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    output = json.loads(run.stdout)
    assert output["text"] and not output["server_package"]
    assert output["module"].startswith(str(venv))
