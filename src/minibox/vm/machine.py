"""The QEMU command line: a Spec turned into a microVM.

QEMU's ``microvm`` machine type (docs/system/i386/microvm.rst) is a PC
without the PC: no PCI, no legacy firmware tables beyond what Linux needs, a
tiny firmware (qboot) or none at all when the kernel has a PVH entry.  Its
devices are virtio-mmio, found by the guest through ACPI.  For a guest that
lives for one command that is the right trade: less to emulate means a
faster boot, which under TCG is the whole cost of a VM.

Every channel to the guest is a file descriptor QEMU inherits
(``-chardev socket,fd=N``): QMP, the serial console, the three
virtio-serial ports of the guest agent and the virtiofs vhost-user sockets.
Nothing gets a path on the host, so nothing can be raced for or left behind.

Sizing: ``-m`` comes from ``limits.memory`` (default 256 MiB, minimum
:data:`MIN_MEMORY`, below which the guest kernel cannot unpack itself and the
initramfs); ``-smp`` is ``ceil(limits.cpus)``: a VM has whole virtual CPUs,
so 0.5 CPU becomes one vCPU (QEMU could be throttled further with a cgroup;
minibox does not do that yet).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from ..errors import SpecError
from ..spec import Spec

#: The smallest guest minibox boots.  Measured with the Debian 6.1 cloud
#: kernel: 64 and 72 MiB panic during boot ("System is deadlocked on
#: memory"), 80 MiB boots with 45 MiB left for processes; 96 MiB leaves a
#: margin for initramfs growth and bridged networking.
MIN_MEMORY = 96 << 20
#: What a VM gets when the Spec sets no memory limit.
DEFAULT_MEMORY = 256 << 20
#: virtio-serial port names the guest agent looks for.
PORTS = ("minibox.control", "minibox.stdout", "minibox.stderr")


@lru_cache(maxsize=1)
def host_tsc_khz() -> int | None:
    """The host TSC frequency in kHz, for the guest's ``tsc_early_khz=``.

    microvm has no PIT/HPET a TCG guest can calibrate the TSC against
    quickly, and without this hint it can hang calibrating.  On hosts with
    ``constant_tsc`` the "cpu MHz" line of /proc/cpuinfo is the TSC rate.
    """
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return None
    match = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
    return int(float(match.group(1)) * 1000) if match else None


def memory_bytes(spec: Spec) -> int:
    """Guest RAM from ``limits.memory``, rounded up to whole MiB; SpecError below the minimum."""
    size = spec.limits.memory_bytes or DEFAULT_MEMORY
    if size < MIN_MEMORY:
        raise SpecError(
            "limits.memory",
            f"a VM needs at least {MIN_MEMORY >> 20}M for the guest kernel and its initramfs; "
            f"got {size >> 20}M",
        )
    return -(-size // (1 << 20)) << 20


def vcpus(spec: Spec) -> int:
    """Whole virtual CPUs: ``ceil(limits.cpus)``, default 1."""
    return max(1, math.ceil(spec.limits.cpus)) if spec.limits.cpus else 1


def kernel_cmdline(extra: Sequence[str] = ()) -> str:
    """A command line tuned for a fast, quiet, one-shot boot.

    ``quiet`` keeps the slow emulated UART out of the boot path;
    ``cryptomgr.notests`` skips the crypto self-tests (the slowest initcall
    here); ``tsc_early_khz`` avoids TSC calibration; ``panic=-1`` reboots
    at once on a panic, which ``-action reboot=shutdown`` turns into a
    SHUTDOWN event the host sees; ``reboot=t`` picks the triple-fault reboot
    microvm can do.
    """
    args = ["console=ttyS0", "quiet", "cryptomgr.notests", "panic=-1", "reboot=t",
            "i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd", "nokaslr", "random.trust_cpu=on"]
    khz = host_tsc_khz()
    if khz:
        args.append(f"tsc_early_khz={khz}")
    return " ".join([*args, *extra])


@dataclass
class MachineConfig:
    """Everything QEMU needs to know, already resolved to files and fds."""

    qemu: str
    kernel: str
    initrd: str
    cmdline: str
    memory: int
    cpus: int = 1
    accel: str = "tcg"
    machine: str = "microvm"
    qmp_fd: int | None = None
    console_fd: int | None = None
    port_fds: Sequence[tuple[str, int]] = ()      # (port name, fd)
    virtiofs_fds: Sequence[tuple[str, int]] = ()  # (tag, fd)
    tap_fd: int | None = None                     # a tap on the minibox bridge (vm/network.py)
    mac: str = ""                                 # the guest NIC's MAC address
    extra: list[str] = field(default_factory=list)


#: QEMU confines itself once it has opened what it needs (qemu(1), "-sandbox"
#: and "-runas"): a seccomp filter refusing obsolete system calls, spawning
#: programs and resource-control calls, and a switch to the unprivileged user
#: nobody, so that a guest that breaks the device model does not find root
#: there.  ``elevateprivileges=deny`` would also refuse set*uid, but QEMU
#: installs the filter before it drops to ``-runas``, and then dies of it.
SANDBOX_ARGS: list[str] = ["-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny", "-runas", "nobody"]


def qemu_argv(cfg: MachineConfig) -> list[str]:
    """The QEMU command line for ``cfg``."""
    mib = cfg.memory >> 20
    argv = [cfg.qemu, "-nodefaults", "-no-user-config", "-display", "none"]
    if cfg.machine == "microvm":
        # rtc stays on: without it the guest kernel waits ~3 s here.
        argv += ["-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on,pit=off,pic=off"]
    else:
        argv += ["-M", cfg.machine]
    if cfg.accel == "kvm":
        argv += ["-accel", "kvm", "-cpu", "host"]
    else:
        argv += ["-accel", "tcg"]
    argv += ["-m", f"{mib}M", "-smp", str(cfg.cpus)]
    if cfg.virtiofs_fds:
        # vhost-user needs guest RAM the backend (virtiofsd) can map too.
        argv += ["-object", f"memory-backend-memfd,id=mem,size={mib}M,share=on",
                 "-machine", "memory-backend=mem"]
        if cfg.machine == "microvm":
            argv += ["-global", "virtio-mmio.force-legacy=false"]
    argv += ["-kernel", cfg.kernel, "-initrd", cfg.initrd, "-append", cfg.cmdline]
    # A poweroff pauses QEMU instead of ending it, so that the host drains
    # every byte of output before it says `quit`; a reboot (panic=-1) is a shutdown.
    argv += ["-action", "reboot=shutdown,shutdown=pause"]
    argv += SANDBOX_ARGS
    if cfg.qmp_fd is not None:
        argv += ["-chardev", f"socket,id=qmp,fd={cfg.qmp_fd}", "-mon", "chardev=qmp,mode=control"]
    if cfg.console_fd is not None:
        argv += ["-chardev", f"socket,id=console,fd={cfg.console_fd}", "-serial", "chardev:console"]
    if cfg.port_fds:
        bus = "virtio-serial-device" if cfg.machine == "microvm" else "virtio-serial-pci"
        argv += ["-device", f"{bus},max_ports={len(cfg.port_fds) + 1}"]
        for i, (name, fd) in enumerate(cfg.port_fds):
            argv += ["-chardev", f"socket,id=port{i},fd={fd}",
                     "-device", f"virtserialport,chardev=port{i},name={name}"]
    fs_dev = "vhost-user-fs-device" if cfg.machine == "microvm" else "vhost-user-fs-pci"
    for i, (tag, fd) in enumerate(cfg.virtiofs_fds):
        argv += ["-chardev", f"socket,id=fs{i},fd={fd}",
                 "-device", f"{fs_dev},chardev=fs{i},tag={tag},queue-size=1024"]
    if cfg.tap_fd is not None:
        # QEMU's -netdev tap with an inherited fd (QEMU docs, "-netdev tap"):
        # QEMU neither creates nor configures the tap, it only moves frames.
        # microvm has no PCI: the NIC is a virtio-mmio device.
        nic = "virtio-net-device" if cfg.machine == "microvm" else "virtio-net-pci"
        argv += ["-netdev", f"tap,id=n0,fd={cfg.tap_fd}",
                 "-device", f"{nic},netdev=n0" + (f",mac={cfg.mac}" if cfg.mac else "")]
    return argv + cfg.extra
