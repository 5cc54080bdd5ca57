"""Boot-to-exit of /bin/true: minibox's VirtualMachine vs a hand-written QEMU command.

Both run the same guest: the same kernel (uncompressed PVH vmlinux), the same
initramfs (guest agent, modules, the Spec), the same rootfs shared by
virtiofsd.  The hand-written side is what one would type in a shell:
virtiofsd on a socket path, QEMU with null chardevs for the agent's ports,
letting QEMU exit on the guest's poweroff.  minibox adds the things a
library must do: the initramfs build, QMP, draining output, pause-then-quit.

    python bench/bench_vm.py [-n 10] [--rootfs DIR]

Prints the median of each side, the ratio, and QEMU's peak RSS per VM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import Row

from minibox.spec import Spec
from minibox.vm import agent, machine
from minibox.vm.kernel import ensure_kernel, modules_for
from minibox.vm.virtual_machine import (
    GUEST_MODULES,
    VirtualMachine,
    _default_rootfs,
    find_qemu,
    find_virtiofsd,
    guest_initramfs,
)


def run_minibox(spec: Spec) -> tuple[float, int]:
    t0 = time.perf_counter()
    vm = VirtualMachine(spec)
    try:
        vm.start()
        result = vm.wait()
    finally:
        vm.close()
    elapsed = time.perf_counter() - t0
    assert result.exit_code == 0, result
    return elapsed, result.usage.memory_peak_bytes or 0


def run_by_hand(spec: Spec, rootfs: str, workdir: Path, initrd: Path) -> tuple[float, int]:
    kernel = ensure_kernel()
    sock = workdir / "virtiofs.sock"
    mib = machine.memory_bytes(spec) >> 20
    command = [
        find_qemu(), "-nodefaults", "-no-user-config", "-display", "none",
        "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on,pit=off,pic=off", "-accel", "tcg",
        "-m", f"{mib}M", "-smp", "1",
        "-object", f"memory-backend-memfd,id=mem,size={mib}M,share=on", "-machine", "memory-backend=mem",
        "-global", "virtio-mmio.force-legacy=false",
        "-kernel", str(kernel.path), "-initrd", str(initrd), "-append", machine.kernel_cmdline(),
        "-serial", os.environ.get("BENCH_SERIAL", "null"), "-device", "virtio-serial-device",
        "-chardev", f"socket,id=fs,path={sock}",
        "-device", "vhost-user-fs-device,chardev=fs,tag=rootfs,queue-size=1024",
    ]
    for i, name in enumerate(machine.PORTS):
        command += ["-chardev", f"file,id=p{i},path=/dev/null", "-device", f"virtserialport,chardev=p{i},name={name}"]
    t0 = time.perf_counter()
    fsd = subprocess.Popen([find_virtiofsd(), f"--socket-path={sock}", "-o", f"source={rootfs}",
                            "-o", "cache=auto", "-o", "log_level=err"], stderr=subprocess.DEVNULL)
    while not sock.exists():
        time.sleep(0.001)
    qemu = subprocess.Popen(command)
    _, status, rusage = os.wait4(qemu.pid, 0)
    qemu.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - t0
    fsd.wait()
    assert qemu.returncode == 0, qemu.returncode
    return elapsed, rusage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


@dataclass
class VmTimings:
    """Interleaved boot-to-exit samples of both sides, in seconds, and peak RSS in bytes."""

    kernel: str
    initramfs_bytes: int
    mine: list[float]
    hand: list[float]
    rss_mine: list[int]
    rss_hand: list[int]


def measure(runs: int, rootfs: str | None = None) -> VmTimings:
    """Warm up once, then ``runs`` interleaved boots of each side."""
    rootfs = rootfs or _default_rootfs()
    spec = Spec(argv=["/bin/true"], rootfs=rootfs)
    kernel = ensure_kernel()
    image = guest_initramfs(spec, agent.build_agent(), modules_for(kernel, GUEST_MODULES), [], None)
    workdir = Path(tempfile.mkdtemp(prefix="minibox-bench-"))
    timings = VmTimings(f"{kernel.release} ({'PVH vmlinux' if kernel.pvh else 'bzImage'})", len(image),
                        [], [], [], [])
    try:
        initrd = workdir / "initrd.cpio"
        initrd.write_bytes(image)
        run_minibox(spec)  # warm up: agent build, kernel, accelerator verdict, page cache
        run_by_hand(spec, rootfs, workdir, initrd)
        for _ in range(runs):  # interleaved, so drift hits both sides alike
            t, rss = run_minibox(spec)
            timings.mine.append(t)
            timings.rss_mine.append(rss)
            t, rss = run_by_hand(spec, rootfs, workdir, initrd)
            timings.hand.append(t)
            timings.rss_hand.append(rss)
    finally:
        shutil.rmtree(workdir)
    return timings


def rows(runs: int) -> list[Row]:
    """The VM rows of bench/run.py's table (capped at 5 boots a side: each takes a second)."""
    t = measure(max(1, min(runs, 5)))
    m, h = statistics.median(t.mine), statistics.median(t.hand)
    return [
        Row("VirtualMachine boot-to-exit", m * 1000, key="vm:minibox", samples_ms=[x * 1000 for x in t.mine],
            notes=f"TCG, {t.kernel}; {m / h:.2f}x hand-written; peak RSS "
                  f"{statistics.median(t.rss_mine) / 2**20:.0f} MiB"),
        Row("hand-written qemu boot-to-exit", h * 1000, key="vm:hand", samples_ms=[x * 1000 for x in t.hand],
            notes=f"same kernel + initramfs; peak RSS {statistics.median(t.rss_hand) / 2**20:.0f} MiB"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=10, help="runs per side (default 10)")
    parser.add_argument("--rootfs", help="rootfs directory (default: minibox's busybox rootfs)")
    args = parser.parse_args()
    t = measure(args.n, args.rootfs)
    m, h = statistics.median(t.mine), statistics.median(t.hand)
    print(f"kernel {t.kernel}, initramfs {t.initramfs_bytes / 2**20:.1f} MiB, {args.n} runs each, TCG")
    print(f"{'':28}{'median':>10}{'min':>10}{'max':>10}{'peak RSS':>12}")
    print(f"{'minibox VirtualMachine':28}{m:>9.3f}s{min(t.mine):>9.3f}s{max(t.mine):>9.3f}s"
          f"{statistics.median(t.rss_mine) / 2**20:>9.0f} MiB")
    print(f"{'hand-written qemu':28}{h:>9.3f}s{min(t.hand):>9.3f}s{max(t.hand):>9.3f}s"
          f"{statistics.median(t.rss_hand) / 2**20:>9.0f} MiB")
    print(f"ratio minibox / hand-written: {m / h:.2f}x")


if __name__ == "__main__":
    main()
