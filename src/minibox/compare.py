"""``minibox compare``: containers against microVMs, measured live on this machine.

The classic "containers vs VMs" table is usually folklore: a container
starts in milliseconds, a VM in seconds; a container costs a few hundred
KiB, a VM hundreds of MiB.  This module turns each line of that table into
a measurement of the *same* :class:`~minibox.Spec` run both ways, here and
now:

=====================  ==========================================================
isolation boundary     what separates the sandbox from the host (described), and
                       the kernel release seen *inside* each (``uname -r``, run)
accelerator            the VM's: KVM or TCG, and why (``VirtualMachine.accelerator``)
start-to-exit          median of N runs of ``/bin/true`` through ``minibox.run``
host memory            per idle sandbox running ``sleep``: the container's cgroup
                       charge (``Container.stats()``), the VM's QEMU RSS
                       (``VirtualMachine.stats()``, /proc/PID/status)
on-disk size           the rootfs (du), plus for a VM the guest kernel file and
                       the initramfs minibox builds for it
density                how many idle sandboxes started, and how long it took
=====================  ==========================================================

``--peers`` adds the start-to-exit of crun, runc and bwrap, timed by the
benchmark's own peer runner (bench/peers.py) when minibox runs from a
source checkout.

The rule: **no number that was not measured**.  Every value is a
:class:`Cell` that is either measured (value, unit, how) or carries the
reason it could not be measured, and all three renderings (a table on a
terminal, ``--json``, ``--markdown``) say so.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procfs
from .errors import MiniboxError
from .sandbox import Sandbox
from .spec import DEFAULT_NAMESPACES, Spec

MiB = 1 << 20
#: At most this many VMs in the density test: each TCG guest is a busy QEMU
#: process and these hosts have 2 CPUs.
VM_DENSITY_MAX = 4
#: ... and never more than fit in this share of the host's available memory.
VM_MEMORY_SHARE = 0.5
#: Idle before each container/peer sample, so that cgroup v1's RCU state is
#: cold for every row alike (bench/README.md, "Settle time").
SETTLE_SECONDS = 0.06
#: How long idle sandboxes sit before their memory is read.
IDLE_SECONDS = {"container": 0.2, "vm": 1.0}

#: (key, label) of the table's rows, in order.
METRICS: tuple[tuple[str, str], ...] = (
    ("boundary", "isolation boundary"),
    ("kernel_release", "kernel inside (uname -r)"),
    ("accelerator", "accelerator"),
    ("start_to_exit", "start-to-exit, /bin/true (median)"),
    ("memory_idle", "host memory per idle sandbox"),
    ("disk", "on-disk size needed"),
    ("density", "density: idle sandboxes started"),
)
#: Metrics with a "VM ÷ container" ratio (density: of the time to start one).
RATIO_METRICS = ("start_to_exit", "memory_idle", "disk", "density")
#: The multiplication sign of the ratio columns.
TIMES = "\u00d7"
PEERS = (("crun", "crun run"), ("runc", "runc run"), ("bwrap", "bwrap --unshare-all"))


# --- the data ------------------------------------------------------------------------


@dataclass
class Cell:
    """One value of the table: measured (``reason`` None) or not, and why.

    ``status`` is "measured" for numbers and observations taken in this
    run, "described" for text that follows from the configuration (the
    isolation boundary), "not measured" otherwise.
    """

    value: float | int | str | None
    unit: str = ""
    text: str = ""
    note: str = ""
    status: str = "measured"
    reason: str | None = None
    samples: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return self.status != "not measured"

    @classmethod
    def missing(cls, reason: str, unit: str = "") -> Cell:
        return cls(None, unit, "not measured", status="not measured", reason=reason)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "unit": self.unit or None, "status": self.status}
        if self.reason is not None:
            out["reason"] = self.reason
        if self.note:
            out["note"] = self.note
        if self.samples:
            out["samples"] = [round(s, 3) for s in self.samples]
        out.update(self.extra)
        return out


@dataclass
class Column:
    """One sandbox kind: a row of the JSON, a column of the table."""

    key: str
    label: str
    kind: str  # "minibox" | "peer"
    cells: dict[str, Cell] = field(default_factory=dict)

    def cell(self, metric: str) -> Cell:
        return self.cells.get(metric) or Cell.missing("not part of this comparison")


@dataclass
class Report:
    date: str
    host: dict[str, Any]
    runs: int
    density: int
    columns: list[Column]
    notes: list[str] = field(default_factory=list)

    def column(self, key: str) -> Column | None:
        return next((c for c in self.columns if c.key == key), None)

    def peers_present(self) -> bool:
        return any(c.kind == "peer" for c in self.columns)

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": "minibox compare",
            "date": self.date,
            "host": self.host,
            "parameters": {"runs": self.runs, "density": self.density},
            "metrics": dict(METRICS),
            "rows": [{"name": c.key, "label": c.label, "kind": c.kind,
                      "values": {k: c.cell(k).to_json() for k, _ in METRICS}} for c in self.columns],
            "ratios_vm_over_container": {m: ratio(self, m) for m in RATIO_METRICS},
            "notes": self.notes,
        }


def _number(cell: Cell, metric: str) -> float | None:
    """The cell's value as a number to compare; for density, the seconds per sandbox started."""
    if not cell.measured or not isinstance(cell.value, (int, float)) or cell.value <= 0:
        return None
    if metric == "density":
        seconds = cell.extra.get("seconds")
        return float(seconds) / cell.value if isinstance(seconds, (int, float)) and seconds > 0 else None
    return float(cell.value)


def ratio(report: Report, metric: str) -> float | None:
    """VM ÷ container, only when both were measured (density: time to start one)."""
    ct, vm = report.column("container"), report.column("vm")
    if ct is None or vm is None or metric not in RATIO_METRICS:
        return None
    a, b = _number(ct.cell(metric), metric), _number(vm.cell(metric), metric)
    return None if a is None or b is None else b / a


# --- progress on stderr ----------------------------------------------------------------


class Progress:
    """A progress bar on stderr when it is a terminal (rich), plain lines otherwise."""

    def __init__(self, enabled: bool = True) -> None:
        self._enabled = enabled
        self._tty = sys.stderr.isatty()
        self._rich: Any = None
        self._task: Any = None
        self._label = ""
        self._done = 0
        self._total = 0
        if enabled and self._tty:
            try:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
                from rich.progress import Progress as RichProgress
            except ImportError:
                return
            self._rich = RichProgress(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self._rich.start()

    def phase(self, label: str, total: int) -> None:
        self._end_plain()
        self._label, self._done, self._total = label, 0, total
        if not self._enabled:
            return
        if self._rich is not None:
            if self._task is not None:
                self._rich.remove_task(self._task)
            self._task = self._rich.add_task(label, total=total)
        elif self._tty:
            self._draw()
        else:
            print(f"minibox compare: {label} ({total})", file=sys.stderr, flush=True)

    def advance(self) -> None:
        self._done += 1
        if not self._enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, advance=1)
        elif self._tty:
            self._draw()

    def _draw(self) -> None:
        print(f"\r{self._label:<44} {self._done}/{self._total}", end="", file=sys.stderr, flush=True)

    def _end_plain(self) -> None:
        if self._enabled and self._rich is None and self._tty and self._total:
            print(file=sys.stderr, flush=True)
            self._total = 0

    def close(self) -> None:
        self._end_plain()
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


# --- small measuring helpers ---------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def timing_cell(samples_ms: Sequence[float]) -> Cell:
    med = statistics.median(samples_ms)
    spread = f"p25-p75 {_fmt_ms(_percentile(samples_ms, 0.25))}-{_fmt_ms(_percentile(samples_ms, 0.75))}"
    return Cell(med, "ms", f"{_fmt_ms(med)} ms", note=f"median of {len(samples_ms)} runs, {spread} ms",
                samples=list(samples_ms))


def _fmt_ms(ms: float) -> str:
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _fmt_bytes(n: float) -> str:
    if n >= 100 * MiB:
        return f"{n / MiB:,.0f} MiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n / 1024:.0f} KiB"


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


def _proc_status_kib(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _pss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _virtiofsd_kib() -> tuple[int, int, int]:
    """(RSS KiB, PSS KiB, processes) of every virtiofsd this process started, with their children."""
    rss = pss = count = 0
    for helper in procfs.children(os.getpid()):
        if helper.comm != "virtiofsd":
            continue
        for p in [helper.pid, *(k.pid for k in procfs.children(helper.pid))]:
            rss += _proc_status_kib(p, "VmRSS") or 0
            pss += _pss_kib(p) or 0
            count += 1
    return rss, pss, count


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# --- the measurements ----------------------------------------------------------------


def _new_sandbox(kind: str, spec: Spec) -> Sandbox:
    if kind == "container":
        from .container.container import Container

        return Container(spec, cgroup=True)  # a cgroup, so its memory can be read
    from .vm.virtual_machine import VirtualMachine

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
        reason = f"the sandbox did not run: {_why(e)}"
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


def measure_start_to_exit(kind: str, runs: int, progress: Progress) -> Cell:
    """Median wall time of ``minibox.run(Spec(argv=["/bin/true"]), isolation=kind)``."""
    import minibox

    spec = Spec(argv=["/bin/true"])
    samples: list[float] = []
    progress.phase(f"start-to-exit: {kind}", runs)
    for _ in range(runs):
        if kind == "container":
            time.sleep(SETTLE_SECONDS)
        t0 = time.perf_counter()
        try:
            result = minibox.run(spec, isolation=kind)
        except MiniboxError as e:
            return Cell.missing(f"minibox.run failed: {_why(e)}", "ms")
        elapsed = (time.perf_counter() - t0) * 1000
        if result.exit_code != 0:
            return Cell.missing(f"/bin/true ended with {result.describe()}", "ms")
        samples.append(elapsed)
        progress.advance()
    if not samples:
        return Cell.missing("--runs is 0", "ms")
    cell = timing_cell(samples)
    cell.note += "; minibox.run(Spec(argv=['/bin/true'])) in this process" + (
        ", no limits (no cgroup)" if kind == "container" else ", boot to poweroff")
    return cell


def vm_density_cap(requested: int) -> tuple[int, str]:
    """How many VMs the density test starts, and why that many."""
    from .vm import machine

    per_vm = machine.DEFAULT_MEMORY + 64 * MiB  # guest RAM + QEMU itself, roughly
    available = _mem_available()
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
                failure = _why(e)
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
                mem_failure = _why(e)
                continue
            if stats.memory_bytes:
                memory.append(stats.memory_bytes)
        fs_rss, fs_pss, fs_procs = _virtiofsd_kib() if kind == "vm" else (0, 0, 0)
        qemu_pids = [getattr(b, "pid", None) for b in boxes] if kind == "vm" else []
        qemu_pss = [p for p in (_pss_kib(pid) for pid in qemu_pids if isinstance(pid, int)) if p]
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
        why = mem_failure or failure or "no memory figure was available"
        return density, Cell.missing(f"could not read it: {why}", "bytes")
    med = int(statistics.median(memory))
    if kind == "container":
        mem = Cell(med, "bytes", f"{_fmt_bytes(med)} (cgroup)",
                   note=f"median over {len(memory)} idle containers (sleep) of the memory their cgroup is "
                        f"charged ({_memory_counter()}); no runtime process stays behind")
    else:
        extra_note = ""
        if qemu_pss:
            extra_note += f"; QEMU PSS {_fmt_bytes(statistics.median(qemu_pss) * 1024)} (shared pages split)"
        if fs_procs:
            per_vm = len(boxes) or 1
            extra_note += (f"; plus virtiofsd: {_fmt_bytes(fs_rss * 1024 / per_vm)} RSS, "
                           f"{_fmt_bytes(fs_pss * 1024 / per_vm)} PSS per VM")
        mem = Cell(med, "bytes", f"{_fmt_bytes(med)} (QEMU RSS)",
                   note=f"median over {len(memory)} idle VMs (sleep) of QEMU's VmRSS, "
                        f"guest RAM {_fmt_bytes(_guest_memory(spec))}{extra_note}",
                   extra={"virtiofsd_rss_bytes_per_vm": fs_rss * 1024 // max(len(boxes), 1),
                          "qemu_pss_bytes": int(statistics.median(qemu_pss) * 1024) if qemu_pss else None})
    return density, mem


def _memory_counter() -> str:
    """Which file the container's memory figure comes from, with its caveat."""
    try:
        from .container.cgroups import detect_layout

        version = detect_layout().version
    except (MiniboxError, OSError):
        return "memory.usage_in_bytes or memory.current"
    if version == 1:
        return ("cgroup v1 memory.usage_in_bytes, charged in per-CPU batches, a 'fuzz value' "
                "per the kernel's cgroup-v1/memory.rst 5.5")
    return "cgroup v2 memory.current"


def _guest_memory(spec: Spec) -> int:
    from .vm import machine

    return machine.memory_bytes(spec)


def measure_disk(kind: str) -> Cell:
    """What each kind needs on disk: the rootfs; for a VM also its kernel and initramfs."""
    try:
        from .images.busybox import default_rootfs

        rootfs = default_rootfs()
        root_size = du_bytes(rootfs)
    except (MiniboxError, OSError) as e:
        return Cell.missing(f"no rootfs: {_why(e)}", "bytes")
    if kind == "container":
        return Cell(root_size, "bytes", f"{_fmt_bytes(root_size)} (rootfs)",
                    note=f"du of the busybox rootfs {rootfs}", extra={"parts": {"rootfs": root_size}})
    try:
        from .vm import agent
        from .vm.kernel import ensure_kernel, modules_for
        from .vm.virtual_machine import GUEST_MODULES, guest_initramfs

        kernel = ensure_kernel()
        kernel_size = du_bytes(kernel.path)
        modules = modules_for(kernel, GUEST_MODULES)
        agent_bin = agent.build_agent()
        initrd = len(guest_initramfs(Spec(argv=["/bin/true"]), agent_bin, modules, [], None))
    except (MiniboxError, OSError) as e:
        return Cell.missing(f"no guest kernel/agent: {_why(e)}", "bytes")
    total = root_size + kernel_size + initrd
    return Cell(total, "bytes", f"{_fmt_bytes(total)} (rootfs + kernel + initramfs)",
                note=(f"rootfs {_fmt_bytes(root_size)} (the same directory, shared by virtiofs) + kernel "
                      f"{_fmt_bytes(kernel_size)} ({kernel.path.name}, {'PVH vmlinux' if kernel.pvh else 'bzImage'}) "
                      f"+ initramfs {_fmt_bytes(initrd)} (agent + {len(modules)} modules + config, "
                      "built into a memfd at each start)"),
                extra={"parts": {"rootfs": root_size, "kernel": kernel_size, "initramfs": initrd},
                       "kernel_path": str(kernel.path)})


# --- peers ----------------------------------------------------------------------------


def bench_dir() -> Path | None:
    """bench/ of the source checkout minibox runs from, if it has peers.py."""
    candidate = Path(__file__).resolve().parents[2] / "bench"
    return candidate if (candidate / "peers.py").is_file() and (candidate / "common.py").is_file() else None


@contextlib.contextmanager
def _bench_modules(directory: Path) -> Iterator[tuple[Any, Any]]:
    sys.path.insert(0, str(directory))
    try:
        yield importlib.import_module("peers"), importlib.import_module("common")
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(directory))


def measure_peers(runs: int, progress: Progress) -> tuple[list[Column], str | None]:
    """crun, runc and bwrap start-to-exit, via bench/peers.py's runner; or why not."""
    directory = bench_dir()
    if directory is None:
        return [], "bench/peers.py is not available (minibox does not run from a source checkout)"
    if os.geteuid() != 0:
        return [], "peers need root (crun and runc create namespaces and cgroups)"
    from .images.busybox import default_rootfs

    columns = [Column(key, label, "peer") for key, label in PEERS]
    work = Path(tempfile.mkdtemp(prefix="minibox-compare-peers-"))
    try:
        with _bench_modules(directory) as (peers, common):
            config = peers.PeerConfig.detect(Path(default_rootfs()), work)
            config.prepare()
            with peers.PeerServer(config) as server:
                for column in columns:
                    if getattr(config, column.key) is None:
                        column.cells["start_to_exit"] = Cell.missing(f"{column.key} is not installed", "ms")
                        continue
                    progress.phase(f"start-to-exit: {column.label}", runs)
                    samples: list[float] = []
                    try:
                        for _ in range(runs):
                            time.sleep(SETTLE_SECONDS)
                            samples.append(float(server.measure(column.key)))
                            progress.advance()
                    except common.CommandFailed as e:
                        column.cells["start_to_exit"] = Cell.missing(f"{column.key} failed: {e}", "ms")
                        continue
                    if samples:
                        cell = timing_cell(samples)
                        cell.note += "; timed by bench/peers.py (fork to reaped exit, stdio on /dev/null)"
                        column.cells["start_to_exit"] = cell
            leaks = peers.leftover_cgroups()
            if leaks:
                print(f"minibox compare: LEAK: peer cgroups left behind: {leaks}", file=sys.stderr)
    except (OSError, RuntimeError, ImportError, ValueError) as e:
        return [], f"the peer runner failed: {_why(e)}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for column in columns:
        for metric, _ in METRICS:
            column.cells.setdefault(metric, Cell.missing(
                "compare times peers' start-to-exit only (bench/run.py has more)"))
    return columns, None


# --- the whole comparison ----------------------------------------------------------------


def host_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {"kernel": os.uname().release, "machine": os.uname().machine,
                             "cpus": os.cpu_count()}
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            facts["memory_total_bytes"] = int(f.readline().split()[1]) * 1024
    with contextlib.suppress(Exception):
        from .container.cgroups import detect_layout

        facts["cgroups"] = str(detect_layout())
    with contextlib.suppress(Exception):
        from .vm.virtual_machine import find_qemu, qemu_version

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
        progress.phase(f"on-disk size: {kind}", 1)
        column.cells["disk"] = measure_disk(kind)
        progress.advance()
        column.cells["density"], column.cells["memory_idle"] = measure_density(kind, density, progress)
    if peers:
        peer_columns, why = measure_peers(runs, progress)
        report.columns += peer_columns
        if why:
            report.notes.append(f"peers not measured: {why}")
    return report


# --- rendering -----------------------------------------------------------------------------


def _footnotes(report: Report, columns: Sequence[Column]) -> tuple[dict[tuple[str, str], int], list[str]]:
    """Number every note and reason: {(column, metric): n}, ["[n] column, metric: text"]."""
    marks: dict[tuple[str, str], int] = {}
    lines: list[str] = []
    for metric, label in METRICS:
        for column in columns:
            cell = column.cell(metric)
            text = cell.reason if cell.reason is not None else cell.note
            if not text:
                continue
            marks[(column.key, metric)] = len(lines) + 1
            prefix = "not measured: " if cell.reason is not None else ""
            lines.append(f"[{len(lines) + 1}] {column.key}, {label}: {prefix}{text}")
    return marks, lines


def _fmt_ratio(r: float) -> str:
    return f"{r:,.0f}{TIMES}" if r >= 10 else f"{r:.2f}{TIMES}"


def _ratio_text(report: Report, metric: str) -> str:
    r = ratio(report, metric)
    if r is None:
        return ""
    return _fmt_ratio(r) + (" per start" if metric == "density" else "")


def table_rows(report: Report) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, footnotes) of the main table: metrics down, container and VM across."""
    columns = [c for c in report.columns if c.kind == "minibox"]
    marks, notes = _footnotes(report, columns)
    header = ["", *(c.key for c in columns), "vm \u00f7 container"]
    rows = []
    for metric, label in METRICS:
        row = [label]
        for column in columns:
            cell = column.cell(metric)
            mark = marks.get((column.key, metric))
            row.append(f"{cell.text or cell.value} [{mark}]" if mark else str(cell.text or cell.value))
        row.append(_ratio_text(report, metric))
        rows.append(row)
    return header, rows, notes


def peer_rows(report: Report) -> list[list[str]]:
    container = report.column("container")
    ref = container.cell("start_to_exit") if container else None
    rows = []
    for column in report.columns:
        cell = column.cell("start_to_exit")
        if cell.measured and isinstance(cell.value, float):
            times = ""
            if ref is not None and ref.measured and isinstance(ref.value, float) and ref.value > 0:
                times = _fmt_ratio(cell.value / ref.value)
            rows.append([column.label, f"{_fmt_ms(cell.value)} ms", times, cell.note])
        else:
            rows.append([column.label, "not measured", "", cell.reason or ""])
    return rows


def _title(report: Report) -> str:
    h = report.host
    return (f"containers vs microVMs on this machine ({report.date}; host kernel {h.get('kernel')}, "
            f"{h.get('cpus')} CPUs; N={report.runs})")


def render_plain(report: Report) -> str:
    header, rows, notes = table_rows(report)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [_title(report), ""]
    for i, row in enumerate([header, *rows]):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if notes:
        lines += ["", "How each value was measured:", *notes]
    if report.peers_present():
        lines += ["", f"start-to-exit of /bin/true, minibox and its peers ({TIMES} the minibox container):"]
        prow = [["sandbox", "median", TIMES, "how"], *peer_rows(report)]
        pw = [max(len(r[i]) for r in prow) for i in range(3)]
        for row in prow:
            lines.append("  ".join([*(c.ljust(w) for c, w in zip(row[:3], pw, strict=True)), row[3]]).rstrip())
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    header, rows, notes = table_rows(report)

    def md(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

    lines = [f"**{_title(report)}**", "", md(header), md(["---"] * len(header))]
    lines += [md(r) for r in rows]
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    if report.peers_present():
        lines += ["", md(["sandbox", "start-to-exit (median)", f"{TIMES} container", "how"]), md(["---"] * 4)]
        lines += [md(r) for r in peer_rows(report)]
    lines += ["", *(f"- note: {n}" for n in report.notes)] if report.notes else []
    return "\n".join(lines)


def render_rich(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    header, rows, notes = table_rows(report)
    console = Console()
    table = Table(title=_title(report), title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, style="bold" if i == 0 else None, overflow="fold")
    for row in rows:
        table.add_row(*(c.replace("[", "\\[") for c in row))
    console.print(table)
    if notes:
        console.print("How each value was measured:", style="bold")
        for n in notes:
            console.print(n, markup=False, highlight=False)
    if report.peers_present():
        peers = Table(title="start-to-exit of /bin/true, minibox and its peers", title_justify="left")
        for name in ("sandbox", "median", f"{TIMES} container", "how"):
            peers.add_column(name, overflow="fold")
        for row in peer_rows(report):
            peers.add_row(*(c.replace("[", "\\[") for c in row))
        console.print(peers)
    for n in report.notes:
        console.print(f"note: {n}", markup=False)


def main(args: argparse.Namespace) -> int:
    """``minibox compare``: measure, then print a table, JSON or Markdown on stdout."""
    if args.runs < 1:
        print("minibox: compare: --runs must be at least 1", file=sys.stderr)
        return 2
    if args.density < 0:
        print("minibox: compare: --density must not be negative", file=sys.stderr)
        return 2
    progress = Progress(enabled=True)
    try:
        report = measure(args.runs, args.density, args.peers, progress)
    finally:
        progress.close()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    elif args.markdown:
        print(render_markdown(report))
    elif sys.stdout.isatty():
        try:
            render_rich(report)
        except ImportError:
            print(render_plain(report))
    else:
        print(render_plain(report))
    return 0


def _entry(argv: Sequence[str] | None = None) -> int:
    from .cli import build_parser

    return main(build_parser("compare").parse_args(["compare", *(argv or sys.argv[1:])]))


if __name__ == "__main__":
    raise SystemExit(_entry())
