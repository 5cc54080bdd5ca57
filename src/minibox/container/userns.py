"""User namespaces: uid/gid maps, and who is root inside.

A process in a new user namespace starts with no mapped ids; its parent
writes ``/proc/PID/uid_map`` and ``gid_map`` (user_namespaces(7)): each line
``inside outside count`` says that ids ``inside..inside+count-1`` in the
namespace are ``outside..`` on the host.  Root inside (uid 0) has every
capability *over the namespace's own resources* and none over the host's.

An unprivileged parent may map only its own uid and gid, one line each, and
must first write ``deny`` to ``/proc/PID/setgroups`` (CVE-2014-8989).
Larger ranges from /etc/subuid go through the setuid helpers
newuidmap(1)/newgidmap(1).
"""

from __future__ import annotations

import os

from ..errors import SetupError
from ..spec import IdMap, Spec

TYPE_CHECKING = False  # collections.abc would import the collections package: annotations are strings
if TYPE_CHECKING:
    from collections.abc import Sequence

#: Host ids minibox gives non-root container users of a root caller
#: (0x78000000-0x78ffffff): above the ranges systemd hands out to users,
#: dynamic users and nspawn containers (up to 0x6fffffff), below the
#: 0x80000000 half that tools treat as negative.  No account owns them.
PRIVATE_IDS = range(0x78000000, 0x79000000)


def private_host_id() -> int:
    """A host id for one container's user: random in :data:`PRIVATE_IDS`.

    Random rather than leased: two live containers share one with
    probability n/16M, and then only with each other, never with a host
    account.
    """
    return PRIVATE_IDS.start + int.from_bytes(os.urandom(4), "little") % len(PRIVATE_IDS)


def default_maps(spec: Spec) -> tuple[tuple[IdMap, ...], tuple[IdMap, ...]]:
    """The maps used when the Spec asks for a user namespace without giving them.

    The caller's own uid and gid become the Spec's user inside: as root
    that keeps files owned by root readable; as an unprivileged user that
    is all the kernel allows without newuidmap.

    A root caller running a non-root user without naming namespaces
    (see ``Spec.effective_namespaces``) gets 0 -> 0, so the setup runs as
    it does without a user namespace, and the user -> a private host id
    from :func:`private_host_id`: no host process, and no other
    container, has the uid the command runs as.
    """
    uid, gid = spec.user
    if os.geteuid() == 0 and spec.namespaces is None and uid != 0:
        host = private_host_id()
        uid_map = spec.uid_map or (IdMap(0, 0, 1), IdMap(uid, host, 1))
        gid_map = spec.gid_map or ((IdMap(0, 0, 1),) if gid == 0 else (IdMap(0, 0, 1), IdMap(gid, host, 1)))
        return tuple(uid_map), tuple(gid_map)
    uid_map = spec.uid_map or (IdMap(uid, os.geteuid(), 1),)
    gid_map = spec.gid_map or (IdMap(gid, os.getegid(), 1),)
    return tuple(uid_map), tuple(gid_map)


def _format(maps: Sequence[IdMap]) -> str:
    return "".join(f"{m.inside} {m.outside} {m.count}\n" for m in maps)


def _needs_helper(maps: Sequence[IdMap], own_id: int) -> bool:
    return os.geteuid() != 0 and not (len(maps) == 1 and maps[0].outside == own_id and maps[0].count == 1)


def write_id_maps(pid: int, uid_map: Sequence[IdMap], gid_map: Sequence[IdMap]) -> None:
    """Write the maps of the child ``pid`` (which waits until we are done)."""
    try:
        if _needs_helper(uid_map, os.geteuid()) or _needs_helper(gid_map, os.getegid()):
            _write_with_helpers(pid, uid_map, gid_map)
            return
        if os.geteuid() != 0:
            with open(f"/proc/{pid}/setgroups", "w") as f:
                f.write("deny")
        with open(f"/proc/{pid}/uid_map", "w") as f:
            f.write(_format(uid_map))
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write(_format(gid_map))
    except OSError as e:
        raise SetupError("uid/gid map", e.errno, detail=f"for pid {pid}") from e


def _write_with_helpers(pid: int, uid_map: Sequence[IdMap], gid_map: Sequence[IdMap]) -> None:
    import shutil
    import subprocess

    for tool, maps in (("newuidmap", uid_map), ("newgidmap", gid_map)):
        path = shutil.which(tool)
        if path is None:
            raise SetupError(tool, None, detail="is not installed (apt-get install uidmap); "
                             "without it only your own id can be mapped")
        args = [path, str(pid)]
        for m in maps:
            args += [str(m.inside), str(m.outside), str(m.count)]
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SetupError(tool, None, detail=proc.stderr.strip() or f"exit status {proc.returncode}")
