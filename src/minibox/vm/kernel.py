"""The guest kernel: find it, provision it, and make it boot fast.

A virtual machine brings its own kernel.  minibox takes, in this order:

1. the kernel the caller names (``Spec.kernel`` / ``minibox run --kernel``);
2. a Debian cloud kernel cached in ``state_dir()/kernel``, provisioned on
   first use with ``apt-get download linux-image-<release>-cloud-amd64`` and
   unpacked with ``dpkg-deb -x`` (falling back to the generic
   ``linux-image-amd64`` flavour);
3. the host's own ``/boot/vmlinuz``.

A distribution kernel is a *bzImage* (Documentation/arch/x86/boot.rst): a
real-mode setup stub followed by a compressed payload that decompresses the
ELF ``vmlinux`` at boot.  When the payload can be decompressed here and the
ELF carries a PVH entry point (the ``XEN_ELFNOTE_PHYS32_ENTRY`` note,
CONFIG_PVH), QEMU can start the uncompressed vmlinux directly in 32-bit
protected mode: no firmware real-mode dance, no in-guest decompression.
Under TCG that saved about 0.8 s per boot on these machines.

Kernel modules live outside the image; :func:`modules_for` resolves the ones
the guest agent needs (virtio_mmio, virtio_console, virtiofs...) together
with their dependencies, read from each module's ``.modinfo`` section.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import functools
import gzip
import lzma
import os
import platform
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import PreflightError
from ..paths import state_dir

#: Debian's kernel flavours, best first: the cloud kernel boots faster (fewer drivers).
DEBIAN_FLAVOURS: tuple[str, ...] = ("cloud-amd64", "amd64")


@dataclass(frozen=True)
class KernelInfo:
    """A bootable guest kernel.

    ``path`` is what QEMU's ``-kernel`` gets: the uncompressed vmlinux when
    ``pvh`` is true, otherwise the bzImage at ``bzimage``.  ``modules_dir``
    is ``.../lib/modules/<release>`` or ``None`` when no modules were found
    (then the needed drivers must be built in).  ``source`` says where it
    came from: "spec", "debian" or "boot".
    """

    path: Path
    bzimage: Path
    release: str
    modules_dir: Path | None
    source: str
    pvh: bool

    def __str__(self) -> str:
        return str(self.path)


def kernel_dir() -> Path:
    """Where provisioned kernels are unpacked: ``state_dir()/kernel``."""
    path = state_dir() / "kernel"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- the bzImage format ------------------------------------------------------


def bzimage_release(data: bytes) -> str | None:
    """The ``kernel_version`` string of a bzImage (boot protocol >= 2.00), or None."""
    if len(data) < 0x210 or data[0x202:0x206] != b"HdrS":
        return None
    (offset,) = struct.unpack_from("<H", data, 0x20E)
    start = offset + 0x200
    raw = data[start:start + 256].split(b"\0", 1)[0]
    text = raw.decode("ascii", "replace").split(" ", 1)[0]
    return text or None


def vmlinux_release(data: bytes) -> str | None:
    """The release in an uncompressed kernel's ``linux_banner`` ("Linux version 6.1.0-... (...)"), or None."""
    at = data.find(b"Linux version ")
    if at < 0:
        return None
    text = data[at + len(b"Linux version "):at + 200].split(b" ", 1)[0]
    return text.decode("ascii", "replace") or None


def _lz4_legacy(payload: bytes) -> bytes:
    """Decompress the LZ4 "legacy" frame the kernel uses (lz4 -l), with liblz4."""
    name = ctypes.util.find_library("lz4")
    if name is None:
        raise ValueError("liblz4 not found")
    lib = ctypes.CDLL(name)
    lib.LZ4_decompress_safe.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    lib.LZ4_decompress_safe.restype = ctypes.c_int
    block_max = 8 << 20
    out = bytearray()
    buf = ctypes.create_string_buffer(block_max)
    pos = 4  # after the 0x184C2102 magic
    while pos + 4 <= len(payload):
        (size,) = struct.unpack_from("<I", payload, pos)
        if size == 0x184C2102:  # a concatenated frame
            pos += 4
            continue
        if pos + 4 + size > len(payload):
            break  # the trailing uncompressed-size word the kernel appends
        n = lib.LZ4_decompress_safe(payload[pos + 4:pos + 4 + size], buf, size, block_max)
        if n < 0:
            raise ValueError("corrupt LZ4 block")
        out += buf.raw[:n]
        pos += 4 + size
    return bytes(out)


def _decompress(payload: bytes) -> bytes:
    if payload.startswith(b"\x1f\x8b"):
        return gzip.decompress(payload)
    if payload.startswith(b"\xfd7zXZ"):
        return lzma.decompress(payload)
    if payload.startswith(b"\x02\x21\x4c\x18"):
        return _lz4_legacy(payload)
    if payload.startswith(b"\x28\xb5\x2f\xfd"):
        return subprocess.run(["zstd", "-dc"], input=payload, capture_output=True, check=True).stdout
    raise ValueError("unknown compression of the bzImage payload")


def has_pvh_note(elf: bytes) -> bool:
    """Whether an ELF64 vmlinux carries XEN_ELFNOTE_PHYS32_ENTRY (type 18, name "Xen")."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def extract_vmlinux(bzimage: Path, dest: Path) -> bool:
    """Write the uncompressed ELF kernel inside ``bzimage`` to ``dest``.

    Returns True when it was written and has a PVH entry (so QEMU can boot
    it directly); False when this bzImage cannot be unpacked here.
    """
    data = bzimage.read_bytes()
    if data[0x202:0x206] != b"HdrS":
        return False
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    try:
        elf = _decompress(data[start:start + payload_length])
    except (ValueError, OSError, lzma.LZMAError, subprocess.CalledProcessError):
        return False
    if not has_pvh_note(elf):
        return False
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(elf)
    tmp.replace(dest)
    return True


# ---- modules -----------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _module_index(modules_dir: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for root, _, files in os.walk(modules_dir / "kernel"):
        for name in files:
            for ext in (".ko", ".ko.xz", ".ko.gz"):
                if name.endswith(ext):
                    index[name[: -len(ext)].replace("-", "_")] = Path(root) / name
    return index


def _builtin(modules_dir: Path) -> set[str]:
    try:
        lines = (modules_dir / "modules.builtin").read_text().split()
    except OSError:
        return set()
    return {Path(line).name.removesuffix(".ko").replace("-", "_") for line in lines}


def module_bytes(path: Path) -> bytes:
    """The module's ELF object, decompressed when the distribution compressed it."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def _depends(data: bytes) -> list[str]:
    match = re.search(rb"(?:^|\0)depends=([^\0]*)", data)
    if not match or not match.group(1):
        return []
    return [d.decode().replace("-", "_") for d in match.group(1).split(b",")]


def modules_for(kernel: KernelInfo, names: Sequence[str]) -> list[tuple[str, bytes]]:
    """``(name, ELF bytes)`` of ``names`` and their dependencies, in load order.

    Modules built into the kernel are skipped; a module that is neither
    built in nor found raises PreflightError.
    """
    if kernel.modules_dir is None:
        return []
    return list(_modules_in_order(kernel.modules_dir, tuple(names)))


@functools.lru_cache(maxsize=16)
def _modules_in_order(modules_dir: Path, names: tuple[str, ...]) -> tuple[tuple[str, bytes], ...]:
    """:func:`modules_for`, once per process for a tree and a list (~3 ms of reading and
    decompressing on every VM start otherwise; a release's modules do not change under it)."""
    index = _module_index(modules_dir)
    builtin = _builtin(modules_dir)
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in index:
            raise PreflightError(
                f"kernel module {name} is missing from {modules_dir}; "
                "use a kernel with virtio-mmio, virtio-console and virtiofs "
                "(run 'minibox kernel' to provision Debian's)"
            )
        data = module_bytes(index[name])
        for dep in _depends(data):
            visit(dep)
        order.append((name, data))

    for name in names:
        visit(name)
    return tuple(order)


# ---- finding and provisioning ---------------------------------------------


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _prepare(bzimage: Path, workdir: Path, release: str | None, modules_dir: Path | None, source: str) -> KernelInfo:
    """Extract vmlinux next to (or into ``workdir`` for) ``bzimage`` and describe the kernel."""
    with open(bzimage, "rb") as f:
        head = f.read(0x10000)  # the headers only: the image is megabytes, read on every VM start
    if head[:4] == b"\x7fELF":  # already an uncompressed vmlinux
        data = bzimage.read_bytes()
        release = release or vmlinux_release(data) or "unknown"
        return KernelInfo(bzimage, bzimage, release, modules_dir or _find_modules(bzimage, workdir, release),
                          source, has_pvh_note(data))
    found = bzimage_release(head)
    if found is None:
        raise PreflightError(f"{bzimage} is not a Linux kernel image (no bzImage header, not ELF)")
    release = release or found
    stat = bzimage.stat()
    vmlinux = workdir / f"vmlinux-{release}-{stat.st_size}-{int(stat.st_mtime)}"
    pvh = vmlinux.exists() or extract_vmlinux(bzimage, vmlinux)
    return KernelInfo(vmlinux if pvh else bzimage, bzimage, release,
                      modules_dir or _find_modules(bzimage, workdir, release), source, pvh)


def _find_modules(image: Path, workdir: Path, release: str) -> Path | None:
    """The ``lib/modules/<release>`` tree that belongs to ``image``, or None.

    Looked for beside the image first (an unpacked package: ``boot/vmlinuz-R``
    and ``lib/modules/R`` under one root, or the cached ``vmlinux-R-...`` in
    that root), then in the provisioned cache and the host's /lib/modules.
    Only a tree named after the image's own release is taken: modules built
    for another kernel would refuse to load.
    """
    roots = (image.parent.parent, image.parent, workdir / "current", workdir, Path("/"))
    for root in roots:
        candidate = root / "lib/modules" / release
        if (candidate / "kernel").is_dir():
            return candidate
    return None


def _installed_debian(root: Path) -> KernelInfo | None:
    current = root / "current"
    if not current.is_dir():
        return None
    vmlinuz = sorted(current.glob("boot/vmlinuz-*"))
    if not vmlinuz:
        return None
    release = vmlinuz[-1].name.removeprefix("vmlinuz-")
    modules_dir = current / "lib/modules" / release
    return _prepare(vmlinuz[-1], current, release, modules_dir if modules_dir.is_dir() else None, "debian")


def _debian_package(flavour: str) -> str | None:
    """The versioned linux-image package the ``linux-image-<flavour>`` metapackage pulls in."""
    try:
        out = subprocess.run(["apt-cache", "depends", f"linux-image-{flavour}"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"Depends:\s*(linux-image-\S+)", out)
    return match.group(1) if match else None


def provision_debian(root: Path) -> KernelInfo | None:
    """Download and unpack Debian's kernel into ``root/current``; None without apt."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return None
    for flavour in DEBIAN_FLAVOURS:
        package = _debian_package(flavour)
        if package is None:
            continue
        from ..firstuse import step

        with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp, \
                step("kernel", f"provisioning the guest kernel: apt-get download {package}",
                     f"a VM boots its own kernel; once, kept in {root}") as fetched:
            got = subprocess.run(["apt-get", "download", package], cwd=tmp,
                                 capture_output=True, text=True, timeout=600)
            debs = list(Path(tmp).glob("*.deb"))
            if got.returncode != 0 or not debs:
                continue
            fetched.size = debs[0].stat().st_size
            unpacked = Path(tmp) / "unpacked"
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True,
                           capture_output=True, timeout=600)
            if (root / "current").exists():
                shutil.rmtree(root / "current")
            unpacked.rename(root / "current")
        return _installed_debian(root)
    return None


def _boot_kernel() -> Path | None:
    for candidate in (Path("/boot") / f"vmlinuz-{platform.release()}", Path("/boot/vmlinuz"), Path("/vmlinuz")):
        if candidate.is_file():
            return candidate
    return None


def ensure_kernel(path: str | os.PathLike[str] | None = None) -> KernelInfo:
    """Locate or provision the guest kernel (``minibox kernel`` prints its path).

    ``path`` (Spec.kernel) wins; then the cached Debian kernel, provisioned
    now if missing; then the host's /boot/vmlinuz.  Raises PreflightError
    saying what to install when none is usable.
    """
    root = kernel_dir()
    if path is not None:
        image = Path(path)
        if not image.is_file():
            raise PreflightError(f"kernel {image} does not exist; run 'minibox kernel' to provision one")
        return _prepare(image, root, None, None, "spec")
    # A complete cache is enough, even on a read-only state directory: the
    # lock (opened for writing) is needed only to provision.
    installed = _installed_debian(root)
    if installed is not None:
        return installed
    with _locked(root / ".lock"):
        info = _installed_debian(root)
        if info is None:
            try:
                info = provision_debian(root)
            except (OSError, subprocess.SubprocessError) as e:
                raise PreflightError(f"could not unpack Debian's kernel package into {root}: {e}") from e
        if info is not None:
            return info
        boot = _boot_kernel()
        if boot is not None:
            return _prepare(boot, root, None, None, "boot")
    raise PreflightError(
        "no guest kernel: pass Spec(kernel=PATH), or install one the host can use "
        "(on Debian: apt-get install linux-image-cloud-amd64, or just allow "
        "'apt-get download' to reach the archive)"
    )
