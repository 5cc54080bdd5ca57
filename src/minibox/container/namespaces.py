"""Linux namespaces: what each one isolates and the clone flag that makes it.

A namespace wraps one global resource so that the processes inside see
their own instance of it (namespaces(7)).  A container is, first of all, a
process cloned with several CLONE_NEW* flags at once (clone(2), clone3(2));
the C core (csrc/spawn.c) passes these flags to clone3.  This module holds
the table and the helpers that read namespace identities from
/proc/PID/ns/ (an inode number per namespace: two processes share a
namespace exactly when their inodes are equal).
"""

from __future__ import annotations

import os

# namespaces(7): name in /proc/PID/ns -> (clone flag, what it isolates)
NAMESPACE_TABLE: dict[str, tuple[int, str]] = {
    "user":   (0x10000000, "user and group ids, capabilities"),
    "pid":    (0x20000000, "process ids: the command is pid 1"),
    "mnt":    (0x00020000, "the mount table: its own root file system"),
    "uts":    (0x04000000, "host name and NIS domain name"),
    "ipc":    (0x08000000, "System V IPC objects, POSIX message queues"),
    "net":    (0x40000000, "network devices, addresses, routes, ports"),
    "cgroup": (0x02000000, "the view of /proc/self/cgroup"),
    "time":   (0x00000080, "CLOCK_MONOTONIC and CLOCK_BOOTTIME offsets"),
}

CLONE_NEWCGROUP = NAMESPACE_TABLE["cgroup"][0]

# The order setns(2) must join them in when exec-ing into a running
# container: the user namespace first (it grants the capabilities needed to
# join the others), pid last (it only affects children).
JOIN_ORDER: tuple[str, ...] = ("user", "mnt", "uts", "ipc", "net", "cgroup", "time", "pid")


def clone_flags(names: tuple[str, ...] | list[str]) -> int:
    """The CLONE_NEW* bit mask for a set of namespace names."""
    flags = 0
    for name in names:
        flags |= NAMESPACE_TABLE[name][0]
    return flags


def namespace_inode(pid: int | str, name: str) -> int:
    """The identity (inode number) of a process's namespace ``name``."""
    return os.stat(f"/proc/{pid}/ns/{name}").st_ino


def available() -> list[str]:
    """Namespaces this kernel offers (the entries of /proc/self/ns)."""
    present = set(os.listdir("/proc/self/ns"))
    return [name for name in NAMESPACE_TABLE if name in present]
