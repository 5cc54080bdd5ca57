"""The host side of the guest agent: building it, configuring it, talking to it.

The guest agent (csrc/agent/agent.c) is PID 1 inside the VM.  This module

* compiles it, statically, the first time it is needed
  (``cc -static -O2`` into ``state_dir()/agent-<hash of the source>``);
* encodes a Spec into the agent's config file (``/minibox/config`` in the
  initramfs): records of one tag byte followed by NUL-terminated strings;
* speaks the framed protocol of the ``minibox.control`` virtio-serial port:
  ``u32 length | u8 type | u32 id | payload`` (little endian), documented
  in docs/vm.md.

Guest -> host frames: ``H`` hello (the guest's ``uname -r``), ``S`` started
(pid), ``O``/``E`` stdout/stderr of an exec, ``X`` exit (``x N`` exited with
status N, ``s N`` killed by signal N), ``F`` failure (``step\\0errno\\0detail``).
Host -> guest: ``x`` exec (argv), ``k`` kill (signal number).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..spec import DEFAULT_PATH, Spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .network import GuestNetwork

HEADER = struct.Struct("<IBI")  # length, type, id

# Guest -> host
HELLO, STARTED, STDOUT, STDERR, EXIT, FAIL = b"H", b"S", b"O", b"E", b"X", b"F"
# Host -> guest
EXEC, KILL = b"x", b"k"


def build_agent() -> Path:
    """Compile the guest agent (csrc/agent/agent.c) once per source version; its path."""
    from .._static import build_static

    return build_static("agent/agent.c", "agent")


@dataclass(frozen=True)
class GuestMount:
    """A Spec mount as the guest sees it: ``kind`` "dir"/"file" (virtiofs) or "tmpfs"."""

    kind: str
    tag: str
    name: str
    target: str
    readonly: bool
    size: str


def encode_config(spec: Spec, mounts: Sequence[GuestMount], *, root_tag: str = "rootfs",
                  has_stdin: bool = False, probe: bool = False, network: GuestNetwork | None = None,
                  files: Sequence[tuple[str, str]] = ()) -> bytes:
    """The agent's /minibox/config for ``spec``.

    ``network`` (bridge mode) becomes record ``N ifname address prefixlen
    gateway``: the agent addresses that NIC, brings it and ``lo`` up and adds
    the default route.  Each of ``files`` -- ``(path in the initramfs, path in
    the rootfs)`` -- becomes record ``B source target``: the agent bind-mounts
    it read-only over the target, when the target is a regular file (the
    generated /etc/hosts, /etc/resolv.conf, /etc/hostname of a bridged VM).
    """
    def rec(tag: str, *values: str) -> bytes:
        return tag.encode() + b"".join(v.encode() + b"\0" for v in values)

    out = [rec("A", a) for a in spec.argv]
    env = {"PATH": DEFAULT_PATH, **spec.env}
    out += [rec("E", f"{k}={v}") for k, v in env.items()]
    out += [rec("C", spec.cwd), rec("H", spec.hostname), rec("U", str(spec.user[0])),
            rec("G", str(spec.user[1])), rec("R", root_tag)]
    if spec.readonly_rootfs:
        out.append(rec("r", ""))
    if has_stdin:
        out.append(rec("I", ""))
    if probe:
        out.append(rec("P", ""))
    for m in mounts:
        out.append(rec("M", m.kind, m.tag, m.name, m.target, "1" if m.readonly else "0", m.size))
    if network is not None:
        out.append(rec("N", network.ifname, network.address, str(network.prefixlen), network.gateway))
    for source, target in files:
        out.append(rec("B", source, target))
    return b"".join(out)


def frame(kind: bytes, ident: int, payload: bytes = b"") -> bytes:
    """One host -> guest frame."""
    return HEADER.pack(len(payload), kind[0], ident) + payload


def exec_frame(ident: int, argv: Sequence[str]) -> bytes:
    return frame(EXEC, ident, b"".join(a.encode() + b"\0" for a in argv))


def kill_frame(ident: int, sig: int) -> bytes:
    return frame(KILL, ident, str(int(sig)).encode())


class FrameReader:
    """Reassemble frames from the bytes of the control port as they arrive."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[bytes, int, bytes]]:
        """Add ``data``; yield every complete ``(type, id, payload)``."""
        self._buf += data
        while len(self._buf) >= HEADER.size:
            length, kind, ident = HEADER.unpack_from(self._buf)
            end = HEADER.size + length
            if len(self._buf) < end:
                return
            payload = bytes(self._buf[HEADER.size:end])
            del self._buf[:end]
            yield bytes([kind]), ident, payload


def parse_exit(payload: bytes) -> tuple[int | None, int | None]:
    """``b"x 3"`` -> (3, None); ``b"s 9"`` -> (None, 9)."""
    kind, _, number = payload.decode().partition(" ")
    return (int(number), None) if kind == "x" else (None, int(number))


def parse_failure(payload: bytes) -> tuple[str, int, str]:
    """``step\\0errno\\0detail`` -> (step, errno, detail)."""
    step, err, detail = [*payload.split(b"\0"), b"", b""][:3]
    return step.decode(), int(err or 0), detail.decode(errors="replace")
