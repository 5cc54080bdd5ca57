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
* :func:`virtiofsd_argv` -- the command line, pure: a read-only share runs
  in a private mount namespace (unshare(1), mount_namespaces(7)) in which
  its directory is a read-only bind mount, because this virtiofsd has no
  read-only option and the guest's own read-only mount is no boundary;
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

from ..errors import PreflightError
from ..spec import Mount

VIRTIOFSD_PATHS = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd")


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


def virtiofsd_argv(virtiofsd: str, listen_fd: int, share: Share) -> list[str]:
    """The command that serves ``share`` on the listening socket ``listen_fd``."""
    command = [virtiofsd, f"--fd={listen_fd}", "-o", f"source={share.directory}",
               "-o", "cache=auto", "-o", "log_level=err"]
    if share.readonly:
        # Read-only in the guest is not a boundary (the guest's root can
        # remount), and this virtiofsd has no read-only option: give it a
        # private mount namespace in which its source is a read-only bind
        # mount.  unshare(1) and sh exec in place, so the pid is virtiofsd's.
        command = ["unshare", "--mount", "--propagation", "private", "--",
                   "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', share.directory, *command]
    return command


def start(virtiofsd: str, share: Share, wrap: Callable[[list[str]], list[str]] = list,
          extra_fds: Sequence[int] = ()) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start a virtiofsd for ``share``; its process and the socket end QEMU inherits.

    ``wrap`` rewrites the command line (minibox.owner.Held starts it held),
    ``extra_fds`` are more fds it inherits.
    """
    listener, qemu_end = vhost_user_socket()
    try:
        proc = subprocess.Popen(
            wrap(virtiofsd_argv(virtiofsd, listener.fileno(), share)),
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
