"""A minimal root file system from the host's busybox-static.

A container needs a directory to become its ``/``.  The smallest useful
one is a single statically linked busybox binary plus one symlink per
applet (``/bin/sh -> busybox``), and the few files programs expect in
/etc.  ``minibox rootfs busybox DIR`` builds it; ``default_rootfs()``
builds one once in minibox's state directory and reuses it.

The image is assembled in a temporary sibling directory and renamed into
place, so a crash half way never leaves a half-built rootfs that later runs
would trust.
"""

from __future__ import annotations

import os

from ..errors import PreflightError, SpecError

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings

if TYPE_CHECKING:
    from pathlib import Path

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
# Directories every rootfs gets, including the mount points the container
# setup uses, so that a read-only rootfs still has them.
SKELETON_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp",
                 "root", "home", "var", "run", "mnt")
ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": "minibox\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    "etc/resolv.conf": "",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
}


def find_static_busybox() -> str:
    """Path of a statically linked busybox, or PreflightError saying what to install."""
    for path in BUSYBOX_CANDIDATES:
        if os.path.isfile(path) and _is_static(path):
            return path
    raise PreflightError("no static busybox found; install it with 'apt-get install busybox-static'")


def _is_static(path: str) -> bool:
    # A dynamically linked ELF has a PT_INTERP program header naming ld.so;
    # looking for the interpreter path is a cheap, good-enough check.
    with open(path, "rb") as f:
        head = f.read(4096)
    return head[:4] == b"\x7fELF" and b"/lib64/ld-linux" not in head and b"/lib/ld-linux" not in head


def _applets(busybox: str) -> list[str]:
    import subprocess

    out = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def build_busybox_rootfs(target: str | os.PathLike[str], *, busybox: str | None = None) -> Path:
    """Create a busybox rootfs at ``target`` (which must not exist or be empty)."""
    import shutil
    import tempfile
    from pathlib import Path

    target_path = Path(target).absolute()
    if target_path.exists() and (not target_path.is_dir() or any(target_path.iterdir())):
        raise SpecError("DIR", f"{target_path} exists and is not an empty directory")
    binary = busybox or find_static_busybox()
    target_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target_path.name}.", dir=target_path.parent))
    try:
        for d in SKELETON_DIRS:
            (staging / d).mkdir(parents=True, exist_ok=True)
        os.chmod(staging / "tmp", 0o1777)
        os.chmod(staging / "root", 0o700)
        shutil.copy2(binary, staging / "bin/busybox")
        os.chmod(staging / "bin/busybox", 0o755)
        for applet in _applets(binary):
            link = staging / applet
            if link.name == "busybox" or link.exists() or link.is_symlink():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink("/bin/busybox", link)
        for rel, text in ETC_FILES.items():
            (staging / rel).write_text(text)
        os.chmod(staging, 0o755)
        if target_path.exists():
            target_path.rmdir()
        os.rename(staging, target_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target_path


def default_rootfs() -> str:
    """minibox's own busybox rootfs (``<state dir>/rootfs/busybox``), built on first use."""
    from ..paths import state_dir_name

    path = os.path.join(state_dir_name(), "rootfs", "busybox")
    # the common case is one stat(): keep it free of pathlib and friends
    if not os.path.exists(os.path.join(path, "bin", "busybox")):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            build_busybox_rootfs(path)
        except (SpecError, FileExistsError, OSError):
            # Another process may have built it concurrently: fine if it is complete.
            if not os.path.exists(os.path.join(path, "bin", "busybox")):
                raise
    return path
