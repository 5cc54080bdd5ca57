"""VM templates: a guest booted once, paused where the agent waits, saved to files.

A cold boot under TCG costs over a second, almost all of it the guest
kernel's own start.  A *template* pays that once: minibox boots its guest
(kernel, agent, the busybox rootfs packed in the initramfs) in template mode,
in which the agent stops right before mounting the rootfs and waits on its
control port; minibox then saves the guest (snapshot.py) and every later VM
of the same shape is a *clone* restored from those files (clone.py).

A template is a directory ``state_dir()/vm-templates/<key>/``:

* ``initrd`` -- the initramfs it booted (QEMU gets the same ``-initrd`` again);
* ``ram``    -- guest RAM, written by the template's QEMU through a shared
  file mapping; clones map it privately;
* ``state``  -- the device state (QEMU's migration stream);
* ``manifest.json`` -- the key, the files' sizes and the state's SHA-256.

The **key** is a hash of everything that shapes the guest or the machine:
QEMU's version and the whole command line minibox would give it (with
placeholder fds), the kernel file, the agent binary, the modules, the
rootfs image, the accelerator, memory and vCPUs.  Anything else changes the
key, so a stale template is never restored; a template whose files do not
match its manifest (missing, truncated, edited) is rebuilt.  QEMU itself is
never asked to load something that does not fit: it would exit on a RAM
size mismatch, or worse, run a guest whose RAM does not match its devices.

Which Specs can use a template (:func:`ineligible` says why not): the
default rootfs (the busybox image, packed into the template), no bind
mounts (virtio-fs, i.e. vhost-user-fs, cannot be migrated by QEMU 7.2: its
device refuses migration), the microvm machine.  Everything else about the
Spec -- argv, env, cwd, user, hostname, tmpfs mounts, read-only root, stdin
-- is sent to each clone after restore.  network="bridge" has templates of
its own (with a NIC, left down): each clone gets its own tap, lease, MAC
and address, which the agent sets after the restore.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MiniboxError
from ..spec import Spec
from . import agent as _agent
from . import initramfs, machine
from . import plan as _plan
from .kernel import KernelInfo

#: Bump when the layout of a template or the agent's template protocol changes.
FORMAT = 1
#: A template nobody started from for this long is removed when another is built.
UNUSED_FOR = 24 * 3600.0
#: The largest stdin a clone is given (it is sent over the control port into the guest's RAM).
MAX_STDIN = 64 << 20


class TemplateError(MiniboxError):
    """A template cannot be used: missing, damaged, or made for another machine."""


def ineligible(spec: Spec, machine_type: str = "microvm", rootfs_sharing: str | None = None,
               stdin: bytes | None = None) -> str | None:
    """Why ``spec`` cannot start from a template, or None if it can."""
    if spec.rootfs is not None:
        return "the Spec names its own rootfs (templates pack minibox's busybox image)"
    if any(m.kind == "bind" for m in spec.mounts):
        return "bind mounts are virtio-fs shares, and QEMU 7.2 cannot migrate vhost-user-fs"
    if spec.network not in ("none", "bridge"):
        return f"network={spec.network!r} (a VM has its own network stack: 'none' or 'bridge')"
    if machine_type != "microvm":
        return f"machine type {machine_type!r} (templates are made for microvm)"
    if rootfs_sharing == "virtiofs":
        return "rootfs_sharing='virtiofs' was asked for explicitly"
    if stdin is not None and len(stdin) > MAX_STDIN:
        return f"stdin is over {MAX_STDIN >> 20} MiB"
    return None


@dataclass(frozen=True)
class Parts:
    """The host's parts a guest is made of, resolved (vm/clone.py finds them)."""

    qemu: str
    qemu_version: str
    kernel: KernelInfo
    agent: Path
    modules: tuple[tuple[str, bytes], ...]
    rootfs: str
    accel: str
    memory: int
    cpus: int
    network: bool = False  # a virtio-net NIC (network="bridge"); each clone gets its own tap, MAC, address

    def config(self, initrd: str, fds: tuple[int, int, int, int, int],
               tap_fd: int | None = None) -> machine.MachineConfig:
        """QEMU's configuration for a guest of these parts; ``fds``: QMP, console, the agent's three ports.

        With :attr:`network`, ``tap_fd`` is the NIC's tap.  The NIC has no
        ``mac=``: the template's keeps QEMU's default, and the agent gives
        each clone's its own before the link goes up (the MAC is guest state,
        migrated with the device, so the command line could not change it).
        """
        if self.network and tap_fd is None:
            raise TemplateError("a bridged template's QEMU needs a tap")
        return machine.MachineConfig(
            qemu=self.qemu, kernel=str(self.kernel.path), initrd=initrd, cmdline=machine.kernel_cmdline(),
            memory=self.memory, cpus=self.cpus, accel=self.accel, machine="microvm",
            qmp_fd=fds[0], console_fd=fds[1], port_fds=list(zip(machine.PORTS, fds[2:], strict=True)),
            tap_fd=tap_fd if self.network else None)

    def argv(self, initrd: str) -> list[str]:
        """QEMU's command line for a guest of these parts, fds as placeholders (the key's shape)."""
        return machine.qemu_argv(self.config(initrd, (3, 4, 5, 6, 7), 8 if self.network else None))

    def key(self) -> dict[str, Any]:
        """Everything that shapes the guest, as plain data (hashed into the directory name)."""
        def identity(path: str | Path) -> list[Any]:
            st = os.stat(path)
            return [str(path), st.st_size, st.st_mtime_ns]

        return {
            "format": FORMAT,
            "qemu": [self.qemu, self.qemu_version],
            "argv": self.argv("<initrd>"),
            "kernel": identity(self.kernel.path),
            "agent": identity(self.agent),
            "modules": [[name, hashlib.sha256(data).hexdigest()] for name, data in self.modules],
            "rootfs": [*identity(os.path.join(self.rootfs, "bin", "busybox")), identity(self.rootfs)],
            "accel": self.accel,
            "memory": self.memory,
            "cpus": self.cpus,
            "network": self.network,
        }


def template_root() -> Path:
    from ..paths import state_dir

    root = state_dir() / "vm-templates"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def template_initramfs(parts: Parts) -> bytes:
    """The template's initramfs: the agent in template mode, its modules, the busybox image as /newroot."""
    entries = [initramfs.directory(d) for d in ("dev", "proc", "sys", "minibox", "minibox/modules")]
    entries += initramfs.tree(parts.rootfs, "newroot")
    entries += [
        initramfs.chardev("dev/console", 5, 1),
        initramfs.file("init", parts.agent.read_bytes(), 0o755),
        initramfs.file("minibox/config", _agent.template_config(), 0o600),
    ]
    entries += [initramfs.file(f"minibox/modules/{i:02d}-{name}.ko", data)
                for i, (name, data) in enumerate(parts.modules)]
    return initramfs.build(entries)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Template:
    """A template's files, checked against its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def initrd(self) -> Path:
        return self.path / "initrd"

    @property
    def ram(self) -> Path:
        return self.path / "ram"

    @property
    def state(self) -> Path:
        return self.path / "state"

    @property
    def kernel_release(self) -> str:
        return str(self.manifest.get("kernel_release", ""))

    @classmethod
    def open(cls, path: Path, key: dict[str, Any]) -> Template:
        """The template at ``path`` if its manifest and files match ``key``; TemplateError naming what does not."""
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except FileNotFoundError as e:
            raise TemplateError(f"no template at {path}") from e
        except (OSError, ValueError) as e:
            raise TemplateError(f"the template manifest {path / 'manifest.json'} is unreadable: {e}") from e
        if not isinstance(manifest, dict):
            raise TemplateError(f"the template manifest {path / 'manifest.json'} is not an object")
        template = cls(path, manifest)
        if manifest.get("key") != key:
            found = manifest.get("key")
            theirs: dict[str, Any] = found if isinstance(found, dict) else {}
            differ = sorted(k for k in set(key) | set(theirs) if key.get(k) != theirs.get(k))
            raise TemplateError(f"the template at {path} was made for another machine (differs in: "
                                f"{', '.join(differ)})")
        sizes = manifest.get("sizes", {})
        for name in ("initrd", "ram", "state"):
            try:
                size = (path / name).stat().st_size
            except OSError as e:
                raise TemplateError(f"the template file {path / name} is missing: {e.strerror}") from e
            if size != sizes.get(name):
                raise TemplateError(f"the template file {path / name} has {size} bytes, "
                                    f"its manifest says {sizes.get(name)} (truncated or changed)")
        if _sha256(template.state) != manifest.get("state_sha256"):
            raise TemplateError(f"the template's device state {template.state} does not match its manifest")
        return template


def prune(root: Path, unused_for: float = UNUSED_FOR) -> list[str]:
    """Remove the templates nobody started from in ``unused_for`` seconds (each is ~100 MiB on disk).

    Every agent, kernel or QEMU change makes a new key, so old templates
    would pile up.  A running clone of a removed template keeps working: its
    QEMU holds the RAM file's mapping.  Returns the names removed.
    """
    removed = []
    now = time.time()
    for entry in root.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime > unused_for:
                _rmtree(entry)
                removed.append(entry.name)
    return removed


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One builder at a time (flock(2) on ``root/.lock``); others wait, then find it built."""
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure(parts: Parts) -> Template:
    """The template for ``parts``: checked and used if it is there, (re)built otherwise."""
    key = parts.key()
    try:
        root = template_root()
    except OSError as e:
        raise TemplateError(f"no template directory in the state dir: {e.strerror}") from e
    path = root / digest(key)
    with contextlib.suppress(TemplateError, OSError):
        template = Template.open(path, key)
        os.utime(path)  # "last used", for prune()
        return template
    try:
        return _build_locked(parts, root, path, key)
    except OSError as e:  # a read-only state dir, a full disk: no template, the caller may boot cold
        raise TemplateError(f"cannot write the template {path}: {e.strerror or e}") from e


def _build_locked(parts: Parts, root: Path, path: Path, key: dict[str, Any]) -> Template:
    with _locked(root):
        try:
            return Template.open(path, key)
        except TemplateError:
            pass  # missing or damaged: build it (again)
        for stale in root.glob(".build-*"):  # a builder killed half way (we hold the lock: none runs)
            _rmtree(stale)
        prune(root)
        from ..firstuse import step

        work = root / f".build-{os.getpid()}-{time.monotonic_ns()}"
        try:
            with step("vm-template", "booting the guest once to make a VM template",
                      f"later VMs of this shape start from it in a fraction of the time; kept in {path}") as built:
                build(parts, work, key)
                built.size = sum(f.stat().st_size for f in work.iterdir())
            _rmtree(path)
            os.rename(work, path)
        finally:
            _rmtree(work)
        return Template.open(path, key)


def build(parts: Parts, work: Path, key: dict[str, Any]) -> None:
    """Boot the template guest into ``work`` and save it there, with its manifest."""
    from .clone import TemplateBoot

    work.mkdir(mode=0o700)
    t0 = time.monotonic()
    (work / "initrd").write_bytes(template_initramfs(parts))
    with TemplateBoot(parts, work) as boot:
        assert isinstance(boot, TemplateBoot)
        release = boot.save()
    write_manifest(work, key, parts.qemu_version, release, time.monotonic() - t0)


def write_manifest(work: Path, key: dict[str, Any], qemu_version: str, release: str, seconds: float) -> None:
    """The manifest of the template files in ``work``; the RAM file becomes read-only."""
    os.chmod(work / "ram", 0o400)
    manifest = {
        "key": key,
        "qemu_version": qemu_version,
        "kernel_release": release,
        "sizes": {name: (work / name).stat().st_size for name in ("initrd", "ram", "state")},
        "state_sha256": _sha256(work / "state"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(seconds, 3),
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


def guest_mounts(spec: Spec) -> tuple[_agent.GuestMount, ...]:
    """The guest mounts of a template-eligible Spec (tmpfs only)."""
    _, mounts = _plan.shares_and_mounts(spec, "", "initramfs")
    return tuple(mounts)
