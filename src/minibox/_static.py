"""Small static helper programs minibox builds from csrc/ on first use.

Two programs run where minibox's Python cannot: the guest agent (pid 1 of a
microVM, csrc/agent/agent.c) and minibox-init (an optional pid 1 for
containers, csrc/init/init.c).  Both must be static: they run inside a
rootfs or an initramfs that has no C library of the host's version.  They
are compiled once per source version with ``cc -static -O2`` into the state
directory, under a name carrying a hash of the source.

The sources are found in the package (``minibox/_csrc/``, copied there by
setup.py for a regular install) or in the repository (an editable install).
"""

from __future__ import annotations

import os

from .errors import PreflightError

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from pathlib import Path


def source_path(relative: str) -> Path:
    """``relative`` (e.g. "init/init.c") from the package data or the repository's csrc/."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    for candidate in (here / "_csrc" / relative, here.parents[1] / "csrc" / relative):
        if candidate.is_file():
            return candidate
    raise PreflightError(f"csrc/{relative} is missing from this minibox installation; reinstall minibox")


def static_binary(relative: str, name: str) -> str:
    """:func:`build_static`'s path as a str; a binary built before is found without pathlib.

    This runs on every container start (the keeper), so the look-up costs
    only the source's hash: the compiler's tools (shutil, subprocess,
    tempfile) and pathlib are imported when something must be built.
    """
    from ._lean import sha256  # hashlib's digest without loading OpenSSL (~2 ms of imports)
    from .paths import state_dir_name

    here = os.path.dirname(os.path.abspath(__file__))
    for source in (os.path.join(here, "_csrc", relative),
                   os.path.join(os.path.dirname(os.path.dirname(here)), "csrc", relative)):
        if os.path.isfile(source):  # the same order as source_path()
            with open(source, "rb") as f:
                digest = sha256(f.read()).hexdigest()[:16]
            binary = os.path.join(state_dir_name(), f"{name}-{digest}")
            if os.path.isfile(binary):
                return binary
            break
    return str(build_static(relative, name))


#: A build of another source version is removed once it is this old (seconds).
STALE_BUILD_AGE = 24 * 3600


def build_static(relative: str, name: str) -> Path:
    """Compile csrc/``relative`` into ``<state dir>/<name>-<hash>`` unless already built."""
    import hashlib
    import shutil
    import subprocess
    import tempfile
    import time

    from .paths import state_dir

    source = source_path(relative)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    binary = state_dir() / f"{name}-{digest}"
    if binary.is_file():
        return binary
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise PreflightError(f"no C compiler to build {name}: install gcc and libc6-dev")
    from .firstuse import step

    fd, tmp = tempfile.mkstemp(dir=state_dir(), prefix=f".{name}-")
    os.close(fd)
    try:
        with step(name, f"compiling the static {name} (csrc/{relative})",
                  f"a small program minibox runs inside sandboxes; once per source version, kept in {state_dir()}") \
                as compiled:
            built = subprocess.run([compiler, "-static", "-O2", "-o", tmp, str(source)],
                                   capture_output=True, text=True, check=False)
            compiled.size = os.stat(tmp).st_size
        if built.returncode != 0:
            raise PreflightError(f"could not build the static {name} (is libc6-dev installed?):\n"
                                 + built.stderr.strip())
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)
        # Builds of other sources go once nobody has rebuilt them for a day:
        # another minibox on this host (another version, another checkout)
        # may be using its own build at this very moment.
        now = time.time()
        for stale in state_dir().glob(f"{name}-*"):
            try:
                if stale != binary and now - stale.stat().st_mtime > STALE_BUILD_AGE:
                    stale.unlink()
            except FileNotFoundError:
                pass  # removed meanwhile by another minibox
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return binary
