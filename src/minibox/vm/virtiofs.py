"""virtiofsd: the host process that serves one directory to the guest over virtio-fs.

virtio-fs (virtio spec v1.2 §5.11) is FUSE carried over a virtio queue: the
guest kernel's ``virtiofs`` driver sends FUSE requests, and a vhost-user
backend on the host (virtiofsd; QEMU docs, "vhost-user-fs") answers them
from a directory.  One virtiofsd serves one directory (a *share*, see
plan.py); QEMU connects to it over a unix socket.

This module owns a virtiofsd's lifecycle:

* :func:`find_virtiofsd` -- Debian 12 ships the C one in /usr/lib/qemu;
* :func:`vhost_user_socket` -- a listening socket on an abstract address
  (no file to leak or race for), QEMU's end already connected;
* :func:`virtiofsd_argv` -- the command line, pure.  virtiofsd runs as
  root and does what the guest's FUSE requests ask, so it is started
  through minibox-fsguard (csrc/fsguard/fsguard.c): in a private mount
  namespace (mount_namespaces(7)) its directory is a ``nosuid,nodev`` bind
  mount, read-only too for a read-only share (this virtiofsd has no
  read-only option, and the guest's own read-only mount is no boundary),
  and a seccomp filter refuses set-id modes and device nodes; virtiofsd
  itself drops CAP_MKNOD, CAP_FSETID and CAP_SETFCAP (``-o modcaps``) and
  serves no extended attributes, so a guest cannot plant device nodes,
  set-id files or file capabilities in the host directory (docs/vm.md,
  "What a guest can do to a share");
* :func:`start` -- the process itself, in its own session;
* :func:`make_mount_points` -- what a read-only rootfs must have before the
  guest can mount over it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import PreflightError
from ..spec import Mount

VIRTIOFSD_PATHS = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd")
#: Capabilities virtiofsd gives up (its ``-o modcaps``; capabilities(7)):
#: creating device nodes, keeping set-id bits, setting file capabilities.
DROPPED_CAPS = ("mknod", "fsetid", "setfcap")


@dataclass(frozen=True)
class Share:
    """One host directory served to the guest under virtio-fs ``tag``."""

    tag: str
    directory: str
    readonly: bool


def find_virtiofsd() -> str:
    for path in (*VIRTIOFSD_PATHS, shutil.which("virtiofsd")):
        if path and os.access(path, os.X_OK):
            return path
    raise PreflightError(
        "virtiofsd not found: it shares the rootfs with the guest "
        "(Debian 12: apt-get install qemu-system-common; later: apt-get install virtiofsd)"
    )


def vhost_user_socket() -> tuple[socket.socket, socket.socket]:
    """A listening vhost-user socket for virtiofsd and QEMU's connected end.

    virtiofsd ``--fd`` wants a *listening* socket (it calls accept(2)),
    so a socketpair will not do.  An autobound abstract-namespace address
    (unix(7)) has no file to leak, and connecting before virtiofsd even
    starts makes ours the first connection it accepts.
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind("")  # autobind: a unique abstract address
        listener.listen(1)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        listener.close()
        raise
    try:
        client.connect(listener.getsockname())
    except OSError:
        listener.close()
        client.close()
        raise
    return listener, client


def build_guard() -> Path:
    """The static minibox-fsguard (csrc/fsguard/fsguard.c), built once per source version."""
    from .._static import build_static

    return build_static("fsguard/fsguard.c", "minibox-fsguard")


def virtiofsd_argv(virtiofsd: str, listen_fd: int, share: Share, guard: str) -> list[str]:
    """The command that serves ``share`` on the listening socket ``listen_fd``, through ``guard``.

    The guard (minibox-fsguard) makes the share a nosuid,nodev (and for a
    read-only share read-only) bind mount in a private mount namespace,
    installs its seccomp filter and execs virtiofsd in place, so the pid
    minibox holds is virtiofsd's.
    """
    command = [virtiofsd, f"--fd={listen_fd}", "-o", f"source={share.directory}",
               "-o", "cache=auto", "-o", "log_level=err",
               "-o", "modcaps=" + ":".join(f"-{cap}" for cap in DROPPED_CAPS), "-o", "no_xattr"]
    return [guard, *(["-r"] if share.readonly else []), share.directory, "--", *command]


def start(virtiofsd: str, share: Share, guard: str, wrap: Callable[[list[str]], list[str]] = list,
          extra_fds: Sequence[int] = ()) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start a virtiofsd for ``share`` through ``guard``; its process and the socket end QEMU inherits.

    ``wrap`` rewrites the command line (minibox.owner.Held starts it held),
    ``extra_fds`` are more fds it inherits.
    """
    listener, qemu_end = vhost_user_socket()
    try:
        proc = subprocess.Popen(
            wrap(virtiofsd_argv(virtiofsd, listener.fileno(), share, guard)),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(listener.fileno(), *extra_fds), start_new_session=True)
    except OSError:
        qemu_end.close()
        raise
    finally:
        listener.close()
    return proc, qemu_end


def make_mount_points(rootfs: str, mounts: Sequence[Mount]) -> None:
    """Create missing mount points in ``rootfs`` on the host side.

    A read-only rootfs is read-only at virtiofsd, so the guest agent cannot
    create them; a container creates its own the same way, in the host
    directory, before the read-only remount.
    """
    from ..images.paths import make_mount_point

    for m in mounts:  # through fds inside the rootfs: a symlink there never leads out
        is_file = m.kind == "bind" and m.source is not None and not os.path.isdir(m.source)
        make_mount_point(rootfs, m.target, directory=not is_file)
