"""Demo: containers vs microVMs, measured here -- and what the numbers mean.

Runs ``minibox compare`` with a small N (a couple of runs, three idle
sandboxes of each kind), prints its table, then reads it back row by row:
why the kernel release differs, where a VM's seconds go, why an idle
container costs kilobytes and an idle VM hundreds of megabytes.  Every
number printed is one this run measured; a row that could not be measured
says so.  All sandboxes are closed by the time the table appears (also on
Ctrl-C: the comparison holds them in context managers).
"""

from __future__ import annotations

import os

from minibox import compare
from minibox.container import cgroups, container
from minibox.vm import accel, machine, virtual_machine

from ._narrate import heading, pointer, say, show

RUNS = 2
DENSITY = 3
MiB = 1 << 20


def _value(report: compare.Report, column: str, metric: str) -> float | None:
    col = report.column(column)
    if col is None:
        return None
    cell = col.cell(metric)
    return float(cell.value) if cell.measured and isinstance(cell.value, (int, float)) else None


def _cell(report: compare.Report, column: str, metric: str) -> compare.Cell:
    col = report.column(column)
    return col.cell(metric) if col else compare.Cell.missing("no such column")


def _missing(report: compare.Report, column: str, metric: str) -> str:
    col = report.column(column)
    cell = col.cell(metric) if col else compare.Cell.missing("no such column")
    return f"not measured: {cell.reason}"


def main() -> int:
    if os.geteuid() != 0:
        say("this demo needs root (cgroups for the containers, virtiofsd for the VMs): run it with sudo")
        return 1
    say("The same Spec, run as a container and as a microVM, timed and weighed on this machine.")
    say(f"(a short run: {RUNS} timed runs per kind, {DENSITY} idle sandboxes of each; "
        "'minibox compare' does more)")
    pointer("the measurements", compare.measure)
    progress = compare.Progress(enabled=True)
    try:
        report = compare.measure(runs=RUNS, density=DENSITY, progress=progress)
    finally:
        progress.close()
    print()
    print(compare.render_plain(report))

    heading("the boundary: whose kernel answers the system calls")
    for kind in ("container", "vm"):
        cell = _cell(report, kind, "kernel_release")
        show(f"uname -r in the {kind}", cell.value if cell.measured else f"not measured: {cell.reason}")
    show("the host", os.uname().release)
    say("  The container's answer is the host's: it is a host process in new namespaces, and every")
    say("  system call it makes reaches the host kernel, so a kernel bug is a way out.  The VM's")
    say("  system calls reach the guest kernel; to get out it must break the hypervisor (QEMU + KVM,")
    say("  or QEMU's TCG emulator here) instead.  docs/threat-model.md weighs the two.")
    pointer("a container's kernel_release: the host's", vars(container.Container)["kernel_release"].fget)

    heading("start-to-exit: creating namespaces vs booting a computer")
    ct, vm = _value(report, "container", "start_to_exit"), _value(report, "vm", "start_to_exit")
    cold = _value(report, "vm", "start_cold")
    if ct is not None and vm is not None:
        show("container", f"{ct:.2f} ms: clone3() with namespace flags, pivot_root, execve")
        if cold is not None:
            show("VM, cold boot", f"{cold:,.0f} ms: QEMU starts, the guest kernel boots, the agent loads "
                                  "modules, mounts the rootfs over virtiofs, runs /bin/true, reports its exit")
        show("VM, from its template", f"{vm:,.0f} ms: QEMU restores a guest saved once booted (RAM shared "
                                      "read-only, device state loaded), the agent sets the clock, reseeds "
                                      "the RNG, runs /bin/true, reports its exit; QEMU is then killed")
        show("ratio", f"{vm / ct:,.0f}x from the template" + (f", {cold / ct:,.0f}x cold" if cold is not None else ""))
        say("  docs/vm.md, \"Snapshots and templates\": what a clone shares and what it must not inherit.")
        engine = _cell(report, "vm", "accelerator").value
        if engine == "tcg":
            say("  Under TCG every guest instruction is translated by QEMU: the boot is pure CPU work.")
            say("  With a working KVM the same boot would run on the CPU directly; this host's /dev/kvm")
            say("  could not boot the guest (the accelerator row says why).")
            pointer("the accelerator probe", accel.choose)
    else:
        say(f"  container: {_missing(report, 'container', 'start_to_exit')}")
        say(f"  VM: {_missing(report, 'vm', 'start_to_exit')}")

    heading("memory: what an idle sandbox costs the host")
    ct, vm = _value(report, "container", "memory_idle"), _value(report, "vm", "memory_idle")
    if ct is not None:
        show("container", f"{ct / 1024:,.0f} KiB charged to its cgroup: the sleeping process's own pages")
        pointer("reading the cgroup's memory counters", cgroups.Cgroup.stats)
    else:
        say(f"  container: {_missing(report, 'container', 'memory_idle')}")
    if vm is not None:
        show("VM", f"{vm / MiB:,.0f} MiB resident in QEMU: the guest RAM it touched (kernel, page cache),"
                   " the kernel image, the TCG code cache, QEMU itself")
        say(f"  The guest was given {machine.DEFAULT_MEMORY // MiB} MiB; a VM's memory is reserved for a whole")
        say("  kernel, where a container's is only what its processes use.")
        pointer("QEMU's RSS from /proc/PID/status", virtual_machine.VirtualMachine.stats)
    else:
        say(f"  VM: {_missing(report, 'vm', 'memory_idle')}")

    heading("disk and density")
    ct, vm = _value(report, "container", "disk"), _value(report, "vm", "disk")
    if ct is not None and vm is not None:
        show("on disk", f"container {ct / MiB:.1f} MiB (the rootfs), VM {vm / MiB:.1f} MiB: the same rootfs"
                        " plus a kernel and an initramfs")
    ct_col, vm_col = report.column("container"), report.column("vm")
    for col in (ct_col, vm_col):
        if col is not None:
            cell = col.cell("density")
            show(f"density, {col.key}", cell.text if cell.measured else f"not measured: {cell.reason}")
    say("  Containers are limited by what their processes use; VMs by the RAM and CPU each guest")
    say("  kernel needs, which is why 'minibox compare' caps the VM count on a small host.")
    say("\nEvery container and VM started for these numbers has been stopped and removed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
