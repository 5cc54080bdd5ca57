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
Host -> guest: ``x`` exec (a request: records like the config's), ``k`` kill
(signal number), ``i``/``c`` a template clone's stdin and run, ``r`` the
clock and entropy of a restored guest.  Every ``X`` adds three numbers: ``x N PEAK_KIB CPU_US OOM_KILLS``.

Every frame the guest sends is untrusted input: a payload is at most
:data:`MAX_PAYLOAD` bytes, the type is one of the six above, and the numbers
in ``S``, ``X`` and ``F`` frames parse and lie in range, or the reader raises
:class:`~minibox.errors.ProtocolError` and the VM is ended.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ProtocolError
from ..sandbox import command_env
from ..spec import Spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .network import GuestNetwork

HEADER = struct.Struct("<IBI")  # length, type, id
#: The largest payload either side accepts (the agent's FRAME_MAX): the agent
#: sends at most 64 KiB of output per frame, the host a command line.
MAX_PAYLOAD = 1 << 20

# Guest -> host
HELLO, STARTED, STDOUT, STDERR, EXIT, FAIL = b"H", b"S", b"O", b"E", b"X", b"F"
GUEST_TYPES = frozenset(HELLO + STARTED + STDOUT + STDERR + EXIT + FAIL)
# Host -> guest
EXEC, KILL, STDIN, RUN = b"x", b"k", b"i", b"c"  # i, c: a template clone's run (vm/clone.py)
REINIT = b"r"  # a restored running guest's own clock and entropy (vm/vm_snapshot.py)
WARM_UP = b"u"  # a pooled clone goes once through the run's paths before its run (vm/pool.py)

#: The agent's FRAME_MAX (csrc/agent/agent.c): an exec request, stdin included, fits in one frame.
FRAME_MAX = 1024 * 1024
#: What an exec's stdin may hold (it travels inside the request frame).
EXEC_STDIN_MAX = FRAME_MAX - 256 * 1024


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
    rec = _record
    out = [rec("A", a) for a in spec.argv]
    out += [rec("E", f"{k}={v}") for k, v in command_env(spec.env, spec.hostname, spec.user[0]).items()]
    out += [rec("C", spec.cwd), rec("H", spec.hostname), rec("U", str(spec.user[0])),
            rec("G", str(spec.user[1])), rec("R", root_tag)]
    if not probe:
        out += policy_records(spec)
    if spec.tty:
        out.append(rec("T", ""))
    if spec.init:
        out.append(rec("i", ""))
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


def policy_records(spec: Spec) -> list[bytes]:
    """The Spec's policy as config records, for the agent to apply to every command.

    The same policy objects the container path's child applies (``minibox.policy``):
    ``K`` the five capability masks (hex: bounding effective permitted
    inheritable ambient), ``n`` no_new_privs, ``S`` the seccomp program the
    host compiled (hex; the guest is the same architecture), ``L`` one rlimit
    (``resource soft hard``).  Raises SpecError for a bad field, before
    anything boots.
    """
    from ..policy import capabilities

    caps = capabilities.capability_set(spec)
    # the masks of a root command; the agent empties all but the bounding set
    # for a command of any other uid (an exec may run as another user), the
    # rule of policy.capabilities.masks_for
    masks = capabilities.masks_for(caps, 0)
    out = [_record("K", " ".join(f"{m:x}" for m in (masks.bounding, masks.effective, masks.permitted,
                                                     masks.inheritable, masks.ambient)))]
    if spec.no_new_privileges:
        out.append(_record("n", ""))
    from ..policy.seccomp.cache import program_for

    program = program_for(spec.seccomp, caps)
    if program:
        out.append(_record("S", program.hex()))
    if spec.rlimits:
        from ..policy.rlimits import parse_rlimits

        out += [_record("L", f"{r.resource} {r.soft} {r.hard}") for r in parse_rlimits(spec.rlimits)]
    limits = spec.limits
    if limits.pids is not None or limits.memory is not None or limits.cpus is not None:
        # the guest's own cgroup (record c: pids.max, memory.max, cpu.max), cgroup v2's files
        period = 100_000
        cpu = "" if limits.cpus is None else f"{round(limits.cpus * period)} {period}"
        out.append(_record("c", "" if limits.pids is None else str(limits.pids),
                           "" if limits.memory is None else str(limits.memory_bytes), cpu))
    return out


def template_config() -> bytes:
    """The config of a template boot: record ``W``, the agent waits for a ``c`` frame."""
    return b"W\0R\0"


def encode_run_config(spec: Spec, mounts: Sequence[GuestMount], *, has_stdin: bool,
                      clock_ns: int, entropy: bytes, network: GuestNetwork | None = None, mac: str = "",
                      etc_files: Mapping[str, str] | None = None) -> bytes:
    """A template clone's ``c`` frame: ``spec``'s config plus what no two clones share.

    ``Q sec nsec`` is the host's wall clock (the agent sets the guest's to
    it), ``Z hex`` random bytes the agent credits to the guest's input pool
    before it forces a CRNG reseed.  The rootfs is the one packed in the
    template's initramfs (root tag "").  A clone on the bridge adds its
    ``network`` (record ``N``), its NIC's ``mac`` (record ``m``) and its
    ``etc_files`` (records ``f name contents``, which the agent writes to
    /minibox/etc/ and bind-mounts over /etc/ with records ``B``).
    """
    files = [(f"/minibox/etc/{name}", f"/etc/{name}") for name in (etc_files or {})]
    config = encode_config(spec, mounts, root_tag="", has_stdin=has_stdin, network=network, files=files)
    if mac:
        config += _record("m", mac)
    for name, text in (etc_files or {}).items():
        config += _record("f", name, text)
    sec, nsec = divmod(clock_ns, 1_000_000_000)
    return config + f"Q{sec} {nsec}\0".encode() + b"Z" + entropy.hex().encode() + b"\0"


def reinit_frame(ident: int, clock_ns: int, entropy: bytes) -> bytes:
    """An ``r`` request: ``"sec nsec\\0hex\\0"``; the agent sets the clock, reseeds, answers ``X`` "x 0"."""
    sec, nsec = divmod(clock_ns, 1_000_000_000)
    return frame(REINIT, ident, f"{sec} {nsec}\0{entropy.hex()}\0".encode())


def warm_up_frame(ident: int, clock_ns: int, entropy: bytes, spec: Spec | None = None) -> bytes:
    """A ``u`` request: ``r``'s payload, then ``spec``'s policy records (K n S L) and its user (U G).

    The agent forks a throwaway ``/bin/true`` with that policy and user, reaps it, answers ``X``.
    """
    payload = reinit_frame(ident, clock_ns, entropy)[HEADER.size:]
    if spec is not None:
        payload += b"".join(r for r in policy_records(spec) if r[:1] in (b"K", b"n", b"S", b"L"))
        payload += _record("U", str(spec.user[0])) + _record("G", str(spec.user[1]))
    return frame(WARM_UP, ident, payload)


def frame(kind: bytes, ident: int, payload: bytes = b"") -> bytes:
    """One host -> guest frame."""
    return HEADER.pack(len(payload), kind[0], ident) + payload


def _record(tag: str, *values: str) -> bytes:
    """One config/request record: a tag byte, then NUL-terminated strings."""
    return tag.encode() + b"".join(v.encode() + b"\0" for v in values)


def exec_frame(ident: int, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str = "/",
               user: tuple[int, int] = (0, 0), tty: bool = False, stdin: bytes | None = None) -> bytes:
    """An exec request: records ``A`` argv, ``E`` env, ``C`` cwd, ``U``/``G`` ids, ``T`` tty,
    and last ``I`` followed by the raw stdin bytes up to the end of the frame."""
    out = [_record("A", a) for a in argv]
    out += [_record("E", f"{k}={v}") for k, v in (env or {}).items()]  # the caller applied command_env
    out += [_record("C", cwd), _record("U", str(user[0])), _record("G", str(user[1]))]
    if tty:
        out.append(_record("T", ""))
    if stdin is not None:
        out.append(b"I" + bytes(stdin))
    payload = b"".join(out)
    if len(payload) > FRAME_MAX:
        from ..errors import SpecError

        raise SpecError("argv", f"the exec request is {len(payload)} bytes; at most {FRAME_MAX} fit in a frame")
    return frame(EXEC, ident, payload)


def kill_frame(ident: int, sig: int) -> bytes:
    return frame(KILL, ident, str(int(sig)).encode())


class FrameReader:
    """Reassemble frames from the bytes of the control port as they arrive.

    The guest is untrusted, so the reader holds at most one frame's worth of
    bytes: a header announcing more than :data:`MAX_PAYLOAD`, or a type this
    protocol does not have, raises :class:`~minibox.errors.ProtocolError` as
    soon as the header is in, before any payload is buffered.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[bytes, int, bytes]]:
        """Add ``data``; yield every complete ``(type, id, payload)``."""
        self._buf += data
        pos = 0
        try:
            while len(self._buf) - pos >= HEADER.size:
                length, kind, ident = HEADER.unpack_from(self._buf, pos)
                if kind not in GUEST_TYPES:
                    raise ProtocolError(f"unknown frame type {kind:#04x} (id {ident})")
                if length > MAX_PAYLOAD:
                    raise ProtocolError(f"a {chr(kind)!r} frame announcing {length} bytes (id {ident}); "
                                        f"the bound is {MAX_PAYLOAD} bytes")
                end = pos + HEADER.size + length
                if len(self._buf) < end:
                    break
                payload = bytes(self._buf[pos + HEADER.size:end])
                pos = end
                yield bytes([kind]), ident, payload
        finally:
            del self._buf[:pos]  # once per chunk: a flood of tiny frames costs no quadratic copying


def _number(text: str, what: str, payload: bytes, low: int, high: int) -> int:
    if not (text.isdigit() and low <= int(text) <= high):
        raise ProtocolError(f"{what} is not a number in {low}..{high}: {payload[:64]!r}")
    return int(text)


def parse_exit(payload: bytes) -> tuple[int | None, int | None]:
    """``b"x 3"`` -> (3, None); ``b"s 9"`` -> (None, 9); anything else is a ProtocolError.

    The agent adds three numbers (an exec's peak RSS in KiB, its CPU time in
    microseconds, the guest cgroup's OOM kills while it ran), and for the
    main command two more (the bytes its stdout and stderr ports carried):
    validated here, read by :func:`parse_exit_usage`, :func:`parse_exit_oom`
    and :func:`parse_exit_output`.
    """
    fields = payload.decode("ascii", errors="replace").split(" ")
    if len(fields) not in (2, 5, 7):
        raise ProtocolError(f"an exit frame has {len(fields)} fields, not 2, 5 or 7: {payload[:64]!r}")
    for extra in fields[2:]:
        _number(extra, "an exit frame's usage", payload, 0, 1 << 62)
    kind, number = fields[0], fields[1]
    if kind == "x":
        return _number(number, "an exit frame's status", payload, 0, 255), None
    if kind == "s":
        return None, _number(number, "an exit frame's signal", payload, 1, 64)
    raise ProtocolError(f"an exit frame is neither 'x N' nor 's N': {payload[:64]!r}")


def parse_started(payload: bytes) -> int:
    """``b"42"`` -> 42: the guest pid of a command that started."""
    return _number(payload.decode("ascii", errors="replace"), "a started frame's pid", payload, 1, 1 << 22)


def parse_exit_usage(payload: bytes) -> tuple[int | None, float | None]:
    """The usage an exec's exit frame carries: (peak RSS in bytes, CPU seconds), or Nones."""
    fields = payload.decode().split()
    if len(fields) < 4 or fields[2] == "0":
        return None, None
    return int(fields[2]) * 1024, int(fields[3]) / 1e6


def parse_exit_output(payload: bytes) -> tuple[int, int] | None:
    """The bytes the main command's stdout and stderr ports carried (fields 6 and 7), if the guest counted.

    The guest kernel counts them as each write(2) queues its buffer
    (virtio_console's debugfs ``bytes_sent``); the agent reads them once
    every process has ended.  A hostile guest may claim anything: the host
    uses them only to stop waiting early, never to wait longer.
    """
    fields = payload.decode().split()
    return (int(fields[5]), int(fields[6])) if len(fields) == 7 else None


def parse_exit_oom(payload: bytes) -> bool:
    """Whether the guest cgroup's OOM killer ended a process while the command ran (field 5)."""
    fields = payload.decode().split()
    return len(fields) >= 5 and int(fields[4]) > 0


def parse_failure(payload: bytes) -> tuple[str, int, str]:
    """``step\0errno\0detail`` -> (step, errno, detail)."""
    step, err, detail = [*payload.split(b"\0"), b"", b""][:3]
    errno = _number(err.decode("ascii", errors="replace"), "a failure frame's errno", payload, 0, 4095) if err else 0
    return step.decode(errors="replace")[:64], errno, detail.decode(errors="replace")[:4096]
