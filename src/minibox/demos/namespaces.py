"""Demo: namespaces one at a time -- what a container *is* on a shared kernel.

Runs a few commands in containers and compares what they see with what the
host sees: process ids (pid namespace), the host name (uts), the mount
table (mnt + pivot_root), network devices (net) and user ids (user).
"""

from __future__ import annotations

import os
import socket

import minibox
from minibox import Spec
from minibox.container import namespaces, rootfs, userns
from minibox.container.spawn import spawn
from minibox.spec import IdMap

from ._narrate import heading, pointer, say, show


def _inside(argv: list[str], **kw: object) -> str:
    result = minibox.run(Spec(argv=argv, **kw))  # type: ignore[arg-type]
    return result.stdout.decode().strip()


def main() -> int:
    if os.geteuid() != 0:
        say("this demo needs root (it creates namespaces and mounts): run it with sudo")
        return 1
    say("A container is an ordinary process that the kernel shows a different world.")
    say("minibox clones it with CLONE_NEW* flags; each flag wraps one global resource.")
    pointer("clone3() with the namespace flags", spawn)

    heading("pid namespace: the command is pid 1 and sees only its own processes")
    show("host: number of processes", len([p for p in os.listdir("/proc") if p.isdigit()]))
    show("container: ps", _inside(["ps", "-o", "pid,comm"]).replace("\n", " | "))

    heading("uts namespace: its own host name")
    show("host", socket.gethostname())
    show("container", _inside(["hostname"], hostname="demo-box"))
    show("host, afterwards (unchanged)", socket.gethostname())

    heading("mount namespace + pivot_root: its own root file system")
    show("host: entries in /", len(os.listdir("/")))
    show("container: ls /", _inside(["ls", "/"]).replace("\n", " "))
    say("  /proc, /sys and a minimal /dev are mounted fresh; /proc/kcore and friends are masked")
    pointer("the ordered mount plan", rootfs.mount_plan)

    heading("net namespace: only a loopback device")
    show("host: network devices", " ".join(sorted(os.listdir("/sys/class/net"))))
    show("container: network devices", _inside(["ls", "/sys/class/net"]).replace("\n", " "))

    heading("namespace identities: /proc/PID/ns inodes differ from the host's")
    for name in ("pid", "mnt", "uts", "ipc", "net"):
        host = namespaces.namespace_inode("self", name)
        inside = _inside(["readlink", f"/proc/self/ns/{name}"])
        show(name, f"host {name}:[{host}]  container {inside}")

    heading("user namespace: root inside is an ordinary user outside")
    text = _inside(["cat", "/proc/self/uid_map"], namespaces=["user", "pid", "mnt", "uts", "ipc", "net"],
                   uid_map=[IdMap(0, 100000, 65536)], gid_map=[IdMap(0, 100000, 65536)])
    show("uid_map inside (inside outside count)", text)
    pointer("writing the maps while the child waits", userns.write_id_maps)
    say("\nEverything above ran on the host's own kernel: " + os.uname().release)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
