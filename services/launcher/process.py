"""Child processes the launcher owns: started in their own session, output prefixed on the
console and kept (in memory and in a log file), stopped with the signal each one expects."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

# Receives (component name, line) for every line a child prints.
Echo = Callable[[str, str], None]

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. Forking
# from one long-lived thread means a child started from a short-lived thread (a test calling
# restart_service from an executor, say) does not die with that thread.
_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _spawn(start: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="energymesh-spawn")
    return _spawner.submit(start).result()


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send `sig` to the child when the launcher dies, even by
    SIGKILL, so no orphan outlives it. Runs after subprocess drops privileges (user=...),
    which matters because changing credentials clears the setting."""
    if _LIBC is None:
        return None
    libc, parent = _LIBC, os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig)
        # The launcher may have died between fork and prctl.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


class ChildError(RuntimeError):
    """A child failed to start, exited early or did not finish in time."""


class Child:
    """One child process, restartable: start() again after it stopped."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        echo: Echo | None = None,
        stop_signal: int = signal.SIGTERM,
        death_signal: int = signal.SIGKILL,
        user: str | None = None,
        keep_lines: int = 5000,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.echo = echo
        # SIGTERM drains a service; postgres needs SIGINT (SIGTERM waits for clients to leave).
        self.stop_signal = stop_signal
        # Sent by the kernel if the launcher dies without stopping us (kill -9): SIGKILL unless
        # the child is known to shut down cleanly and quickly on something gentler.
        self.death_signal = death_signal
        self.user = user
        self.popen: subprocess.Popen[bytes] | None = None
        self._lines: deque[str] = deque(maxlen=keep_lines)
        self._lines_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._terminated = False

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            raise ChildError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.popen = _spawn(self._popen)
            self._terminated = False
        except OSError as error:
            raise ChildError(f"cannot start {self.name} ({self.argv[0]}): {error}") from error
        self._reader = threading.Thread(
            target=self._pump, args=(self.popen,), name=f"energymesh-{self.name}", daemon=True
        )
        self._reader.start()

    def _popen(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Own session and process group: Ctrl-C in the terminal reaches the launcher only,
            # which then stops children in order; and the group lets us kill stragglers.
            start_new_session=True,
            user=self.user,
            preexec_fn=_die_with_parent(self.death_signal),
        )

    def run(self, timeout: float) -> None:
        """Run to completion (initdb, migrations); raise with the log tail unless it exits 0."""
        self.start()
        try:
            code = self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(timeout=5)
            raise ChildError(
                f"{self.name} did not finish within {timeout:.0f}s\n{self.tail()}"
            ) from None
        if code != 0:
            raise ChildError(f"{self.name} failed with exit code {code}\n{self.tail()}")

    def wait(self, timeout: float | None = None) -> int:
        if self.popen is None:
            raise ChildError(f"{self.name} was never started")
        code = self.popen.wait(timeout)
        # The reader finishes once the pipe is drained, so the last lines are not lost.
        if self._reader is not None:
            self._reader.join(timeout=2)
        return code

    def send(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def terminate(self) -> None:
        """Send the stop signal once, without waiting (to stop several children in parallel)."""
        if not self._terminated:
            self._terminated = True
            self.send(self.stop_signal)

    def stop(self, timeout: float) -> int | None:
        """Signal, wait up to `timeout`, then SIGKILL whatever is left of its process group."""
        popen = self.popen
        if popen is None:
            return None
        if popen.poll() is None:
            self.terminate()
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._say(f"did not stop within {timeout:.0f}s; killing it")
        # Grandchildren (postgres backends, a service's helpers) share the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        return self.wait()

    # --- state and output ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def lines(self) -> list[str]:
        with self._lines_lock:
            return list(self._lines)

    def tail(self, count: int = 40) -> str:
        lines = self.lines()[-count:]
        if not lines:
            return f"({self.name} printed nothing; log: {self.log_path})"
        body = "\n".join(f"  {line}" for line in lines)
        return f"last lines of {self.name} (full log: {self.log_path}):\n{body}"

    def _pump(self, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        with popen.stdout, self.log_path.open("a", encoding="utf-8") as log:
            for raw in popen.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._lines_lock:
                    self._lines.append(line)
                log.write(line + "\n")
                log.flush()
                if self.echo is not None:
                    try:
                        self.echo(self.name, line)
                    except OSError:
                        # Our stdout went away (`make run | head`): keep draining the pipe,
                        # or the child would block on a full one.
                        self.echo = None

    def _say(self, message: str) -> None:
        if self.echo is not None:
            self.echo(self.name, f"[launcher] {message}")


class Console:
    """Prints children's lines as `name | line`, names aligned, coloured on a terminal."""

    _COLOURS = (36, 33, 35, 32, 34, 91, 96, 93, 95, 92)

    def __init__(self, names: Sequence[str] = (), stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._width = max((len(name) for name in names), default=8)
        self._colour = self._stream.isatty() and "NO_COLOR" not in os.environ
        self._codes: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, line: str) -> None:
        label = name.ljust(self._width)
        if self._colour:
            code = self._codes.setdefault(
                name, self._COLOURS[len(self._codes) % len(self._COLOURS)]
            )
            label = f"\033[{code}m{label}\033[0m"
        with self._lock:
            print(f"{label} | {line}", file=self._stream, flush=True)
