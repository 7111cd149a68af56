"""`powersampling reason` shows progress on a terminal (stderr) and nothing extra otherwise."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from powersampling import cli

TOY = ["reason", "what is 17 + 25?", "--engine", "toy", "--seed", "3", "--max-new-tokens", "24"]
POWER = [*TOY, "--block-size", "8", "--mcmc-steps", "3", "--budget", "200"]
SMC = [*TOY, "--method", "smc", "--particles", "4", "--sweeps", "2", "--chunk-size", "8"]


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def run(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tty: bool):
    err = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert cli.main(argv) == 0
    return capsys.readouterr().out, err.getvalue()


def test_power_progress_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = run(POWER, monkeypatch, capsys, tty=True)
    lines = err.splitlines()
    assert lines[0] == "sampling: 3 block(s), seed 3"
    blocks = [line for line in lines if line.startswith("  block ")]
    assert [b.split(":")[0] for b in blocks] == ["  block 1/3", "  block 2/3", "  block 3/3"][: len(blocks)]
    assert blocks and all("acceptance " in b and "/200 tokens" in b for b in blocks)
    spent = [int(b.split("spent ")[1].split("/")[0]) for b in blocks]
    assert spent == sorted(spent) and spent[-1] <= 200
    assert lines[-1].startswith("[") and "seed 3" in lines[-1]  # the summary line
    assert out.strip()  # the answer still goes to stdout


def test_smc_progress_shows_chunks_sweeps_and_acceptance(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, err = run(SMC, monkeypatch, capsys, tty=True)
    assert "sampling: 4 particles x 2 sweep(s), seed 3" in err
    assert "sweep 1/2 chunk 1:" in err and "ESS " in err
    sweeps = [line for line in err.splitlines() if "log Z-hat" in line and "answer" in line]
    assert len(sweeps) == 2
    assert "acceptance" not in sweeps[0] and "acceptance " in sweeps[1]  # PIMH steps start at sweep 2
    assert all("spent " in line and " tokens" in line for line in sweeps)


@pytest.mark.parametrize(("extra", "tty"), [([], False), (["--json"], True), (["--json"], False)])
def test_nothing_extra_off_a_terminal_or_with_json(
    extra: list[str], tty: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = run([*POWER, *extra], monkeypatch, capsys, tty=tty)
    assert err == ""
    if extra:
        assert json.loads(out)["seed"] == 3


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_progress_on_a_real_pseudo_terminal() -> None:
    """A real terminal on stderr (a pty), stdout a pipe: progress there, the answer alone on stdout."""
    master, slave = os.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "powersampling", *POWER],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            timeout=300,
        )
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    err = b"".join(chunks).decode()
    assert done.returncode == 0
    assert "sampling: 3 block(s)" in err and "block 3/3" in err and "/200 tokens" in err
    assert "block" not in done.stdout and done.stdout.strip()
