"""Teaching demos: each one shows a primitive at work, narrating as it goes.

Run one with ``minibox demo NAME`` or ``python -m minibox.demos.NAME`` (as
root).  Every demo cleans up after itself, also on Ctrl-C, and points at the
source lines that do the work.
"""

from __future__ import annotations

import importlib

DEMOS: dict[str, str] = {
    "namespaces": "pid, uts, mnt, net, ipc, cgroup, time and user, one at a time, then seen from the host",
    "cgroups": "an OOM kill, a fork bomb contained, half a CPU, pause and resume",
    "hardening": "what root inside a default container may not do, and why",
    "microvm": "a microVM boot: accelerator probe, guest kernel, initramfs, QEMU argv, QMP events, agent",
    "compare": "containers vs microVMs measured on this machine, and what the numbers mean",
    "networking": "a container and a VM talking over one bridge: a veth into a namespace, a tap into a guest",
}


def run_demo(name: str) -> int:
    module = importlib.import_module(f"minibox.demos.{name}")
    try:
        return int(module.main())
    except KeyboardInterrupt:
        print("\ninterrupted; everything the demo created has been removed")
        return 130
