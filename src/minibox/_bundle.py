"""The ``minibox`` command's run path as one file of bytecode: one read instead of ~25 module look-ups.

Every ``minibox run`` is a fresh interpreter that imports ~25 of minibox's
modules, and the import system finds each one afresh: for every module the
path finder stats the package directory, stats the source file twice, opens
its ``.pyc`` in ``__pycache__``, reads it, checks its header against the
source and unmarshals it -- about 7 system calls and as many Python-level
steps of importlib's bootstrap before the module's own code runs.

``make setup`` (``python -m minibox._entry scripts``) therefore compiles the
modules the run path imports (:data:`RUN_PATH` and every minibox module they
import) into one marshal file in the package's ``__pycache__``, and the
``minibox`` console script calls :func:`load` before it imports the command
line: :class:`BundleFinder` then answers for those modules from memory
(docs/benchmarks.md, "Round four", has the figures).

A stale bundle must never run old code, so nothing in it is trusted blindly:

- a module is served only if its source file still has the size and the
  modification time (in nanoseconds) it had when the bundle was built -- one
  ``stat`` per module, stricter than a ``.pyc``'s own check (whole
  seconds); otherwise the finder declines and the ordinary import reads
  the source;
- only when its parent package's ``__path__`` starts with the directory that
  source is in: a ``PYTHONPATH`` that puts another minibox first gets that
  one, as without the bundle (the top-level package itself is always found
  the ordinary way, through ``sys.path``);
- the whole file is ignored if another bytecode version (the interpreter's
  magic number) or another ``-O`` level wrote it, or if it cannot be read.

Modules not in the bundle (a user namespace's, the default image's, the VM
path's) are imported as usual.  A plain ``pip install`` has no bundle and no
call to :func:`load`: the same code, found the ordinary way.
"""

from __future__ import annotations

import marshal
import os
import sys

# importlib's own bootstrap, frozen into the interpreter and loaded before any script: free to import
from _frozen_importlib import ModuleSpec
from _frozen_importlib_external import MAGIC_NUMBER

TYPE_CHECKING = False  # importing typing costs milliseconds (on every start): annotations are strings
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.abc import Loader as _LoaderBase  # what ModuleSpec and sys.meta_path are typed to take
    from types import CodeType, ModuleType

    #: module name -> (source path, its st_mtime_ns, its st_size, the module compiled from it)
    Entries = dict[str, tuple[str, int, int, CodeType]]
else:
    _LoaderBase = object  # the import system uses the protocol (find_spec, create_module, exec_module)

#: The modules ``minibox run --rootfs DIR -- CMD`` imports at the top of its path; the bundle holds these
#: and every minibox module they import (bench/importtime.py's "imports" phase times the same list).
RUN_PATH = ("minibox.cli", "minibox.container.container", "minibox.owner", "minibox.records", "minibox.firstuse",
            "minibox._static", "minibox.policy.capabilities", "minibox.policy.seccomp.cache", "minibox.procfs")


def bundle_path() -> str:
    """Where the run path's bundle lives: beside the package's other bytecode, named for this interpreter."""
    return os.path.join(os.path.dirname(__file__), "__pycache__",
                        f"run-path.{sys.implementation.cache_tag}.bundle")


class BundleFinder(_LoaderBase):
    """A ``sys.meta_path`` finder and loader for one bundle's modules, each checked against its source."""

    def __init__(self, entries: Entries) -> None:
        self.entries = entries

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        entry = self.entries.get(name)
        if entry is None or not path:
            return None  # not bundled, or a top-level name: sys.path decides those
        source, mtime_ns, size, _ = entry
        directory, _, filename = source.rpartition("/")
        is_package = filename == "__init__.py"
        if is_package:
            directory = directory.rpartition("/")[0]
        if path[0] != directory:
            return None  # its parent package was found elsewhere (PYTHONPATH): so is this module
        try:
            status = os.stat(source)
        except OSError:
            return None  # removed since: the ordinary import says so
        if status.st_mtime_ns != mtime_ns or status.st_size != size:
            return None  # edited since the bundle was built: the source wins
        spec = ModuleSpec(name, self, origin=source, is_package=is_package)
        spec.has_location = True  # __file__ is the source, as the ordinary loader sets it
        if is_package:
            spec.submodule_search_locations = [source.rpartition("/")[0]]
        return spec

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        # Popped: a reload, or an import again after a failed one, reads the source.
        _, _, _, code = self.entries.pop(module.__name__)
        exec(code, module.__dict__)


def load(path: str | None = None) -> bool:
    """Put the bundle's finder first on ``sys.meta_path``; False, and nothing changed, without a usable one."""
    try:
        with open(path or bundle_path(), "rb") as f:
            # loads(read()), not load(f): load() reads a file in many small pieces (+2.6 ms of CPU measured)
            magic, optimize, entries = marshal.loads(f.read())
    except (OSError, EOFError, ValueError, TypeError):
        return False
    if magic != MAGIC_NUMBER or optimize != sys.flags.optimize or not isinstance(entries, dict):
        return False
    sys.meta_path.insert(0, BundleFinder(entries))
    return True


def build(modules: dict[str, str], path: str | None = None) -> str:
    """Compile ``modules`` (name -> source path) into a bundle at ``path``, atomically; return the path."""
    entries: Entries = {}
    for name, source in modules.items():
        with open(source, "rb") as f:
            status = os.fstat(f.fileno())  # the size and time of exactly the text compiled
            text = f.read()
        entries[name] = (source, status.st_mtime_ns, status.st_size,
                         compile(text, source, "exec", dont_inherit=True, optimize=sys.flags.optimize))
    path = path or bundle_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(marshal.dumps((MAGIC_NUMBER, sys.flags.optimize, entries)))
    os.replace(tmp, path)  # a running `minibox` reads the old file or the new one, never half of one
    return path


#: Run in a fresh ``python -S`` by :func:`run_path_modules`: import the run path, print what it loaded.
_LIST_MODULES = """
import sys
sys.path += {paths!r}
import {modules}
for name, module in sorted(sys.modules.items()):
    source = getattr(module, "__file__", None) or ""
    if name.startswith("minibox") and source.endswith(".py"):
        print(name, source)
"""


def run_path_modules(python: str, paths: list[str]) -> dict[str, str]:
    """The minibox modules (name -> source) that importing :data:`RUN_PATH` loads in a fresh ``python -S``."""
    import subprocess

    code = _LIST_MODULES.format(paths=paths, modules=", ".join(RUN_PATH))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([python, "-S", "-c", code], capture_output=True, text=True, check=True, cwd="/",
                         env=env).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())
