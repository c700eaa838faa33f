"""CPU time and RSS of a process from /proc (Linux), and file descriptor limits."""

from __future__ import annotations

import os
import resource

__all__ = ["cpu_seconds", "rss_kib", "raise_nofile", "self_cpu_seconds", "child_pids",
           "open_fds", "nofile_limit"]

_CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (fields 14 and 15 of /proc/PID/stat), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` from /proc/PID/status, in KiB."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


def self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (soft, and hard when we may) towards ``wanted``; children
    started afterwards inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:  # needs CAP_SYS_RESOURCE (root); else keep the hard limit we have
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass
    new_soft = hard if hard == resource.RLIM_INFINITY or hard < wanted else max(soft, wanted)
    if new_soft == resource.RLIM_INFINITY:
        new_soft = wanted
    resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    return new_soft


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (HAProxy's worker under its master, ``-W``)."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
        return out
    except FileNotFoundError:  # no /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN): scan
        pass
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.append(int(name))
    return out


def open_fds(pid: int) -> int:
    """How many file descriptors ``pid`` holds now."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_limit(pid: int) -> int | None:
    """The soft RLIMIT_NOFILE of ``pid`` (/proc/PID/limits), None when unlimited or unknown."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft = line[len("Max open files"):].split()[0]
                return int(soft) if soft.isdigit() else None
    return None
