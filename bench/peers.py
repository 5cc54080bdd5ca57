"""The peers minibox is measured against: crun, runc, bwrap, unshare+chroot, chroot.

Each peer's measurement is its own start-to-exit of ``/bin/true`` in the
same busybox rootfs, timed by :func:`common.time_command` (fork to reaped
exit status, stdio on /dev/null).

crun 1.8.1 refuses this host's hybrid cgroup layout ("cgroups in hybrid
mode not supported"), so every peer is timed by a small server process
(``python bench/peers.py serve CONFIG``) that lives in a *private* mount
namespace in which /sys/fs/cgroup/unified is covered by an empty tmpfs;
there crun (and runc) see a plain cgroup v1 host.  The server is started
once, by :class:`PeerServer`, and answers one request per measurement, so
the main benchmark can interleave peers with its in-process minibox rows;
the tmpfs mount never exists in the host's mount namespace and disappears
with the server.

crun and runc get an OCI bundle each (``crun spec`` / ``runc spec``, then
args ``/bin/true``, root.path = the rootfs, terminal false, readonly
false; the "limits" bundles add memory.limit = 64 MiB and pids.limit =
64; the "sleeper" bundle runs ``sleep`` for ``run -d`` and ``exec``), a
private state directory (``--root``), a unique container id per run, and a
``delete -f`` after every run, failed or not (not timed), so no container
and no cgroup is left behind.  The ``exec`` row's container is started on
first use and deleted when the server ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from common import CommandFailed, LineServer, serve_lines, time_command

#: Every container id starts with this; leftover_cgroups() looks for it.
ID_PREFIX = "mbxbench"
MEMORY_LIMIT = 64 * 1024 * 1024
PIDS_LIMIT = 64

#: (key, display name) of the rows this module can time.
PEER_ROWS: tuple[tuple[str, str], ...] = (
    ("crun", "crun run"),
    ("crun_limits", "crun run (memory 64M, pids 64)"),
    ("crun_detached", "crun run -d (to running)"),
    ("crun_exec", "crun exec"),
    ("runc", "runc run"),
    ("bwrap", "bwrap --unshare-all"),
    ("unshare_chroot", "unshare -mpuin --fork chroot"),
    ("chroot", "chroot"),
)


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )


# --- OCI bundles --------------------------------------------------------------------


#: What the detached bundle runs: the container must stay up (run -d, then exec into it).
SLEEPER_ARGS = ["sleep", "1000000"]


def prepare_bundle(runtime: str, bundle: Path, rootfs: Path, *, limits: bool,
                   args: Sequence[str] = ("/bin/true",)) -> Path:
    """Generate ``bundle/config.json`` with ``<runtime> spec`` and point it at ``rootfs``."""
    bundle.mkdir(parents=True, exist_ok=True)
    subprocess.run([runtime, "spec"], cwd=bundle, check=True, capture_output=True)
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["args"] = list(args)
    config["process"]["terminal"] = False
    config["root"] = {"path": str(rootfs.resolve()), "readonly": False}
    if limits:
        resources = config.setdefault("linux", {}).setdefault("resources", {})
        resources["memory"] = {"limit": MEMORY_LIMIT}
        resources["pids"] = {"limit": PIDS_LIMIT}
    config_path.write_text(json.dumps(config, indent=2))
    return bundle


@dataclass
class PeerConfig:
    """What the server needs to know; passed to it as JSON on its command line."""

    rootfs: str
    workdir: str               # bundles and the runtimes' state dirs live here
    crun: str | None
    runc: str | None
    bwrap: str | None
    unshare: str | None
    chroot: str | None

    @classmethod
    def detect(cls, rootfs: Path, workdir: Path) -> PeerConfig:
        return cls(str(rootfs), str(workdir), find_tool("crun"), find_tool("runc"), find_tool("bwrap"),
                   find_tool("unshare"), find_tool("chroot"))

    def prepare(self) -> None:
        """Write the OCI bundles (in the host namespace: nothing is mounted)."""
        rootfs, work = Path(self.rootfs), Path(self.workdir)
        for runtime in ("crun", "runc"):
            binary = getattr(self, runtime)
            if binary is None:
                continue
            for limits in (False, True):
                prepare_bundle(binary, work / f"{runtime}{'-limits' if limits else ''}", rootfs, limits=limits)
            prepare_bundle(binary, work / f"{runtime}-sleeper", rootfs, limits=False, args=SLEEPER_ARGS)
            (work / f"{runtime}-state").mkdir(exist_ok=True)


# --- the server side (runs inside the private mount namespace) -----------------------


class _Peers:
    """Runs one peer once per call; lives in the server process."""

    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self.work = Path(config.workdir)
        self.counter = 0
        self.exec_target: tuple[str, str, str] | None = None  # (binary, state, id) of the exec row's container

    def _oci(self, runtime: str, limits: bool) -> float:
        binary = getattr(self.config, runtime)
        if binary is None:
            raise CommandFailed(f"{runtime} is not installed")
        self.counter += 1
        cid = f"{ID_PREFIX}-{os.getpid()}-{self.counter}"
        state = str(self.work / f"{runtime}-state")
        bundle = str(self.work / f"{runtime}{'-limits' if limits else ''}")
        ok = False
        try:
            elapsed = time_command([binary, "--root", state, "run", "--bundle", bundle, cid])
            ok = True
            return elapsed
        finally:
            subprocess.run([binary, "--root", state, "delete", "-f", cid], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            if not ok:  # a run that failed half way may leave its (empty) cgroups behind
                remove_cgroups_named(cid)

    def _delete(self, binary: str, state: str, cid: str) -> None:
        subprocess.run([binary, "--root", state, "delete", "-f", cid], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    def _detached(self, runtime: str) -> float:
        """``run -d`` of a sleeping container: until the runtime returns with it running (delete not timed)."""
        binary = getattr(self.config, runtime)
        if binary is None:
            raise CommandFailed(f"{runtime} is not installed")
        self.counter += 1
        cid = f"{ID_PREFIX}-{os.getpid()}-{self.counter}"
        state = str(self.work / f"{runtime}-state")
        ok = False
        try:
            elapsed = time_command([binary, "--root", state, "run", "-d", "--bundle",
                                    str(self.work / f"{runtime}-sleeper"), cid])
            ok = True
            return elapsed
        finally:
            self._delete(binary, state, cid)
            if not ok:
                remove_cgroups_named(cid)

    def _exec(self, runtime: str) -> float:
        """``exec /bin/true`` into one sleeping container, started on first use and kept until close()."""
        binary = getattr(self.config, runtime)
        if binary is None:
            raise CommandFailed(f"{runtime} is not installed")
        state = str(self.work / f"{runtime}-state")
        if self.exec_target is None:
            cid = f"{ID_PREFIX}-{os.getpid()}-exec"
            self.exec_target = (binary, state, cid)
            time_command([binary, "--root", state, "run", "-d", "--bundle", str(self.work / f"{runtime}-sleeper"),
                          cid])
        return time_command([binary, "--root", state, "exec", self.exec_target[2], "/bin/true"])

    def close(self) -> None:
        if self.exec_target is not None:
            binary, state, cid = self.exec_target
            self._delete(binary, state, cid)
            remove_cgroups_named(cid)
            self.exec_target = None

    def _plain(self, tool: str, argv: Sequence[str]) -> float:
        binary = getattr(self.config, tool)
        if binary is None:
            raise CommandFailed(f"{tool} is not installed")
        return time_command([binary, *argv])

    def measure(self, key: str) -> float:
        rootfs = self.config.rootfs
        match key:
            case "crun":
                return self._oci("crun", limits=False)
            case "crun_limits":
                return self._oci("crun", limits=True)
            case "crun_detached":
                return self._detached("crun")
            case "crun_exec":
                return self._exec("crun")
            case "runc":
                return self._oci("runc", limits=False)
            case "runc_limits":
                return self._oci("runc", limits=True)
            case "bwrap":
                return self._plain("bwrap", ["--unshare-all", "--bind", rootfs, "/", "--proc", "/proc",
                                             "--dev", "/dev", "/bin/true"])
            case "unshare_chroot":
                chroot = self.config.chroot or "chroot"
                return self._plain("unshare", ["-mpuin", "--fork", chroot, rootfs, "/bin/true"])
            case "chroot":
                return self._plain("chroot", [rootfs, "/bin/true"])
        raise CommandFailed(f"unknown peer {key!r}")


def serve(config: PeerConfig, requests: IO[str], replies: IO[str]) -> None:
    """The server's loop: one peer run per ``time KEY`` request (see common.serve_lines)."""
    peers = _Peers(config)
    try:
        serve_lines(peers.measure, requests, replies)
    finally:
        peers.close()


# --- the client side (the benchmark's process, in the host namespace) ----------------

# Runs in the new mount namespace, before the server: hide the cgroup2 mount
# from crun (only when there is one; a v2-only host needs nothing hidden).
# crun still mkdirs its "unified" cgroup there: in this private tmpfs, which
# vanishes with the namespace.
_NAMESPACE_SETUP = (
    'if mountpoint -q /sys/fs/cgroup/unified 2>/dev/null; then '
    'mount -t tmpfs minibox-bench /sys/fs/cgroup/unified || exit 1; fi; '
    'exec "$@"'
)


class PeerServer(LineServer):
    """The peer-timing server, started in its private mount namespace."""

    def __init__(self, config: PeerConfig) -> None:
        unshare = config.unshare or "unshare"
        super().__init__([unshare, "--mount", "--propagation", "private", "sh", "-c", _NAMESPACE_SETUP, "sh",
                          sys.executable, str(Path(__file__).resolve()), "serve", json.dumps(asdict(config))],
                         "peer server")


def leftover_cgroups(root: str = "/sys/fs/cgroup", max_depth: int = 5, prefix: str = ID_PREFIX) -> list[str]:
    """Cgroup directories whose name starts with ``prefix`` (a benchmark id; there should be none)."""
    found: list[str] = []
    base_depth = root.rstrip("/").count("/")
    for directory, subdirs, _files in os.walk(root):
        if directory.count("/") - base_depth >= max_depth:
            subdirs[:] = []
        for name in subdirs:
            if name.startswith(prefix):
                found.append(os.path.join(directory, name))
    return found


def remove_cgroups_named(name: str) -> list[str]:
    """rmdir the (empty) cgroups called ``name``, deepest first; they are ours: ids are unique."""
    removed = []
    for directory in sorted(leftover_cgroups(prefix=name), key=lambda d: d.count("/"), reverse=True):
        if os.path.basename(directory) != name:
            continue
        try:
            os.rmdir(directory)
            removed.append(directory)
        except OSError:
            pass  # still busy: leftover_cgroups() at the end reports it
    return removed


def host_mount_leaked() -> bool:
    """Whether the tmpfs that hides cgroup2 from crun is (wrongly) visible in our namespace."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(" minibox-bench " in line for line in f)


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "serve":
        serve(PeerConfig(**json.loads(argv[1])), sys.stdin, sys.stdout)
        return 0
    print("usage: peers.py serve CONFIG_JSON   (started by run.py; not meant to be run by hand)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
