"""Demo: namespaces one at a time -- what a container *is* on a shared kernel.

Runs a few commands in containers and compares what they see with what the
host sees: process ids (pid namespace), the host name (uts), the mount
table (mnt + pivot_root), network devices (net), System V IPC (ipc), the
cgroup tree (cgroup), the clocks (time) and user ids (user) -- and then the
same container from the outside: /proc/PID/ns, lsns(8) and nsenter(1).
Every line it prints was read or run just now.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import minibox
from minibox import Container, Spec
from minibox.container import namespaces, rootfs, userns
from minibox.container.spawn import spawn
from minibox.spec import IdMap

from ._narrate import heading, pointer, say, show


def _inside(argv: list[str], **kw: object) -> str:
    result = minibox.run(Spec(argv=argv, **kw))  # type: ignore[arg-type]
    return result.stdout.decode().strip()


def _host(argv: list[str]) -> str:
    """A command on the host; its output, or why it could not run."""
    if shutil.which(argv[0]) is None:
        return f"({argv[0]} is not installed)"
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    return (proc.stdout or proc.stderr).strip()


#: System V message queues in the caller's IPC namespace: /proc/sysvipc/msg has a header line.
_COUNT_QUEUES = "tail -n +2 /proc/sysvipc/msg | wc -l"


def _host_queues() -> int:
    with open("/proc/sysvipc/msg") as f:
        return len(f.readlines()) - 1


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


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
    before = socket.gethostname()
    show("host", before)
    show("container", _inside(["hostname"], hostname="demo-box"))
    after = socket.gethostname()
    show("host, afterwards", f"{after} ({'unchanged' if after == before else 'CHANGED'})")

    heading("mount namespace + pivot_root: its own root file system")
    mounts_before = _mount_points()
    show("host: entries in /", len(os.listdir("/")))
    show("container: ls /", _inside(["ls", "/"]).replace("\n", " "))
    show("container: its mounts (mountinfo: point, type)",
         _inside(["sh", "-c", "while read -r _ _ _ _ p _; do echo $p; done < /proc/self/mountinfo | head -8"])
         .replace("\n", " "))
    show("host: ls -l /proc/keys", _host(["ls", "-l", "/proc/keys"]))
    show("container: ls -l /proc/keys (masked)", _inside(["sh", "-c", "ls -l /proc/keys 2>&1"]))
    added = _mount_points() - mounts_before
    show("host: mounts added meanwhile", ", ".join(sorted(added)) or "none")
    pointer("the ordered mount plan", rootfs.mount_plan)

    heading("net namespace: only a loopback device")
    show("host: network devices", " ".join(sorted(os.listdir("/sys/class/net"))))
    show("container: network devices", _inside(["ls", "/sys/class/net"]).replace("\n", " "))

    heading("ipc namespace: its own System V message queues, semaphores, shared memory")
    show("host: message queues (/proc/sysvipc/msg)", _host_queues())
    show("container: message queues (/proc/sysvipc/msg)", _inside(["sh", "-c", _COUNT_QUEUES]))
    say("  (below, a queue made in a running container's namespace from the host, with nsenter)")

    heading("cgroup namespace: its own cgroup is the root of the tree it sees")
    show("container: /proc/self/cgroup", " ".join(_inside(["cat", "/proc/self/cgroup"]).split()[:4]) + " ...")
    say("  (below, the same process's /proc/PID/cgroup read from the host)")

    heading("time namespace (only when asked): its own CLOCK_MONOTONIC/BOOTTIME offsets")
    timens = ["pid", "mnt", "uts", "ipc", "net", "cgroup", "time"]
    show("container: /proc/self/timens_offsets",
         _inside(["cat", "/proc/self/timens_offsets"], namespaces=timens).replace("\n", " | "))
    with open("/proc/uptime") as f:
        show("uptime, host", f.read().split()[0])
    show("uptime, container", _inside(["cut", "-d", " ", "-f1", "/proc/uptime"], namespaces=timens))
    say("  (minibox makes the namespace with the clone, so its offsets stay 0: docs/namespaces.md)")

    heading("from the outside: one running container, seen and entered from the host")
    with Container(Spec(argv=["sleep", "60"], hostname="demo-box",
                        namespaces=["pid", "mnt", "uts", "ipc", "net", "cgroup", "time"])) as box:
        assert box.pid is not None
        show("its pid, on the host", box.pid)
        for name in ("pid", "mnt", "uts", "ipc", "net", "cgroup", "time", "user"):
            host = namespaces.namespace_inode("self", name)
            theirs = namespaces.namespace_inode(str(box.pid), name)
            show(f"/proc/PID/ns/{name}", f"host {host}  container {theirs}"
                                         + ("  (shared)" if host == theirs else ""))
        say("  lsns --task PID:")
        for line in _host(["lsns", "--task", str(box.pid), "--output", "NS,TYPE,NPROCS,PID,COMMAND"]).splitlines():
            say(f"    {line}")
        show("nsenter --target PID --uts hostname", _host(["nsenter", "--target", str(box.pid), "--uts", "hostname"]))
        show("nsenter --target PID --net ip -brief link",
             _host(["nsenter", "--target", str(box.pid), "--net", "ip", "-brief", "link"]))
        with open(f"/proc/{box.pid}/cgroup") as f:
            outside = [line.strip() for line in f if ":pids:" in line or ":memory:" in line]
        inside = [line for line in box.exec(["cat", "/proc/self/cgroup"]).stdout.decode().split()
                  if ":pids:" in line or ":memory:" in line]
        show("/proc/PID/cgroup, read from the host", " ".join(outside) or "(no pids/memory line)")
        show("/proc/self/cgroup, read inside", " ".join(inside) or "(no pids/memory line)")
        show("nsenter --target PID --ipc ipcmk -Q",
             _host(["nsenter", "--target", str(box.pid), "--ipc", "ipcmk", "-Q"]))
        queues = box.exec(["sh", "-c", _COUNT_QUEUES]).stdout.decode().strip()
        show("message queues afterwards: container / host", f"{queues} / {_host_queues()}")
        box.kill()
        box.wait(timeout=30)

    heading("user namespace: root inside is an ordinary user outside")
    text = _inside(["cat", "/proc/self/uid_map"], namespaces=["user", "pid", "mnt", "uts", "ipc", "net"],
                   uid_map=[IdMap(0, 100000, 65536)], gid_map=[IdMap(0, 100000, 65536)])
    show("uid_map inside (inside outside count)", text)
    pointer("writing the maps while the child waits", userns.write_id_maps)
    say("")
    show("kernel release, host", os.uname().release)
    show("kernel release, container", _inside(["uname", "-r"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
