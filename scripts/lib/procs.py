"""Child processes of the throwaway servers (Prosody, ejabberd, nginx, bosh-cm, the cluster
launcher): one copy of the few steps every launcher takes, for the scripts and the tests
(``tests/support`` imports it from here; scripts do not import tests, design.md §8 rule 9).

* :func:`free_port` / :func:`free_ports` - loopback TCP ports the kernel says are free
* :func:`port_open` - whether something accepts TCP connections on a port now
* :func:`python_env` - the environment of a ``python -m bosh...`` child run from a checkout
* :func:`spawn` - start a child in its own session, its output appended to a log file
* :func:`size_of` / :func:`read_since` - a mark in a log file, and what came after it
* :func:`wait_started` - poll a just-started child until it is ready, with a deadline
* :func:`stop_process` - SIGTERM, wait, SIGKILL (the process or its group) at the deadline
* :func:`kill_process` - SIGKILL and reap (a crash: nothing is closed cleanly)
* :class:`Managed` - ``with server:`` = ``start()`` ... ``stop()``, for every launcher class

Nothing here sleeps for a fixed time: every wait blocks on the child (``wait(timeout)``)
against a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from bosh.cluster import free_port  # the product's own (scripts may import bosh, not back)

__all__ = ["free_port", "free_ports", "port_open", "python_env", "spawn", "size_of",
           "read_since", "wait_started", "stop_process", "kill_process", "Managed"]

T = TypeVar("T")
M = TypeVar("M", bound="Managed")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports on ``host``, in ascending order."""
    picked: set[int] = set()
    while len(picked) < count:
        picked.add(free_port(host))
    return sorted(picked)


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when a TCP connection to ``host:port`` is accepted now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def python_env(root: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment plus ``extra``, unbuffered output, and ``root`` (a checkout) first on
    ``PYTHONPATH``: for ``python -m bosh`` / ``python -m bosh.cluster`` children."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


def spawn(cmd: Sequence[str], log: Path, *, cwd: Path,
          env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in ``cwd``: no stdin, stdout and stderr appended to ``log``, in a new
    session (so its process group is its own: :func:`stop_process` ``group=True``)."""
    with open(log, "ab") as out:
        return subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=str(cwd),
                                env=None if env is None else dict(env), start_new_session=True)


def size_of(path: Path) -> int:
    """The size of ``path`` (0 when it does not exist): a mark for :func:`read_since`."""
    return path.stat().st_size if path.exists() else 0


def read_since(path: Path, mark: int = 0) -> str:
    """The text of ``path`` from byte ``mark`` on ('' when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def wait_started(proc: subprocess.Popen[Any], ready: Callable[[], T | None], timeout: float, *,
                 error: Callable[[str], BaseException], exited: str, late: str,
                 tail: Callable[[], str], on_exit: Callable[[], object] | None = None,
                 on_late: Callable[[], object] | None = None, step: float = 0.05) -> T:
    """Poll ``ready`` until it returns a true value, and return that value.

    When ``proc`` exits first: ``on_exit()``, then raise ``error(exited + "\\n" + tail())``
    with ``{code}`` in ``exited`` replaced by the exit code. At the deadline (``timeout``
    seconds): ``on_late()`` (stop or kill the child), then raise ``error(late + "\\n" +
    tail())``. Between two polls it blocks on the child for up to ``step`` seconds (a poll
    step, not a fixed sleep: an exit ends it at once).
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            code = proc.returncode
            if on_exit is not None:
                on_exit()
            raise error(exited.format(code=code) + "\n" + tail())
        value = ready()
        if value:
            return value
        if time.monotonic() > deadline:
            if on_late is not None:
                on_late()
            raise error(late + "\n" + tail())
        try:
            proc.wait(timeout=step)
        except subprocess.TimeoutExpired:
            pass


def _sigkill(proc: subprocess.Popen[Any], group: bool) -> None:
    if group:  # start_new_session: the group id is the child's pid; its children go too
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            return
        except OSError:
            pass
    proc.kill()


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10, *,
                 again: float | None = None, group: bool = False) -> int:
    """SIGTERM (when ``proc`` still runs) and wait up to ``timeout`` seconds; with ``again``,
    a second SIGTERM then (it ends a drain) and up to ``again`` seconds more; then SIGKILL
    (to the whole process group with ``group``) and wait. Returns the exit code."""
    if proc.poll() is None:
        waits = [timeout] if again is None else [timeout, again]
        for wait in waits:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                pass
        else:
            _sigkill(proc, group)
            proc.wait()
    return proc.returncode


def kill_process(proc: subprocess.Popen[Any]) -> int:
    """SIGKILL (when ``proc`` still runs) and reap it. Returns the exit code."""
    if proc.poll() is None:
        proc.kill()
    return proc.wait()


class Managed:
    """A mixin for a launcher class with ``start()``, ``stop()`` and its child as ``proc``:
    ``with it:`` starts it and stops it again at the end of the block (also when the block
    fails); :attr:`running` says whether the child runs."""

    proc: subprocess.Popen[bytes] | None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self: M) -> M:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
