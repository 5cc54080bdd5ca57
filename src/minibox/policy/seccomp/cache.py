"""Seccomp programs cached on disk between processes: the default profile's, and a mapping's.

Compiling the default profile (profile.py and compile.py: about 150 libseccomp rules) and
even importing the compiler cost several milliseconds: a large share of a
``minibox run`` from the shell, where every process starts cold.  A profile
given as a mapping costs more: podman's default (434 system calls in an allow
list) took 14 ms to compile here and 5 ms to import the compiler for, on
every ``minibox-oci create`` (2026-12-03).  A program depends only on its
profile (the default's: the capability set), the compiler's source,
libseccomp's version, the kernel version and the machine, so it is kept in
the state directory under a SHA-256 of all of them, and this module -- which
imports nothing heavy -- reads it back.

The key is a cryptographic hash because a mapping is written by whoever
wrote the Spec or the OCI bundle: with a checksum that can be steered to
collide, one tenant could plant the program of a permissive profile under
the key of another's strict one.  The directory is the caller's own (root's
for root), and a cached file is used only if this user owns it and nobody
else may write it; nothing inside a container can reach it.
"""

from __future__ import annotations

import os
from _collections_abc import Mapping  # collections.abc would import collections (~1 ms)

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

SOCK_FILTER_SIZE = 8  # struct sock_filter, as in profile.py

MAX_PROGRAM = 4096 * SOCK_FILTER_SIZE  # BPF_MAXINSNS: the kernel refuses a longer program

# What this process already read or compiled, per state directory, kind and
# profile (the caps' repr or the mapping's JSON text): hashing the compiler's
# sources into a key costs ~0.4 ms a start that a process starting many
# containers need not pay again (the code it runs cannot change under it anyway).
_loaded: dict[tuple[str, str, bytes], bytes] = {}
_inputs: list[bytes] = []


def _compiler_inputs() -> bytes:
    """What every program depends on besides its profile: the compiler, libseccomp, the kernel, the machine."""
    if not _inputs:
        material = b""
        here = os.path.dirname(__file__)
        # the compiler and the names it maps
        for source in ("profile.py", "oci.py", "compile.py", "../capabilities.py"):
            with open(os.path.join(here, source), "rb") as f:
                material += f.read()
        from ... import _native

        # a new libseccomp may resolve or lay out rules differently (a C core built
        # before this binding existed cannot say: its programs are keyed without it)
        seccomp_version = getattr(_native.lib, "seccomp_version", None)
        version = seccomp_version() if seccomp_version is not None else None
        libseccomp = (version.major, version.minor, version.micro) if version is not None else None
        uname = os.uname()
        material += repr((libseccomp, uname.release, uname.machine)).encode()
        _inputs.append(material)
    return _inputs[0]


def _key(profile: bytes) -> str:
    from ..._lean import sha256  # hashlib's digest without loading OpenSSL (~2 ms of imports)

    digest = sha256(_compiler_inputs())
    digest.update(b"\0profile\0" + profile)
    return str(digest.hexdigest())


def _ours(st: os.stat_result) -> bool:
    """Owned by this user and writable by nobody else."""
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _read(path: str) -> bytes | None:
    """A cached program, if it is one: this user's own file, writable by nobody else, of a valid length,
    in a directory nobody else may write either (who can rename in it can swap two entries' names)."""
    try:
        if not _ours(os.stat(os.path.dirname(path))):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not _ours(st) or not 0 < st.st_size <= MAX_PROGRAM:
            return None
        program = os.read(fd, MAX_PROGRAM + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return program if len(program) == st.st_size and len(program) % SOCK_FILTER_SIZE == 0 else None


#: Programs kept at most; a miss that finds more removes the least recently written.
#: Each is a few KiB (podman's default profile: 11 KiB); a host sees a handful.
MAX_ENTRIES = 64


def _prune(directory: str) -> None:
    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith("seccomp-") and e.is_file()]
        if len(entries) < MAX_ENTRIES:
            return
        entries.sort(key=lambda e: e.stat().st_mtime_ns)
        for old in entries[:len(entries) - MAX_ENTRIES + 1]:
            os.unlink(old.path)
    except OSError:
        pass  # another process pruned it first; a full cache only costs space


def _write(path: str, program: bytes) -> None:
    """Cache ``program`` (atomically: a reader sees the whole file or none); a failure only costs a compile."""
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        _prune(os.path.dirname(path))
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, program)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only state directory (or a stale temporary file) only costs the compile next time


def _cached(name: str, material: bytes, compile_it: Callable[[], tuple[bytes | None, bool]]) -> bytes | None:
    """The program cached under ``material``, or ``compile_it()``'s: (program, may it be cached)."""
    from ...paths import state_dir_name

    state = state_dir_name()
    known = _loaded.get((state, name, material))
    if known is not None:
        return known
    path = os.path.join(state, "cache", f"seccomp-{name}-{_key(material)[:40]}.bpf")
    program = _read(path)
    if program is None:
        program, cacheable = compile_it()
        if program is None or not cacheable:
            return program
        _write(path, program)
    _loaded[(state, name, material)] = program
    return program


def default_program(caps: frozenset[str]) -> bytes:
    """The BPF program of the default profile for ``caps``: from the cache, or compiled and cached."""

    def compile_default() -> tuple[bytes | None, bool]:
        from .compile import compile_profile

        return compile_profile("default", caps=caps), True

    program = _cached("default", repr(sorted(caps)).encode(), compile_default)
    assert program is not None
    return program


def program_for(seccomp: str | Mapping[str, Any], caps: frozenset[str]) -> bytes | None:
    """``Spec.seccomp`` (or OCI's ``linux.seccomp``) -> its program, cached; None: no filter.

    A mapping's key is its exact JSON text.  Only a mapping that compiled
    without a warning (an unknown system call skipped) is cached, so that
    a cached start says what a compiled one would; a bad mapping raises
    the compiler's SpecError every time, since nothing is cached for it.
    """
    if seccomp == "default":
        return default_program(caps)

    def compile_it() -> tuple[bytes | None, bool]:
        import warnings

        from .compile import compile_profile

        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            program = compile_profile(seccomp, caps=caps)
        for warning in said:  # said again, to whoever listens, as compiling outside this block would have
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return program, not said

    if not isinstance(seccomp, Mapping):
        return compile_it()[0]  # "unconfined" (no filter), or the compiler's SpecError
    from ..._json import dumps

    try:
        text = dumps(seccomp).encode()
    except (TypeError, ValueError):
        return compile_it()[0]  # not JSON (a Spec built by hand): compiled every time
    return _cached("profile", text, compile_it)
