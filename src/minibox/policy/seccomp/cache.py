"""The default seccomp program, cached on disk between processes.

Compiling the default profile (profile.py and compile.py: about 150 libseccomp rules) and
even importing the compiler cost several milliseconds: a large share of a
``minibox run`` from the shell, where every process starts cold.  The
program depends only on the capability set, the compiler's source, the
kernel version and the machine, so it is kept in the state directory under
a checksum of all four, and this module -- which imports nothing heavy --
reads it back.  The directory is the caller's own (root's for root):
nothing inside a container can reach it.
"""

from __future__ import annotations

import os

SOCK_FILTER_SIZE = 8  # struct sock_filter, as in profile.py

# What this process already read or compiled, per state directory and
# capability set: the key hashes four source files, ~0.4 ms a start that a
# process starting many containers need not pay again (the code it runs
# cannot change under it anyway).
_loaded: dict[tuple[str, frozenset[str]], bytes] = {}


def _key(caps: frozenset[str]) -> str:
    import zlib  # hashlib would cost 2 ms of imports; two 32-bit checksums make the key

    material = b""
    here = os.path.dirname(__file__)
    for source in ("profile.py", "oci.py", "compile.py", "../capabilities.py"):  # the compiler and the names it maps
        with open(os.path.join(here, source), "rb") as f:
            material += f.read()
    uname = os.uname()
    material += repr((sorted(caps), uname.release, uname.machine)).encode()
    return f"{zlib.crc32(material):08x}{zlib.adler32(material):08x}{len(material):x}"


def default_program(caps: frozenset[str]) -> bytes:
    """The BPF program of the default profile for ``caps``: from the cache, or compiled and cached."""
    from ...paths import state_dir_name

    state = state_dir_name()
    known = _loaded.get((state, caps))
    if known is not None:
        return known
    path = os.path.join(state, "cache", f"seccomp-{_key(caps)}.bpf")
    try:
        with open(path, "rb") as f:
            program = f.read()
        if program and len(program) % SOCK_FILTER_SIZE == 0:
            _loaded[(state, caps)] = program
            return program
    except OSError:
        pass
    from .compile import compile_profile

    compiled = compile_profile("default", caps=caps)
    assert compiled is not None
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(compiled)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only state directory only costs the compile next time
    return compiled
