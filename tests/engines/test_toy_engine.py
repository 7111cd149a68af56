"""ToyEngine: its default fingerprint is stable across processes (cache keys depend on it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    from powersampling.engines.toy import ToyEngine

    def table(prefix):
        helper = lambda: -1.0  # a nested code object: its repr holds a memory address
        return [float(sum(1 for _ in prefix)), 0.0, helper()]

    print(ToyEngine(3, 2, table).info.fingerprint)
    """
)


def test_default_fingerprint_is_the_same_in_every_process() -> None:
    runs = [
        subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and len(runs[0].strip()) == 64
