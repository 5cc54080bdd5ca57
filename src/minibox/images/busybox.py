"""A minimal root file system from the host's busybox-static.

A container needs a directory to become its ``/``.  The smallest useful
one is a single statically linked busybox binary plus one symlink per
applet (``/bin/sh -> busybox``), and the few files programs expect in
/etc.  ``minibox rootfs busybox DIR`` builds it; ``default_rootfs()``
builds one once in minibox's state directory and reuses it.

The image is assembled in a temporary sibling directory and renamed into
place, so a crash half way never leaves a half-built rootfs that later runs
would trust.

The default image is shared by every container that names no rootfs, so it
is part of the trusted computing base: whoever can write it chooses what the
next container runs (a planted ``/tmp/x``, a symlink to ``/etc/shadow``).
It is built with no directory writable by anyone but its owner -- not even
``tmp``: each container gets a private ``/tmp`` (a tmpfs, see
``container/rootfs.py``, ``overlay_root``) -- and :func:`default_rootfs`
refuses an image that a user other than root (or the caller) could have
changed: an entry owned by someone else, or writable by group or others, in
the image or on the path to it (path_resolution(7); the same walk sudo and
OpenSSH's ``StrictModes`` do).
"""

from __future__ import annotations

import os
import stat

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


def build_busybox_rootfs(target: str | os.PathLike[str], *, busybox: str | None = None,
                         shared: bool = False) -> Path:
    """Create a busybox rootfs at ``target`` (which must not exist or be empty).

    Modes are set explicitly, whatever the caller's umask.  ``tmp`` is 1777
    as on any Linux system, except in a ``shared`` image (the default one),
    where no directory is writable by others and containers get their own
    ``/tmp``.
    """
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
            os.chmod(staging / d, 0o755)
        os.chmod(staging / "tmp", 0o755 if shared else 0o1777)
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
            os.chmod(staging / rel, 0o644)
        os.chmod(staging, 0o755)
        if target_path.exists():
            target_path.rmdir()
        os.rename(staging, target_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target_path


#: The default image's directory under the state dir.  "-v2": built with no
#: world-writable tmp; an image of the older layout is left alone, never used.
DEFAULT_IMAGE = "busybox-v2"

_checked: set[str] = set()


def default_rootfs() -> str:
    """minibox's own busybox rootfs (``<state dir>/rootfs/busybox-v2``), built on first use.

    Raises :class:`PreflightError` when the image, or a directory on the path
    to it, could have been changed by a user other than root and the caller
    (see :func:`check_image`).
    """
    from ..paths import state_dir_name

    path = os.path.join(state_dir_name(), "rootfs", DEFAULT_IMAGE)
    # the common case is one stat(): keep it free of pathlib and friends
    if not os.path.exists(os.path.join(path, "bin", "busybox")):
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        from ..firstuse import step

        try:
            with step("rootfs", "building the busybox rootfs",
                      f"containers and VMs need a root file system; once, kept in {path}") as built:
                build_busybox_rootfs(path, shared=True)
                built.size = sum(os.lstat(os.path.join(d, n)).st_size for d, _, names in os.walk(path) for n in names)
        except (SpecError, FileExistsError, OSError):
            # Another process may have built it concurrently: fine if it is complete.
            if not os.path.exists(os.path.join(path, "bin", "busybox")):
                raise
        _close_legacy_tmp(os.path.join(os.path.dirname(path), "busybox"))
    if path not in _checked:
        # Once per process: after a passing check only root (or the caller)
        # can change the image, so a later run need not walk it again.
        check_image(path)
        _checked.add(path)
    return path


def _close_legacy_tmp(legacy: str) -> None:
    """An image of the older layout is never used again; its world-writable tmp
    must not stay a place for other users to write in minibox's state dir."""
    tmp = os.path.join(legacy, "tmp")
    try:
        st = os.lstat(tmp)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o002:
            os.chmod(tmp, 0o755)
    except OSError:
        pass  # none there, or not ours: nothing to close


def _trusted(st: os.stat_result, trusted: tuple[int, ...]) -> bool:
    return st.st_uid in trusted


def _refuse(path: str, why: str, image: str) -> PreflightError:
    return PreflightError(
        f"refusing the default image {image}: {path} {why}, so another user could change what every "
        f"default container runs; remove {image} (minibox rebuilds it) and make sure the state directory "
        "and its parents are writable only by root (or set MINIBOX_STATE_DIR)"
    )


def check_image(image: str) -> None:
    """Refuse (PreflightError) an image that someone other than root or the caller could write.

    Every entry of the image must be owned by root or the caller and, unless
    it is a symlink (whose mode means nothing), be writable by its owner
    only.  Every directory on the path to the image must be owned by them
    too, and writable by group or others only with the sticky bit, which
    stops others from renaming or removing what they do not own (like /tmp).
    """
    trusted = tuple(dict.fromkeys((0, os.geteuid())))
    real = os.path.realpath(image)
    # the path to the image, from / down
    parts = [p for p in real.split("/") if p]
    for depth in range(len(parts)):
        directory = "/" + "/".join(parts[:depth])
        st = os.stat(directory)
        if not _trusted(st, trusted):
            raise _refuse(directory, f"is owned by uid {st.st_uid}", image)
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise _refuse(directory, f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})", image)
    # the image itself
    stack = [real]
    while stack:
        current = stack.pop()
        st = os.lstat(current)
        if not _trusted(st, trusted):
            raise _refuse(current, f"is owned by uid {st.st_uid}", image)
        if stat.S_ISLNK(st.st_mode):
            continue
        if st.st_mode & 0o022:
            raise _refuse(current, f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})", image)
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(current) as entries:
                stack.extend(entry.path for entry in entries)
