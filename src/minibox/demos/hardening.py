"""Demo: what a default container may not do, even as root inside.

Root in a container is not root on the host: it holds only podman's 11
default capabilities, cannot gain privileges (no_new_privs), and a seccomp
filter refuses the system calls that reach into the kernel as a whole.
Each attempt below runs *inside* a container.
"""

from __future__ import annotations

import os

import minibox
from minibox import Spec
from minibox.policy import capabilities, seccomp

from ._narrate import heading, pointer, say, show

ATTEMPTS = [
    ("mount a tmpfs", "mount -t tmpfs none /mnt"),
    ("create a block device node", "mknod /tmp/disk b 8 0"),
    ("change the system clock", "date -s 2000-01-01"),
    ("load a kernel module", "insmod /nonexistent.ko"),
    ("write /proc/sys", "echo 1 > /proc/sys/kernel/sysrq"),
    ("read kernel keys", "cat /proc/keys"),
    ("change the host name's domain", "domainname evil"),
]


def main() -> int:
    if os.geteuid() != 0:
        say("this demo needs root: run it with sudo")
        return 1
    result = minibox.run(Spec(argv=["sh", "-c", "id; grep -E 'Cap(Eff|Bnd)|NoNewPrivs|Seccomp:' /proc/self/status"]))
    heading("who am I inside?")
    for line in result.stdout.decode().strip().splitlines():
        say(f"  {line}")
    effective = int(result.stdout.decode().split("CapEff:")[1].split()[0], 16)
    show("capabilities kept", ", ".join(sorted(capabilities.names_of(effective))))
    pointer("the default set and how the masks are built", capabilities.capability_masks)

    heading("things root inside a container may not do")
    for what, command in ATTEMPTS:
        r = minibox.run(Spec(argv=["sh", "-c", f"{command} 2>&1; echo exit=$?"]))
        text = r.stdout.decode().strip().replace("\n", " | ")
        show(what, text[-110:])
    pointer("the default seccomp profile", seccomp.compile_profile)

    heading("the same mount with CAP_SYS_ADMIN added and seccomp off (don't do this)")
    with open("/proc/self/mountinfo") as f:
        host_before = f.read().splitlines()
    probe = "mount -t tmpfs none /mnt && echo mounted; grep -c tmpfs /proc/self/mountinfo"
    r = minibox.run(Spec(argv=["sh", "-c", probe],
                         cap_add=["SYS_ADMIN"], seccomp="unconfined"))
    show("result inside (then: tmpfs mounts it sees)", r.stdout.decode().strip().replace("\n", " | "))
    with open("/proc/self/mountinfo") as f:
        host_after = f.read().splitlines()
    new = [line.split()[4] for line in host_after if line not in host_before]
    show("the host's mount table", f"{len(host_before)} mounts before, {len(host_after)} after; "
                                   f"new: {', '.join(new) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
