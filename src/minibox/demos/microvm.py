"""Demo: the microVM boot -- what it takes to give one command its own kernel.

A container shares the host's kernel; a VM brings its own.  This demo walks
through everything minibox does to boot one: the accelerator probe (KVM or
TCG, and why), the guest kernel it found or provisioned, the initramfs it
writes (listed member by member), the QEMU command line of the running VM
(read back from /proc), QMP events as the VM is paused, resumed and shut
down, and the guest agent running commands inside.  The VM is closed on
every exit path, Ctrl-C included (the ``with`` block's ``close()`` kills
QEMU and virtiofsd).
"""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from typing import Any

from minibox import Spec
from minibox.vm import accel, agent, initramfs, kernel, machine, qmp
from minibox.vm.virtual_machine import GUEST_MODULES, VirtualMachine, guest_initramfs

from ._narrate import heading, pointer, say, show

MiB = 1 << 20
#: Every guest process, "user PID CMDLINE" or "kernel PID" (kernel threads have no cmdline).
_LIST_PROCESSES = ('for d in /proc/[0-9]*; do [ "${d#/proc/}" = $$ ] && continue; c=$(tr "\\0" " " < $d/cmdline); '
                   'if [ -n "$c" ]; then echo "user ${d#/proc/} $c"; else echo "kernel ${d#/proc/}"; fi; done')


class WatchedVM(VirtualMachine):
    """A VirtualMachine that also keeps a log of the QMP events QEMU sends it.

    The events are what :meth:`VirtualMachine._on_event` already receives;
    this only records them with a timestamp so the demo can show them.
    """

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self._seen = threading.Condition()
        self._epoch = time.monotonic()

    def _on_event(self, name: str, data: dict[str, Any]) -> None:
        with self._seen:
            self.events.append((time.monotonic() - self._epoch, name, data))
            self._seen.notify_all()
        super()._on_event(name, data)

    def wait_event(self, name: str, timeout: float = 10.0) -> bool:
        """Wait until QEMU has sent event ``name`` (at any time so far)."""
        with self._seen:
            return self._seen.wait_for(lambda: any(e[1] == name for e in self.events), timeout)


def cpio_members(image: bytes) -> list[tuple[str, int, int]]:
    """(name, st_mode, size) of each member of a newc archive; the inverse of initramfs.build."""
    members = []
    offset = 0
    while offset + 110 <= len(image):
        fields = [int(image[offset + 6 + 8 * i: offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_at = offset + 110
        name = image[name_at:name_at + namesize - 1].decode()
        if name == "TRAILER!!!":
            break
        data_at = name_at + namesize + (-(110 + namesize) % 4)
        members.append((name, mode, size))
        offset = data_at + size + (-size % 4)
    return members


def _kind(mode: int) -> str:
    return ("dir" if stat.S_ISDIR(mode) else "chr" if stat.S_ISCHR(mode) else
            "link" if stat.S_ISLNK(mode) else "file")


def qemu_cmdline(pid: int) -> list[str]:
    """The argv of a running process, from /proc/PID/cmdline."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]


def _print_argv(argv: list[str]) -> None:
    """One option and its value per line, shell style."""
    lines = [argv[0]]
    i = 1
    while i < len(argv):
        if argv[i].startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            value = argv[i + 1]
            if " " in value:
                value = f'"{value}"'
            lines.append(f"{argv[i]} {value}")
            i += 2
        else:
            lines.append(argv[i])
            i += 1
    print("    " + " \\\n      ".join(lines))


def _guest(vm: VirtualMachine, argv: list[str]) -> str:
    result = vm.exec(argv, timeout=30)
    text = (result.stdout or result.stderr).decode(errors="replace").strip()
    return text if result.exit_code == 0 else f"{text} ({result.describe()})"


def main() -> int:
    if os.geteuid() != 0:
        say("this demo needs root (virtiofsd shares the rootfs with the guest): run it with sudo")
        return 1
    say("A VM runs the same Spec a container runs, but under its own kernel: the host kernel")
    say("is no longer the boundary; QEMU and the CPU's (or QEMU's) virtualization are.")

    heading("1. the accelerator: KVM when it really works, TCG otherwise")
    problem = accel.kvm_device_problem()
    show("/dev/kvm", problem or f"opens, and KVM_GET_API_VERSION answers {accel.KVM_API_VERSION}")
    say("  That is necessary, not sufficient: a nested hypervisor may accept KVM and still hang")
    say("  a stock guest kernel, and QEMU's own kvm:tcg fallback does not notice.  So minibox boots")
    say(f"  the real kernel under KVM once per host boot and waits {accel.PROBE_SECONDS:g} s for a marker")
    say("  on the serial console; the verdict is cached.  MINIBOX_ACCEL=kvm|tcg overrides it.")
    pointer("cheap checks, the cache, then the probe", accel.choose)
    pointer("the probe boot itself", accel.probe_boot)

    heading("2. the guest kernel")
    info = kernel.ensure_kernel()
    show("host kernel (what a container sees)", os.uname().release)
    show("guest kernel release", info.release)
    show("found", f"{info.source} (Spec.kernel, else a Debian package in the state dir, else /boot)")
    show("bzImage", f"{info.bzimage} ({info.bzimage.stat().st_size / MiB:.1f} MiB, compressed)")
    if info.pvh:
        show("-kernel", f"{info.path} ({info.path.stat().st_size / MiB:.1f} MiB)")
        say("  the uncompressed vmlinux with a PVH entry note: QEMU jumps straight into 32-bit mode,")
        say("  with no real-mode setup and no decompression inside the (emulated) guest")
    else:
        show("-kernel", f"{info.path} (no PVH entry note: QEMU boots the bzImage the classic way)")
    pointer("reading the bzImage header and decompressing its payload", kernel.extract_vmlinux)
    pointer("where the kernel comes from", kernel.ensure_kernel)

    heading("3. the initramfs: the guest's first root file system")
    spec = Spec(argv=["sleep", "3600"], hostname="microvm-demo")
    agent_bin = agent.build_agent()
    modules = kernel.modules_for(info, GUEST_MODULES)
    image = guest_initramfs(spec, agent_bin, modules, [], None)
    show("size", f"{len(image) / MiB:.2f} MiB, cpio newc, uncompressed "
                 "(docs/vm.md: gzip cost +0.8 s of boot under TCG)")
    for name, mode, size in cpio_members(image):
        what = {"init": "the guest agent, static C, PID 1", "minibox/config": "the Spec, encoded",
                "dev/console": "char 5:1, so /init has a console"}.get(name, "")
        if name.startswith("minibox/modules/"):
            what = "a kernel module the agent loads with finit_module(2)"
        print(f"    {_kind(mode):<4} {oct(stat.S_IMODE(mode)):>6} {size:>9,}  /{name}  {what}".rstrip())
    say(f"  modules, in dependency order (from each .ko's depends= field): {', '.join(n for n, _ in modules)}")
    pointer("the members: agent, config, modules", guest_initramfs)
    pointer("the cpio newc writer", initramfs.build)
    pointer("the agent itself: csrc/agent/agent.c, compiled by", agent.build_agent)

    heading("4. boot")
    t0 = time.monotonic()
    with WatchedVM(spec) as vm:  # start() boots; close() runs on every way out of this block
        booted = time.monotonic() - t0
        show("start() returned after", f"{booted:.2f} s (the agent reported the command running)")
        show("accelerator", f"{vm.accelerator}: {vm.accelerator_reason}")
        qemu_pid = vm.pid
        show("QEMU pid", qemu_pid)
        say("  QEMU's command line, read back from /proc/PID/cmdline (fds are inherited socketpairs;")
        say("  /dev/fd/N is the initramfs in a memfd: nothing of this VM has a name on the host):")
        assert vm.pid is not None
        _print_argv(qemu_cmdline(vm.pid))
        pointer("how that command line is built", machine.qemu_argv)
        pointer("the kernel command line, and why each flag", machine.kernel_cmdline)

        heading("5. the guest agent runs commands inside")
        show("uname -r in the guest", _guest(vm, ["uname", "-r"]))
        show("hostname in the guest", _guest(vm, ["hostname"]))
        show("PID 1 of the guest", _guest(vm, ["cat", "/proc/1/comm"]))
        procs = _guest(vm, ["sh", "-c", _LIST_PROCESSES]).splitlines()
        user = [p.split(" ", 1)[1].strip() for p in procs if p.startswith("user ")]
        show("guest processes", f"{len(procs) - len(user)} kernel threads, and (pid cmdline) {' | '.join(user)}")
        show("guest RAM (QMP query-memory-size-summary)", f"{vm.guest_memory_bytes() / MiB:.0f} MiB")
        stats = vm.stats()
        show("what it costs the host (QEMU RSS)", f"{(stats.memory_bytes or 0) / MiB:.0f} MiB")
        say("  each exec is a frame on the minibox.control virtio-serial port: 'x' with the argv;")
        say("  the agent answers with 'O'/'E' output frames and an 'X' exit frame")
        pointer("exec over the control port", VirtualMachine.exec)
        pointer("the frame format", agent.frame)

        heading("6. QMP: pause and resume the whole machine")
        uptime_before = float(_guest(vm, ["cut", "-d", " ", "-f1", "/proc/uptime"]))
        host_before = time.monotonic()
        cpu_before = vm.stats().cpu_seconds or 0.0
        vm.pause()
        show("QMP 'stop'", "STOP event received" if vm.wait_event("STOP") else "no STOP event within 10 s")
        time.sleep(1.0)
        show("QEMU CPU time used during 1 s paused", f"{(vm.stats().cpu_seconds or 0.0) - cpu_before:.2f} s")
        vm.resume()
        show("QMP 'cont'", "RESUME event received" if vm.wait_event("RESUME") else "no RESUME event within 10 s")
        uptime_after = float(_guest(vm, ["cut", "-d", " ", "-f1", "/proc/uptime"]))
        show("host time passed", f"{time.monotonic() - host_before:.2f} s")
        show("guest uptime advanced", f"{uptime_after - uptime_before:.2f} s (its clock stood still while paused)")
        pointer("QMP over qemu.qmp, on a private event loop", qmp.Monitor)

        heading("7. the end: the command exits, the agent reports it, QEMU is killed")
        vm.kill(signal.SIGTERM)
        result = vm.wait(timeout=30)
        show("result", result.describe())
        say("  the agent saw its child die, ended the guest's other processes, synced, and sent 'X'")
        say("  with the bytes its stdout and stderr ports carried; once minibox had read that many,")
        say("  nothing the guest could still do mattered, so it SIGKILLed QEMU instead of waiting")
        say("  for a poweroff (a guest that cannot count still powers off, and QMP 'quit' ends it)")
        pointer("wait(): drain, then quit", VirtualMachine.wait)
    show(f"/proc/{qemu_pid} after close()", "gone: QEMU has exited" if not os.path.exists(f"/proc/{qemu_pid}")
         else "still there")
    heading("QMP events, as QEMU sent them")
    for at, name, data in vm.events:
        print(f"    {at:7.2f} s  {name:<8} {data if data else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
