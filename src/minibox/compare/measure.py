"""Measuring the same Spec as a container and as a microVM, here and now.

=====================  ==========================================================
isolation boundary     what separates the sandbox from the host (described), and
                       the kernel release seen *inside* each (``uname -r``, run)
accelerator            the VM's: KVM or TCG, and why (``VirtualMachine.accelerator``)
start-to-exit          N runs of ``/bin/true`` through ``minibox.run`` (a VM from its
                       template, restored), and for a VM N cold boots (``template=False``)
host memory            per idle sandbox running ``sleep``: the container's cgroup
                       charge (``Container.stats()``), the VM's QEMU RSS
                       (``VirtualMachine.stats()``, /proc/PID/status)
on-disk size           the rootfs (du), plus for a VM the guest kernel file and
                       the initramfs minibox builds for it
density                how many idle sandboxes started, and how long it took
=====================  ==========================================================

Every function fills :class:`~minibox.compare.report.Cell` values and
prints nothing on stdout; every sandbox started is closed again before
the function returns, also on an exception or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

from .. import procfs
from ..errors import MiniboxError
from ..sandbox import Sandbox
from ..spec import DEFAULT_NAMESPACES, Spec
from .peers import measure_peers
from .progress import Progress
from .report import SETTLE_SECONDS, Cell, Column, MiB, Report, fmt_bytes, timing_cell, why

#: At most this many VMs in the density test: each TCG guest is a busy QEMU
#: process and these hosts have 2 CPUs.
VM_DENSITY_MAX = 4
#: ... and never more than fit in this share of the host's available memory.
VM_MEMORY_SHARE = 0.5
#: How long idle sandboxes sit before their memory is read.
IDLE_SECONDS = {"container": 0.2, "vm": 1.0}


# --- small measuring helpers ---------------------------------------------------------------


def du_bytes(path: str | os.PathLike[str]) -> int:
    """Disk usage of a file or a tree, like ``du -s`` (allocated blocks, hard links once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    root = os.fspath(path)
    entries: Iterator[str]
    if os.path.isdir(root) and not os.path.islink(root):
        entries = (os.path.join(d, n) for d, dirs, files in os.walk(root) for n in [".", *files, *dirs])
    else:
        entries = iter([root])
    for entry in entries:
        try:
            st = os.lstat(entry)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key not in seen:
            seen.add(key)
            total += st.st_blocks * 512
    return total




def _virtiofsd_kib() -> tuple[int, int, int]:
    """(RSS KiB, PSS KiB, processes) of every virtiofsd this process started, with their children."""
    rss = pss = count = 0
    for helper in procfs.children(os.getpid()):
        if helper.comm != "virtiofsd":
            continue
        for p in [helper.pid, *(k.pid for k in procfs.children(helper.pid))]:
            rss += procfs.status_kib(p, "VmRSS") or 0
            pss += procfs.pss_kib(p) or 0
            count += 1
    return rss, pss, count


# --- the measurements ----------------------------------------------------------------


def _new_sandbox(kind: str, spec: Spec) -> Sandbox:
    if kind == "container":
        from ..container.container import Container

        return Container(spec, cgroup=True)  # a cgroup, so its memory can be read
    from ..vm.virtual_machine import VirtualMachine

    return VirtualMachine(spec)


def measure_identity(kind: str, column: Column) -> None:
    """Boundary, kernel release inside (``uname -r``) and, for a VM, the accelerator.

    This run doubles as the warm-up of the start-to-exit timings.
    """
    host = os.uname().release
    try:
        with _new_sandbox(kind, Spec(argv=["uname", "-r"])) as box:
            result = box.wait(timeout=120)
            accel = getattr(box, "accelerator", None)
            accel_reason = getattr(box, "accelerator_reason", "")
    except MiniboxError as e:
        reason = f"the sandbox did not run: {why(e)}"
        for metric in ("kernel_release", "accelerator", "boundary"):
            column.cells[metric] = Cell.missing(reason)
        return
    release = result.stdout.decode(errors="replace").strip()
    if result.exit_code == 0 and release:
        same = "the host's" if release == host else f"host: {host}"
        column.cells["kernel_release"] = Cell(release, "", f"{release} ({same})",
                                              note="printed by uname -r inside the sandbox")
    else:
        column.cells["kernel_release"] = Cell.missing(f"uname -r inside ended with {result.describe()}")
    if kind == "container":
        column.cells["boundary"] = Cell(
            "host kernel", "", "the host kernel: namespaces + cgroups", status="described",
            note="one kernel for host and container; namespaces " + ", ".join(DEFAULT_NAMESPACES)
                 + "; cgroups; capabilities, seccomp")
        column.cells["accelerator"] = Cell(
            "none", "", "none (host CPU, host kernel)", status="described",
            note="a container is a host process: its code runs natively on the host kernel")
    else:
        engine = {"kvm": "KVM", "tcg": "TCG"}.get(str(accel), str(accel))
        column.cells["boundary"] = Cell(
            "hypervisor", "", f"QEMU microvm ({engine}) + guest kernel", status="described",
            note="the guest has its own kernel; the host sees one QEMU process (+ virtiofsd)")
        column.cells["accelerator"] = Cell(str(accel), "", engine, note=accel_reason)


def measure_start_to_exit(kind: str, runs: int, progress: Progress, *, template: bool = True) -> Cell:
    """Median wall time of ``minibox.run(Spec(argv=["/bin/true"]), isolation=kind)``.

    A VM starts from its template (restored, not booted) unless ``template``
    is False: the cold boot, measured as its own row.
    """
    import minibox

    spec = Spec(argv=["/bin/true"])
    samples: list[float] = []
    if kind == "vm" and template and runs:
        with contextlib.suppress(MiniboxError):  # a failure shows in the timed runs
            minibox.run(spec, isolation="vm")    # builds the template if there is none yet: not timed
    progress.phase(f"start-to-exit: {kind}" + ("" if template else ", cold boot"), runs)
    for _ in range(runs):
        if kind == "container":
            time.sleep(SETTLE_SECONDS)
        t0 = time.perf_counter()
        try:
            result = minibox.run(spec, isolation=kind) if kind == "container" else \
                minibox.run(spec, isolation=kind, template=template)
        except MiniboxError as e:
            return Cell.missing(f"minibox.run failed: {why(e)}", "ms")
        elapsed = (time.perf_counter() - t0) * 1000
        if result.exit_code != 0:
            return Cell.missing(f"/bin/true ended with {result.describe()}", "ms")
        samples.append(elapsed)
        progress.advance()
    if not samples:
        return Cell.missing("--runs is 0", "ms")
    cell = timing_cell(samples)
    if kind == "container":
        cell.note += "; minibox.run(Spec(argv=['/bin/true'])) in this process, no limits (no cgroup)"
    elif template:
        cell.note += ("; minibox.run(Spec(argv=['/bin/true']), isolation='vm') in this process: restored from "
                      "the VM template (built before the first run), boot-free, to poweroff")
    else:
        cell.note += ("; minibox.run(..., isolation='vm', template=False) in this process: the guest kernel "
                      "boots, the rootfs is shared by virtiofs, to poweroff")
    return cell


def no_boot_cell() -> Cell:
    """The cold-boot row of a container: it has no boot of its own."""
    return Cell("no boot", "", "no boot", status="described",
                note="a container starts no kernel: its start-to-exit is the row above")


def vm_density_cap(requested: int) -> tuple[int, str]:
    """How many VMs the density test starts, and why that many."""
    from ..vm import machine

    per_vm = machine.DEFAULT_MEMORY + 64 * MiB  # guest RAM + QEMU itself, roughly
    available = procfs.mem_available()
    by_memory = int(available * VM_MEMORY_SHARE // per_vm) if available else VM_DENSITY_MAX
    cap = max(0, min(requested, VM_DENSITY_MAX, by_memory))
    if cap == requested:
        return cap, ""
    why = (f"capped at {cap}: at most {VM_DENSITY_MAX} VMs on this {os.cpu_count()}-CPU host"
           if cap == min(VM_DENSITY_MAX, requested) else
           f"capped at {cap}: {VM_MEMORY_SHARE:.0%} of MemAvailable / {per_vm // MiB} MiB per VM")
    return cap, why


def measure_density(kind: str, requested: int, progress: Progress) -> tuple[Cell, Cell]:
    """Start idle sandboxes (``sleep``) one after another; read each one's host memory.

    Returns (density cell, memory-per-idle-sandbox cell).  Every sandbox is
    closed again before this returns, also on an exception or Ctrl-C (the
    ExitStack closes each one; closing kills it and removes its cgroup or
    QEMU process).
    """
    cap_note = ""
    count = requested
    if kind == "vm":
        count, cap_note = vm_density_cap(requested)
    target = max(count, 1)  # memory needs at least one, even with --density 0
    spec = Spec(argv=["sleep", "3600"])
    boxes: list[Sandbox] = []
    failure = ""
    progress.phase(f"density: starting idle {kind}s", target)
    with contextlib.ExitStack() as stack:
        t0 = time.perf_counter()
        for _ in range(target):
            try:
                box = stack.enter_context(_new_sandbox(kind, spec))
            except MiniboxError as e:
                failure = why(e)
                break
            boxes.append(box)
            progress.advance()
        start_seconds = time.perf_counter() - t0
        time.sleep(IDLE_SECONDS[kind])
        memory: list[int] = []
        mem_failure = ""
        for box in boxes:
            try:
                stats = box.stats()
            except MiniboxError as e:
                mem_failure = why(e)
                continue
            if stats.memory_bytes:
                memory.append(stats.memory_bytes)
        fs_rss, fs_pss, fs_procs = _virtiofsd_kib() if kind == "vm" else (0, 0, 0)
        qemu_pids = [getattr(b, "pid", None) for b in boxes] if kind == "vm" else []
        qemu_pss = [p for p in (procfs.pss_kib(pid) for pid in qemu_pids if isinstance(pid, int)) if p]
        t1 = time.perf_counter()
    stop_seconds = time.perf_counter() - t1

    started = len(boxes)
    if count == 0:
        density = Cell.missing("--density 0: no density test asked for", "sandboxes")
    elif started == 0:
        density = Cell.missing(f"no {kind} started: {failure}", "sandboxes")
    else:
        notes = [f"started one after another: {start_seconds / started * 1000:,.0f} ms each",
                 f"all stopped again in {stop_seconds * 1000:,.0f} ms"]
        if cap_note:
            notes.insert(0, f"requested {requested}, {cap_note}")
        if failure:
            notes.append(f"stopped at the first failure: {failure}")
        density = Cell(started, "sandboxes", f"{started} of {requested} in {start_seconds:.2f} s",
                       note="; ".join(notes),
                       extra={"requested": requested, "attempted": target if count else 0,
                              "seconds": round(start_seconds, 4), "stop_seconds": round(stop_seconds, 4)})
    if not memory:
        reason = mem_failure or failure or "no memory figure was available"
        return density, Cell.missing(f"could not read it: {reason}", "bytes")
    med = int(statistics.median(memory))
    if kind == "container":
        mem = Cell(med, "bytes", f"{fmt_bytes(med)} (cgroup)",
                   note=f"median over {len(memory)} idle containers (sleep) of the memory their cgroup is "
                        f"charged ({_memory_counter()}); no runtime process stays behind")
    else:
        extra_note = ""
        if qemu_pss:
            extra_note += f"; QEMU PSS {fmt_bytes(statistics.median(qemu_pss) * 1024)} (shared pages split)"
        if fs_procs:
            per_vm = len(boxes) or 1
            extra_note += (f"; plus virtiofsd: {fmt_bytes(fs_rss * 1024 / per_vm)} RSS, "
                           f"{fmt_bytes(fs_pss * 1024 / per_vm)} PSS per VM")
        mem = Cell(med, "bytes", f"{fmt_bytes(med)} (QEMU RSS)",
                   note=f"median over {len(memory)} idle VMs (sleep) of QEMU's VmRSS, "
                        f"guest RAM {fmt_bytes(_guest_memory(spec))}{extra_note}",
                   extra={"virtiofsd_rss_bytes_per_vm": fs_rss * 1024 // max(len(boxes), 1),
                          "qemu_pss_bytes": int(statistics.median(qemu_pss) * 1024) if qemu_pss else None})
    mem.samples = [float(m) for m in memory]  # for the plot: one point per sandbox
    return density, mem


def _memory_counter() -> str:
    """Which file the container's memory figure comes from, with its caveat."""
    try:
        from ..container.cgroups import detect_layout

        version = detect_layout().version
    except (MiniboxError, OSError):
        return "memory.usage_in_bytes or memory.current"
    if version == 1:
        return ("cgroup v1 memory.usage_in_bytes, charged in per-CPU batches, a 'fuzz value' "
                "per the kernel's cgroup-v1/memory.rst 5.5")
    return "cgroup v2 memory.current"


def _guest_memory(spec: Spec) -> int:
    from ..vm import machine

    return machine.memory_bytes(spec)


def measure_disk(kind: str) -> Cell:
    """What each kind needs on disk: the rootfs; for a VM also its kernel and initramfs."""
    try:
        from ..images.busybox import default_rootfs

        rootfs = default_rootfs()
        root_size = du_bytes(rootfs)
    except (MiniboxError, OSError) as e:
        return Cell.missing(f"no rootfs: {why(e)}", "bytes")
    if kind == "container":
        return Cell(root_size, "bytes", f"{fmt_bytes(root_size)} (rootfs)",
                    note=f"du of the busybox rootfs {rootfs}", extra={"parts": {"rootfs": root_size}})
    try:
        from ..vm import agent
        from ..vm.kernel import ensure_kernel, modules_for
        from ..vm.virtual_machine import GUEST_MODULES, guest_initramfs

        kernel = ensure_kernel()
        kernel_size = du_bytes(kernel.path)
        modules = modules_for(kernel, GUEST_MODULES)
        agent_bin = agent.build_agent()
        initrd = len(guest_initramfs(Spec(argv=["/bin/true"]), agent_bin, modules, [], None))
    except (MiniboxError, OSError) as e:
        return Cell.missing(f"no guest kernel/agent: {why(e)}", "bytes")
    total = root_size + kernel_size + initrd
    return Cell(total, "bytes", f"{fmt_bytes(total)} (rootfs + kernel + initramfs)",
                note=(f"rootfs {fmt_bytes(root_size)} (the same directory, shared by virtiofs) + kernel "
                      f"{fmt_bytes(kernel_size)} ({kernel.path.name}, {'PVH vmlinux' if kernel.pvh else 'bzImage'}) "
                      f"+ initramfs {fmt_bytes(initrd)} (agent + {len(modules)} modules + config, "
                      "built into a memfd at each start)"),
                extra={"parts": {"rootfs": root_size, "kernel": kernel_size, "initramfs": initrd},
                       "kernel_path": str(kernel.path)})


# --- the whole comparison ----------------------------------------------------------------


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return None


def host_facts() -> dict[str, Any]:
    """The machine the figures were measured on: kernel, CPUs, memory, cgroups, QEMU."""
    facts: dict[str, Any] = {"kernel": os.uname().release, "machine": os.uname().machine,
                             "cpus": os.cpu_count(), "cpu_model": _cpu_model(),
                             "memory_total_bytes": procfs.mem_total(),
                             # a busy host stretches every timing: say how busy it was
                             "load_average_1min": round(os.getloadavg()[0], 1)}
    with contextlib.suppress(Exception):
        from ..container.cgroups import detect_layout

        facts["cgroups"] = str(detect_layout())
    with contextlib.suppress(Exception):
        from ..vm.virtual_machine import find_qemu, qemu_version

        facts["qemu"] = qemu_version(find_qemu())
    return facts


def measure(runs: int = 5, density: int = 10, peers: bool = False,
            progress: Progress | None = None) -> Report:
    """Run the whole comparison and return the :class:`Report`; no output on stdout."""
    progress = progress or Progress(enabled=False)
    runs, density = max(0, runs), max(0, density)
    report = Report(datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                    host_facts(), runs, density,
                    [Column("container", "container (minibox.Container)", "minibox"),
                     Column("vm", "microVM (minibox.VirtualMachine)", "minibox")])
    if os.geteuid() != 0:
        report.notes.append("not running as root: VMs need root here (virtiofsd), and so do cgroups")
    for column in report.columns:
        kind = column.key
        progress.phase(f"boot and uname -r: {kind}", 1)
        measure_identity(kind, column)
        progress.advance()
        column.cells["start_to_exit"] = measure_start_to_exit(kind, runs, progress)
        column.cells["start_cold"] = (measure_start_to_exit(kind, runs, progress, template=False)
                                      if kind == "vm" else no_boot_cell())
        progress.phase(f"on-disk size: {kind}", 1)
        column.cells["disk"] = measure_disk(kind)
        progress.advance()
        column.cells["density"], column.cells["memory_idle"] = measure_density(kind, density, progress)
    if peers:
        peer_columns, reason = measure_peers(runs, progress)
        report.columns += peer_columns
        if reason:
            report.notes.append(f"peers not measured: {reason}")
    return report

