"""A running VM saved to one file, and restored from it: ``vm.snapshot(path)``, ``VirtualMachine.restore(path)``.

QEMU saves a running guest the way it migrates one (docs/devel/migration.rst,
QMP ``migrate`` / ``migrate-incoming``): pause the vCPUs, write every
device's state and the guest's RAM as one stream, and on the other side
build the *same* machine, started with ``-incoming defer``, and load the
stream into it.  snapshot.py has the two QMP sequences; this module makes a
user's file of them and checks it before any QEMU sees it.

The file, one of them per snapshot::

    [0, 64 KiB)           "MINIBOX-VM-SNAPSHOT 1\\n", the manifest (JSON), NUL padding
    [64 KiB, +initrd)     the initramfs the guest booted (QEMU's -initrd again)
    [..., end)            QEMU's migration stream: device state and all guest RAM

The **manifest** says how the guest was made -- QEMU's version, the whole
QEMU command line (fds and the initrd path as placeholders), the kernel's
path and SHA-256, the agent's SHA-256, memory, vCPUs, accelerator -- and
the sizes and SHA-256 of the two parts.  :func:`restore` rebuilds the
command line *this* host would use and refuses (:class:`SnapshotMismatchError`,
naming what differs) unless everything matches; it also reads the guest RAM
size from the stream itself, because QEMU *exits* when it differs from
``-m``.  A truncated or damaged file is refused (:class:`SnapshotError`).
Nothing is started before all of that passed.

Unlike a template (templates.py: RAM in a shared file, ``x-ignore-shared``),
a running VM's RAM is in the stream: the file is self-contained, costs the
guest's touched RAM on disk, and a restored VM has its RAM to itself.

What cannot be saved: a VM with virtio-fs shares (the default cold boot's
rootfs, bind mounts: QEMU 7.2's vhost-user-fs device refuses migration, its
state lives in virtiofsd), and a VM on the bridge (two restores would come
back with the same MAC and address).  What a restore re-initialises, as a
template clone does: the wall clock and the CRNG (the agent's ``r``
request: ``clock_settime``, ``RNDADDENTROPY`` + ``RNDRESEEDCRNG``), before
:func:`restore` returns.  The command itself goes on from the instant of
the snapshot: what it had computed or read from ``/dev/urandom`` before is
the same in every restore (as with any VM fork).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import struct
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import MiniboxError, SetupError, StateError
from ..owner import StartSteps
from ..spec import Limits, Spec
from . import accel as _accel
from . import agent as _agent
from . import machine, snapshot
from .channels import ExecState
from .clone import ENTROPY_BYTES, _FromFiles
from .virtual_machine import VirtualMachine, find_qemu, qemu_version

MAGIC = b"MINIBOX-VM-SNAPSHOT 1\n"
#: Bump when the file layout or what the manifest means changes.
FORMAT = 1
#: The manifest's room at the head of the file.
HEADER_SIZE = 64 << 10
#: How long the agent may take to take the host's clock and entropy after a restore.
REINIT_TIMEOUT = 30.0


class SnapshotError(MiniboxError):
    """A VM cannot be saved, or a snapshot file cannot be restored (damaged, truncated, not one)."""


class SnapshotMismatchError(SnapshotError):
    """A snapshot file was made for another host or another minibox: names what differs."""


# ---- what shapes the guest ---------------------------------------------------------------------


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return _sha256_of(Path(path))


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, computed once per (path, size, mtime) in this process (the kernel is ~40 MiB)."""
    st = os.stat(path)
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)


def _ram_args(backend: str, memory: int) -> list[str]:
    """Guest RAM as the restored QEMU gets it: QEMU's default, or a RAM backend with the id a clone's has."""
    if backend == "default":
        return []
    return ["-object", f"memory-backend-ram,id={backend},size={memory >> 20}M", "-machine", f"memory-backend={backend}"]


def _config(facts: dict[str, Any], qemu: str, cmdline: str, initrd: str,
            fds: tuple[int, int, int, int, int]) -> machine.MachineConfig:
    return machine.MachineConfig(
        qemu=qemu, kernel=str(facts["kernel"]["path"]), initrd=initrd, cmdline=cmdline,
        memory=int(facts["memory"]), cpus=int(facts["cpus"]), accel=str(facts["accel"]),
        machine=str(facts["machine_type"]), qmp_fd=fds[0], console_fd=fds[1],
        port_fds=list(zip(machine.PORTS, fds[2:], strict=True)),
        extra=_ram_args(str(facts["ram_backend"]), int(facts["memory"])))


def _argv_shape(facts: dict[str, Any], qemu: str, cmdline: str) -> list[str]:
    """QEMU's command line for a guest of ``facts``, fds and the initrd as placeholders."""
    return machine.qemu_argv(_config(facts, qemu, cmdline, "<initrd>", (3, 4, 5, 6, 7)))


def refuse_unsavable(vm: VirtualMachine) -> None:
    """SnapshotError for a VM whose state QEMU cannot save, or that could not be restored twice."""
    shares = vm._sharing == "virtiofs" or any(m.kind == "bind" for m in vm.spec.mounts)
    if shares:
        raise SnapshotError("this VM shares directories with virtio-fs (its rootfs, or bind mounts), and QEMU 7.2 "
                            "cannot migrate vhost-user-fs (its state lives in virtiofsd); snapshot a VM made with "
                            "VirtualMachine(spec, rootfs_sharing='initramfs') and no bind mounts, or one started "
                            "from a template (minibox.vm.TemplateClone)")
    if vm.spec.network == "bridge":
        raise SnapshotError("this VM is on the bridge: every restore would come back with its MAC and address; "
                            "snapshot a VM with network='none'")


# ---- saving --------------------------------------------------------------------------------------


def _facts(vm: VirtualMachine) -> dict[str, Any]:
    """The manifest's description of ``vm``'s guest and machine."""
    cfg, initrd, agent_bin = vm._cfg, vm._initrd, vm._agent_bin
    if cfg is None or initrd is None or agent_bin is None:
        raise SnapshotError("this VM has not started a guest")
    extra = " ".join(cfg.extra)
    backend = "default"
    if "memory-backend" in extra:
        match = re.search(r"memory-backend-\w+,id=([\w-]+)", extra)
        if match is None:
            raise SnapshotError(f"unexpected guest RAM arguments: {extra}")
        backend = match.group(1)
    spec = vm.spec
    facts: dict[str, Any] = {
        "qemu": cfg.qemu, "qemu_version": qemu_version(cfg.qemu),
        "kernel": {"path": cfg.kernel, "sha256": file_sha256(cfg.kernel)},
        "agent_sha256": file_sha256(agent_bin),
        "memory": cfg.memory, "cpus": cfg.cpus, "accel": cfg.accel, "machine_type": cfg.machine,
        "ram_backend": backend, "kernel_release": vm.kernel_release,
        "spec": {"argv": list(spec.argv), "env": dict(spec.env), "cwd": spec.cwd, "hostname": spec.hostname,
                 "user": list(spec.user), "kernel": spec.kernel,
                 "limits": {"memory": spec.limits.memory_bytes, "cpus": spec.limits.cpus}},
    }
    facts["argv"] = _argv_shape(facts, cfg.qemu, cfg.cmdline)
    return facts


def _initrd_bytes(initrd: bytes | Path) -> bytes:
    return initrd if isinstance(initrd, bytes) else initrd.read_bytes()


def _hash_range(fd: int, offset: int, size: int) -> str:
    h = hashlib.sha256()
    while size > 0:
        block = os.pread(fd, min(size, 1 << 20), offset)
        if not block:
            break
        h.update(block)
        offset += len(block)
        size -= len(block)
    return h.hexdigest()


def save(vm: VirtualMachine, path: Path) -> None:
    """``vm.snapshot(path)``: pause, write the file (atomically: a temporary name, then rename), resume."""
    refuse_unsavable(vm)
    if vm.state not in ("running", "paused"):
        raise StateError("snapshot", vm.state, "only a running or paused VM can be saved")
    with vm._cond:
        if vm._ended():
            raise SnapshotError("the VM's command has ended; there is nothing to snapshot")
        if vm._ch.state.execs:
            raise SnapshotError("an exec() is running in this VM; snapshot it after the exec returns")
    facts = _facts(vm)
    initrd = _initrd_bytes(vm._initrd)  # type: ignore[arg-type]  # _facts checked it
    monitor = vm._monitor
    assert monitor is not None
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{vm.id}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(fd, initrd, HEADER_SIZE)
        stream_at = HEADER_SIZE + len(initrd)
        os.lseek(fd, stream_at, os.SEEK_SET)  # QEMU writes from the fd's offset on
        was_running = vm.state == "running"  # pause() left it paused: it stays so
        t0 = time.monotonic()
        try:
            info = snapshot.save(monitor, fd, ignore_shared=False)
        finally:
            if was_running:
                monitor.execute("cont")
        paused_for = time.monotonic() - t0
        stream_size = os.fstat(fd).st_size - stream_at
        manifest = dict(facts, format=FORMAT, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        paused_seconds=round(paused_for, 3), ram_bytes_sent=info.get("ram", {}).get("transferred"),
                        initrd={"size": len(initrd), "sha256": hashlib.sha256(initrd).hexdigest()},
                        stream={"size": stream_size, "sha256": _hash_range(fd, stream_at, stream_size)})
        header = MAGIC + json.dumps(manifest, sort_keys=True).encode()
        if len(header) >= HEADER_SIZE:
            raise SnapshotError(f"the manifest is {len(header)} bytes, over the {HEADER_SIZE}-byte header")
        os.pwrite(fd, header.ljust(HEADER_SIZE, b"\0"), 0)
        os.fsync(fd)
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


# ---- checking a file -------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the snapshot file ``path``, its parts' sizes checked; SnapshotError otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise SnapshotError(f"cannot read the snapshot {path}: {e.strerror}") from e
    if not head.startswith(MAGIC):
        raise SnapshotError(f"{path} is not a minibox VM snapshot (no {MAGIC.strip().decode()!r} header)")
    if len(head) < HEADER_SIZE:
        raise SnapshotError(f"the snapshot {path} is truncated: {size} bytes, not even its header")
    try:
        manifest = json.loads(head[len(MAGIC):].rstrip(b"\0"))
        initrd_size, stream_size = int(manifest["initrd"]["size"]), int(manifest["stream"]["size"])
    except (ValueError, KeyError, TypeError) as e:
        raise SnapshotError(f"the manifest of the snapshot {path} is unreadable: {e}") from e
    if manifest.get("format") != FORMAT:
        raise SnapshotMismatchError(f"the snapshot {path} has format {manifest.get('format')!r}; this minibox "
                                    f"reads format {FORMAT}")
    expected = HEADER_SIZE + initrd_size + stream_size
    if size != expected:
        raise SnapshotError(f"the snapshot {path} has {size} bytes, its manifest says {expected} "
                            f"({'truncated' if size < expected else 'something was appended'})")
    return dict(manifest)


def check_host(manifest: dict[str, Any], path: Path) -> None:
    """SnapshotMismatchError unless this host would build the very machine the snapshot was made in."""
    def mismatch(what: str, theirs: object, ours: object) -> SnapshotMismatchError:
        return SnapshotMismatchError(f"the snapshot {path} was made with another {what}: {theirs!r}, "
                                     f"this host has {ours!r}; restore it where it was made, or make a new one")

    qemu = find_qemu()
    if manifest.get("qemu_version") != qemu_version(qemu):
        raise mismatch("QEMU version", manifest.get("qemu_version"), qemu_version(qemu))
    kernel = manifest["kernel"]
    try:
        kernel_sha = file_sha256(kernel["path"])
    except OSError as e:
        raise SnapshotMismatchError(f"the snapshot {path} needs the guest kernel {kernel['path']}: "
                                    f"{e.strerror}") from e
    if kernel_sha != kernel["sha256"]:
        raise mismatch(f"guest kernel (same path {kernel['path']}, other contents)", kernel["sha256"][:16],
                       kernel_sha[:16])
    agent_sha = file_sha256(_agent.build_agent())
    if manifest.get("agent_sha256") != agent_sha:
        raise mismatch("guest agent (another minibox version)", str(manifest.get("agent_sha256"))[:16],
                       agent_sha[:16])
    ours = _argv_shape(manifest, qemu, machine.kernel_cmdline())
    theirs = manifest.get("argv")
    if ours != theirs:
        if not isinstance(theirs, list):
            raise mismatch("QEMU command line", theirs, ours)
        diff = next((i for i, (a, b) in enumerate(zip(theirs, ours, strict=False)) if a != b),
                    min(len(theirs), len(ours)))
        what = next((name for flag, name in (("-m", "memory"), ("-smp", "vCPU count"), ("-accel", "accelerator"),
                                             ("-M", "machine type"), ("-append", "kernel command line"))
                     if diff > 0 and ours[diff - 1] == flag), f"QEMU command line (argument {diff})")
        if diff < len(ours) and "memory-backend" in ours[diff]:
            what = "guest RAM backend (memory)"
        raise mismatch(what, theirs[diff] if diff < len(theirs) else None, ours[diff] if diff < len(ours) else None)


def check_parts(path: Path, manifest: dict[str, Any]) -> bytes:
    """The initramfs, after both parts' SHA-256 matched the manifest; SnapshotError otherwise."""
    initrd_size = int(manifest["initrd"]["size"])
    with open(path, "rb") as f:
        initrd = os.pread(f.fileno(), initrd_size, HEADER_SIZE)
        if hashlib.sha256(initrd).hexdigest() != manifest["initrd"]["sha256"]:
            raise SnapshotError(f"the initramfs in the snapshot {path} does not match its manifest (damaged)")
        stream_at = HEADER_SIZE + initrd_size
        if _hash_range(f.fileno(), stream_at, int(manifest["stream"]["size"])) != manifest["stream"]["sha256"]:
            raise SnapshotError(f"the saved guest in the snapshot {path} does not match its manifest (damaged)")
        guest_ram = stream_ram_bytes(os.pread(f.fileno(), 64 << 10, stream_at))
    if guest_ram is None:
        raise SnapshotError(f"the snapshot {path} holds no QEMU migration stream minibox can read")
    if guest_ram != int(manifest["memory"]):
        raise SnapshotMismatchError(f"the snapshot {path} holds {guest_ram >> 20} MiB of guest RAM, its manifest "
                                    f"says memory {int(manifest['memory']) >> 20} MiB (QEMU would exit on it)")
    return initrd


#: QEMU's RAM section starts with its id string "ram" (savevm.c, ram.c: ram_save_setup):
#: u8 3 "ram", be32 instance 0, be32 version 4, then be64 total RAM bytes | RAM_SAVE_FLAG_MEM_SIZE (0x04)
_RAM_SECTION = re.compile(rb"\x03ram\x00\x00\x00\x00\x00\x00\x00\x04")


def stream_ram_bytes(head: bytes) -> int | None:
    """The size of the guest's main RAM block in a migration stream's first bytes, or None.

    After the section header, ram_save_setup writes the total size of all
    RAM blocks, then each block as u8 length, its id string, be64 size;
    the guest's RAM is the largest block (the others are ROMs and tables).
    """
    if not head.startswith(b"QEVM"):
        return None
    match = _RAM_SECTION.search(head)
    if match is None:
        return None
    pos = match.end()
    try:
        (total,) = struct.unpack_from(">Q", head, pos)
        total &= ~0xfff  # the flag bits
        pos += 8
        blocks, seen = [], 0
        while seen < total:
            length = head[pos]
            pos += 1 + length
            (size,) = struct.unpack_from(">Q", head, pos)
            pos += 8
            blocks.append(size)
            seen += size
    except (IndexError, struct.error):
        return None
    return max(blocks) if blocks and seen == total else None


# ---- restoring -----------------------------------------------------------------------------------


def _spec_of(manifest: dict[str, Any], timeout: float | None) -> Spec:
    saved = manifest["spec"]
    limits = saved.get("limits", {})
    return Spec(argv=saved["argv"], env=saved["env"], cwd=saved["cwd"], hostname=saved["hostname"],
                user=(int(saved["user"][0]), int(saved["user"][1])), kernel=saved.get("kernel"),
                limits=Limits(memory=limits.get("memory"), cpus=limits.get("cpus")), timeout=timeout)


class RestoredVM(_FromFiles):
    """A VM brought back from a snapshot file: same verbs and Result as the VM that was saved."""

    def __init__(self, path: Path, manifest: dict[str, Any], initrd: bytes, *, stdout: int | None,
                 stderr: int | None, timeout: float | None) -> None:
        super().__init__(_spec_of(manifest, timeout), stdout=stdout, stderr=stderr, rootfs_sharing="initramfs",
                         machine_type=str(manifest["machine_type"]))
        self._path = path
        self._manifest = manifest
        self._initrd = initrd
        self.restore_seconds = 0.0

    def __enter__(self) -> RestoredVM:
        """``with VirtualMachine.restore(path) as vm:`` -- it runs already; the block's end closes it."""
        if self.state == "created":
            self.start()
        return self

    def _boot(self) -> None:
        t0 = time.monotonic()
        m = self._manifest
        steps = StartSteps()
        self._record = self._create_record(self.spec)
        steps.done("record")
        assert isinstance(self._initrd, bytes)
        self._memfd = os.memfd_create(f"minibox-initramfs-{self._id}", 0)
        os.write(self._memfd, self._initrd)
        initrd = f"/dev/fd/{self._memfd}"
        qemu, cmdline = find_qemu(), machine.kernel_cmdline()

        def config(fds: tuple[int, int, int, int, int]) -> machine.MachineConfig:
            cfg = _config(m, qemu, cmdline, initrd, fds)
            cfg.extra += snapshot.incoming_args()
            return cfg

        self._accel = _accel.Verdict(str(m["accel"]), f"{m['accel']}: restored from the snapshot {self._path}")
        self._start_configured(config, [self._memfd], steps)
        with self._cond:
            self._ch.state.release = str(m.get("kernel_release", ""))
            self._ch.state.running = True  # the command started before the snapshot
        assert self._monitor is not None
        fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.lseek(fd, HEADER_SIZE + int(m["initrd"]["size"]), os.SEEK_SET)
            snapshot.load(self._monitor, fd, ignore_shared=False)
        finally:
            os.close(fd)
        self._monitor.execute("cont")
        self._reinit()
        self.restore_seconds = time.monotonic() - t0

    def _reinit(self) -> None:
        """The agent takes the host's clock and fresh entropy ('r'); wait for its answer."""
        ident = next(self._ids)
        ex = self._ch.state.execs[ident] = ExecState.capped(self._ch.output_limit)
        self._send(_agent.reinit_frame(ident, time.time_ns(), secrets.token_bytes(ENTROPY_BYTES)))
        with self._cond:
            self._cond.wait_for(lambda: ex.exit is not None or ex.failure is not None or self._ended(),
                                REINIT_TIMEOUT)
            del self._ch.state.execs[ident]
            broken = self._channel_error()
        if broken is not None:
            raise broken
        if ex.failure is not None:
            raise self._failure_error(ex.failure)
        if ex.exit is None:
            raise SetupError("restore", None, self._why_it_died("the restored guest's agent did not answer"))


def restore(path: Path, *, stdout: int | None, stderr: int | None, timeout: float | None) -> VirtualMachine:
    """``VirtualMachine.restore(path)``: check the file and this host, then start a VM from it."""
    manifest = read_manifest(path)
    try:
        check_host(manifest, path)
    except (KeyError, TypeError) as e:
        raise SnapshotError(f"the manifest of the snapshot {path} lacks {e}") from e
    initrd = check_parts(path, manifest)
    vm = RestoredVM(path, manifest, initrd, stdout=stdout, stderr=stderr, timeout=timeout)
    vm.start()
    return vm
