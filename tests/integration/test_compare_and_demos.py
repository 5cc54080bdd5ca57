"""`minibox compare` and every teaching demo, end to end, as root -- and what they leave behind.

* ``minibox compare --json`` (small N) yields a container row and a VM row
  with positive measured numbers, and kernel releases that differ.
* Every demo in ``minibox.demos.DEMOS`` runs to the end
  (``python -m minibox.demos.NAME``, exit 0), and one is interrupted with
  SIGINT (Ctrl-C) mid-boot and must clean up all the same.
* After each: no cgroup under the minibox parent, no mount mentioning
  minibox, no QEMU/virtiofsd (or any) process left, no state file, no temp
  file, no veth or tap device.

Leftover processes are caught precisely: this test process becomes a child
subreaper (prctl(2) PR_SET_CHILD_SUBREAPER) while a command runs, so
anything the command leaves running is re-parented to us instead of init.
The command gets a private cgroup parent (``MINIBOX_CGROUP_PARENT``) and a
private ``TMPDIR``, so other sessions' sandboxes on this shared host cannot
be mistaken for ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prctl
import pytest

from minibox.compare import Cell, Column, Report, render_markdown, render_plain, render_wide
from minibox.container import cgroups
from minibox.demos import DEMOS

from ..conftest import child_pids


def as_root_with_qemu(fn: Any) -> Any:
    """The marks of a test that runs sandboxes of both kinds."""
    for mark in (pytest.mark.root, pytest.mark.vm,
                 pytest.mark.skipif(os.geteuid() != 0, reason="needs root (cgroups, namespaces, virtiofsd)"),
                 pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")):
        fn = mark(fn)
    return fn

MINIBOX = str(Path(sys.executable).with_name("minibox"))
RUN_TIMEOUT = 300


# --- what a run may leave behind ------------------------------------------------------------


@dataclass
class Leftovers:
    cgroups: list[str]
    mounts: list[str]
    processes: list[str]
    state_files: list[str]
    temp_files: list[str]
    interfaces: list[str]

    def assert_none(self) -> None:
        assert self == Leftovers([], [], [], [], [], []), f"left behind: {self}"


class Isolated:
    """Runs commands with a private cgroup parent and TMPDIR and checks what they leave."""

    def __init__(self, tmp_root: Path) -> None:
        self.parent = f"minibox-test-demos-{uuid.uuid4().hex[:8]}"
        self.tmpdir = tmp_root / "tmp"
        self.tmpdir.mkdir()
        self.runtime = Path(os.environ["MINIBOX_RUNTIME_DIR"])  # set by tests/conftest.py
        self.env = dict(os.environ, MINIBOX_CGROUP_PARENT=self.parent, TMPDIR=str(self.tmpdir),
                        PYTHONUNBUFFERED="1", COLUMNS="120")

    # snapshots of the shared places
    @staticmethod
    def _mounts() -> set[str]:
        with open("/proc/self/mountinfo") as f:
            return {line.split(" - ")[0].split(" ", 4)[4] for line in f if "minibox" in line}

    @staticmethod
    def _tmp() -> set[str]:
        # minibox-test-run-*: made by tests/conftest.py in every pytest process (other sessions'
        # too); the command under test has a private TMPDIR, checked separately.
        return {n for n in os.listdir("/tmp") if n.startswith("minibox-") and not n.startswith("minibox-test-run-")}

    @staticmethod
    def _ports() -> set[str]:
        """veth and tap devices of the host's network namespace (a bridge may stay, like docker0)."""
        return {n for n in os.listdir("/sys/class/net") if not os.path.exists(f"/sys/class/net/{n}/bridge")}

    def _state(self) -> set[str]:
        return {str(p) for p in self.runtime.rglob("*") if p.is_file()} if self.runtime.exists() else set()

    def _cgroups(self) -> list[str]:
        found = []
        for directory in set(cgroups.parent_dirs(self.parent).values()):
            if os.path.isdir(directory):
                found += [os.path.join(directory, d) for d in os.listdir(directory)
                          if os.path.isdir(os.path.join(directory, d))]
        return sorted(found)

    @contextlib.contextmanager
    def watch(self) -> Iterator[list[Leftovers]]:
        mounts, tmp, state, ports = self._mounts(), self._tmp(), self._state(), self._ports()
        report: list[Leftovers] = []
        prctl.set_child_subreaper(True)
        try:
            yield report
        finally:
            time.sleep(0.3)  # an orphan being re-parented right now
            orphans = list(child_pids())
            # A zombie re-parented to us was already dead (init would just reap it): not a leak.
            described = [_describe(p) for p in orphans if _state(p) != "Z"]
            for pid in orphans:  # ours now (we are their subreaper): reap, so nothing stays
                _kill_and_reap(pid)
            prctl.set_child_subreaper(False)
            report.append(Leftovers(
                cgroups=self._cgroups(),
                mounts=sorted(self._mounts() - mounts),
                processes=described,
                state_files=sorted(self._state() - state),
                temp_files=sorted(self._tmp() - tmp) + sorted(os.listdir(self.tmpdir)),
                interfaces=self._new_ports(ports),
            ))

    def _new_ports(self, before: set[str]) -> list[str]:
        new = self._ports() - before
        if new:  # another session's sandbox may come and go meanwhile: only what stays counts
            time.sleep(1.0)
            new &= self._ports()
        return sorted(new)

    def cleanup(self) -> None:
        cgroups.prune_parents(self.parent)


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        return f"{pid} [{_state(pid)}]: {cmdline}"
    except OSError:
        return f"{pid}: ?"


def _state(pid: int) -> str:
    from minibox import procfs

    st = procfs.stat(pid)
    return "?" if st is None else st.state


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[Isolated]:
    iso = Isolated(tmp_path)
    try:
        yield iso
    finally:
        iso.cleanup()


def run_checked(iso: Isolated, argv: list[str]) -> subprocess.CompletedProcess[str]:
    with iso.watch() as report:
        proc = subprocess.run(argv, capture_output=True, text=True, env=iso.env, timeout=RUN_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    report[0].assert_none()
    return proc


# --- minibox compare ---------------------------------------------------------------------------


@as_root_with_qemu
def test_compare_json_measures_both_rows(isolated: Isolated, tmp_path: Path) -> None:
    picture = tmp_path / "compare.svg"
    proc = run_checked(isolated, [MINIBOX, "compare", "--json", "--runs", "2", "--density", "2",
                                  "--plot", str(picture)])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    # --plot drew both kinds' start times and memory: an SVG naming them, one dot per sample
    svg = picture.read_text()
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    for words in ("container", "microVM from a template", "cold microVM", "start-to-exit",
                  "host memory per idle sandbox"):
        assert words in svg, words
    rows = {row["name"]: row["values"] for row in data["rows"]}
    assert {"container", "vm"} <= set(rows)
    for name in ("container", "vm"):
        values = rows[name]
        for metric in ("start_to_exit", "memory_idle", "disk", "density"):
            cell = values[metric]
            assert cell["status"] == "measured", (name, metric, cell)
            assert isinstance(cell["value"], (int, float)) and cell["value"] > 0, (name, metric, cell)
            assert cell["unit"], (name, metric, cell)
        assert len(values["start_to_exit"]["samples"]) == 2
        assert values["kernel_release"]["status"] == "measured"
        # Nothing may carry a value without being measured (or described), nor lack a reason when not.
        for metric, cell in values.items():
            if cell["status"] == "not measured":
                assert cell["value"] is None and cell["reason"], (name, metric, cell)
            else:
                assert cell["value"] is not None, (name, metric, cell)
    assert rows["container"]["kernel_release"]["value"] == os.uname().release
    assert rows["vm"]["kernel_release"]["value"] != rows["container"]["kernel_release"]["value"]
    assert rows["vm"]["accelerator"]["value"] in ("kvm", "tcg")
    assert rows["vm"]["accelerator"]["note"]  # the reason, in words
    assert rows["vm"]["density"]["value"] <= 2
    # the VM's start from its template, and its cold boot as a row of its own (a container has none)
    assert "template" in rows["vm"]["start_to_exit"]["note"]
    assert rows["vm"]["start_cold"]["status"] == "measured" and len(rows["vm"]["start_cold"]["samples"]) == 2
    assert "template=False" in rows["vm"]["start_cold"]["note"]
    assert rows["container"]["start_cold"]["status"] == "described"
    assert data["ratios_vm_over_container"]["start_cold"] > 0
    assert data["parameters"] == {"runs": 2, "density": 2}


def test_renderings_mark_what_was_not_measured() -> None:
    """No root needed: a report with a missing value says so, with its reason, in every format."""
    container = Column("container", "container", "minibox", {
        "start_to_exit": Cell(3.2, "ms", "3.20 ms", note="median of 2 runs"),
        "memory_idle": Cell.missing("could not read it: no cgroup", "bytes"),
    })
    vm = Column("vm", "vm", "minibox", {"start_to_exit": Cell.missing("qemu is not installed", "ms")})
    report = Report("today", {"kernel": "k", "cpus": 2}, 2, 2, [container, vm])
    for text in (render_plain(report), render_markdown(report)):
        assert "not measured: could not read it: no cgroup" in text
        assert "not measured: qemu is not installed" in text
        assert "3.20 ms" in text
    data = report.to_json()
    vm_row = next(r for r in data["rows"] if r["name"] == "vm")
    assert vm_row["values"]["start_to_exit"] == {"value": None, "unit": "ms", "status": "not measured",
                                                 "reason": "qemu is not installed"}
    assert data["ratios_vm_over_container"]["start_to_exit"] is None


def _full_report() -> Report:
    """A report with every value measured, as long as this host's would be."""
    def timing(ms: float) -> Cell:
        return Cell(ms, "ms", f"{ms} ms", note="median of 5 runs", samples=[ms * f for f in (0.9, 1, 1, 1.1, 1.3)])

    container = Column("container", "container (minibox.Container)", "minibox", {
        "boundary": Cell("host kernel", "", "the host kernel: namespaces + cgroups", status="described"),
        "kernel_release": Cell("6.18.44-fc-v857", "", "6.18.44-fc-v857 (the host's)"),
        "accelerator": Cell("none", "", "none (host CPU, host kernel)", status="described"),
        "start_to_exit": timing(3.21), "start_cold": Cell("no boot", "", "no boot", status="described"),
        "memory_idle": Cell(262144, "bytes", "256 KiB", samples=[262144.0]),
        "disk": Cell(2_100_000, "bytes", "2.0 MiB"),
        "density": Cell(10, "sandboxes", "10 of 10", extra={"seconds": 0.31, "requested": 10}),
    })
    vm = Column("vm", "microVM (minibox.VirtualMachine)", "minibox", {
        "boundary": Cell("hypervisor", "", "QEMU microvm (TCG) + guest kernel", status="described"),
        "kernel_release": Cell("6.1.0-56-cloud-amd64", "", "6.1.0-56-cloud-amd64 (host: 6.18.44-fc-v857)"),
        "accelerator": Cell("tcg", "", "TCG", note="/dev/kvm could not boot the guest: " + "x" * 200),
        "start_to_exit": timing(148.0), "start_cold": timing(1456.0),
        "memory_idle": Cell(229_000_000, "bytes", "218 MiB"),
        "disk": Cell(56_000_000, "bytes", "53 MiB"),
        "density": Cell(4, "sandboxes", "4 of 10", extra={"seconds": 6.2, "requested": 10}),
    })
    host = {"kernel": "6.18.44-fc-v857", "cpus": 2, "cpu_model": "AMD EPYC 7R13 Processor",
            "memory_total_bytes": 25 << 30, "cgroups": "hybrid: v1 controllers, cgroup2 at /sys/fs/cgroup/unified",
            "qemu": "7.2.19"}
    return Report("2026-12-02 10:50 UTC", host, 5, 10, [container, vm])


def test_default_table_fits_80_columns_and_wide_has_the_rest() -> None:
    report = _full_report()
    text = render_plain(report)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    for value in ("3.21 ms", "148 ms", "1,456 ms", "256 KiB", "218 MiB", "6.1.0-56-cloud-amd64",
                  "4 of 10 in 6.2 s", "TCG", "VM cold boot", "no boot"):
        assert value in text, value
    assert "46\u00d7" in text  # 148 / 3.21: a VM from its template over the container
    assert "454\u00d7" in text  # 1456 / 3.21: a cold-booted VM over the container
    assert "[1]" not in text  # footnotes only for what was not measured
    wide = render_wide(report)
    assert "/dev/kvm could not boot the guest" in wide and "median of 5 runs" in wide
    assert max(len(line) for line in wide.splitlines()) > 80


# --- the demos -------------------------------------------------------------------------------


@as_root_with_qemu
@pytest.mark.parametrize("name", sorted(set(DEMOS) | {"networking"}))
def test_demo_runs_to_the_end_and_cleans_up(name: str, isolated: Isolated) -> None:
    if name not in DEMOS:
        pytest.skip(f"the {name!r} demo is not registered yet")
    proc = run_checked(isolated, [sys.executable, "-m", f"minibox.demos.{name}"])
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert "-> source:" in proc.stdout  # it points at the code that does the work
    assert "Traceback" not in proc.stderr
    if name == "compare":  # it says which VM start each figure is: restored from the template, or booted
        assert "VM, from its template" in proc.stdout and "VM, cold boot" in proc.stdout


@as_root_with_qemu
def test_ctrl_c_during_a_vm_demo_cleans_up(isolated: Isolated) -> None:
    """SIGINT while QEMU runs: `minibox demo` exits 130 and nothing is left."""
    with isolated.watch() as report:
        proc = subprocess.Popen([MINIBOX, "demo", "microvm"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=isolated.env, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 120
            while not _has_qemu_grandchild(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, "the demo ended before QEMU started"
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()  # our own child, by pid
                proc.wait()
    assert proc.returncode == 130, f"stdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}"
    assert "interrupted" in out
    report[0].assert_none()


def _has_qemu_grandchild(pid: int) -> bool:
    from minibox import procfs

    return any(child.comm.startswith("qemu-system") for child in procfs.children(pid))

