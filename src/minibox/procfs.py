"""Reading /proc, the one way minibox does it (proc(5)).

/proc/PID/stat: the second field is the command name in parentheses, and it may
itself contain spaces and ')' -- so the line is split after the *last*
')'.  The fields minibox needs: the state (``Z`` for a zombie), the parent,
CPU time, and the start time, which together with the pid names one
process for good (a recycled pid has another start time).

Memory figures: a process's ``VmRSS``/``VmHWM`` from /proc/PID/status, its
PSS from /proc/PID/smaps_rollup, and the host's MemAvailable from
/proc/meminfo -- all ``Name:  N kB`` lines.
"""

from __future__ import annotations

import os

from ._record import record


@record(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat minibox uses (numbers as in proc(5))."""

    pid: int
    comm: str        # (2) the command name
    state: str       # (3) R, S, D, Z, T...
    ppid: int        # (4)
    utime: int       # (14) clock ticks in user mode
    stime: int       # (15) clock ticks in kernel mode
    starttime: int   # (22) clock ticks after boot

    @property
    def cpu_seconds(self) -> float:
        return (self.utime + self.stime) / os.sysconf("SC_CLK_TCK")


def stat(pid: int) -> ProcStat | None:
    """``pid``'s /proc/PID/stat, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    close = data.rindex(b")")
    rest = data[close + 2:].split()
    return ProcStat(pid=pid, comm=data[data.index(b"(") + 1:close].decode(errors="replace"),
                    state=rest[0].decode(), ppid=int(rest[1]), utime=int(rest[11]), stime=int(rest[12]),
                    starttime=int(rest[19]))


def start_time(pid: int) -> int | None:
    """``pid``'s start time (clock ticks after boot), or None when it is gone."""
    st = stat(pid)
    return None if st is None else st.starttime


def children(pid: int) -> list[ProcStat]:
    """Every process whose parent is ``pid`` (zombies included)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = stat(int(entry))
            if st is not None and st.ppid == pid:
                kids.append(st)
    return kids


# --- memory figures: /proc/PID/status, /proc/PID/smaps_rollup, /proc/meminfo ---------------


def _field_kib(path: str, name: str) -> int | None:
    """The number of a ``Name:   1234 kB`` line of a /proc file, in KiB."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def status_kib(pid: int, name: str) -> int | None:
    """A KiB field of /proc/PID/status (``VmRSS``, ``VmHWM``...), or None when gone."""
    return _field_kib(f"/proc/{pid}/status", name)


def pss_kib(pid: int) -> int | None:
    """``pid``'s proportional set size (shared pages split among their sharers), proc(5) smaps_rollup."""
    return _field_kib(f"/proc/{pid}/smaps_rollup", "Pss")


def mem_available() -> int | None:
    """/proc/meminfo's MemAvailable in bytes: what can be allocated without swapping."""
    kib = _field_kib("/proc/meminfo", "MemAvailable")
    return None if kib is None else kib * 1024


def mem_total() -> int | None:
    """/proc/meminfo's MemTotal in bytes."""
    kib = _field_kib("/proc/meminfo", "MemTotal")
    return None if kib is None else kib * 1024
