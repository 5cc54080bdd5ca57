"""Console scripts that start without ``site``: ``python -S`` and exactly the paths minibox needs.

The scripts pip writes into ``bin/`` (``minibox``, ``minibox-oci``) start
the interpreter as usual, and before the first line of minibox runs,
``site.py`` has scanned site-packages, executed every ``.pth`` file there
(the editable install's path, setuptools' ``_distutils_hack``) and imported
Debian's ``sitecustomize`` (the apport hook): about a third of the
interpreter's own start-up, on every command (docs/benchmarks.md, "Where a
CLI run's milliseconds go").

``make setup`` runs ``python -m minibox._entry scripts BINDIR`` after pip, which
replaces those scripts with ones that start ``python -S`` (no ``site``) and
append to ``sys.path`` exactly the directories ``site`` would have added --
measured once, here, by asking the interpreter for its path with and
without ``site``.  Nothing else changes: ``PYTHONPATH`` and the other
``PYTHON*`` variables are honoured as before (``-S``, not ``-I``: a user who
points ``PYTHONPATH`` at a patched module keeps getting it, ahead of
site-packages as before), and the paths come after the standard library as
``site`` puts them.  The script's first line after the ``#!`` raises the
cycle collector's threshold (:func:`minibox._lean.begin`) before the first
import: at Python's default, a ``minibox-oci create`` and a ``delete`` each
made 4 collections over their own imports, none now.  If the recorded directories no longer hold minibox
(the venv was moved), the script runs ``site`` after all, as pip's script
would have.

The ``minibox`` script also loads the run path's bytecode from one file
(:mod:`minibox._bundle`, built here with the scripts): each of its modules
is checked against its source's size and time, and an edited one is read
from the source instead.

``minibox-oci`` (and ``minibox-oci-vm``) get one more step: when a C
compiler is at hand, ``bin/minibox-oci`` becomes the static C front end of
csrc/oci/front.c, which does ``state``, ``start`` and ``delete`` itself and
hands every other verb to the Python script, now in
``libexec/minibox/`` under the same name (docs/oci.md, "Why the light verbs
are C").

A plain ``pip install .`` keeps pip's ordinary scripts, which work the same,
only slower; running ``python -m minibox._entry BINDIR`` afterwards is the
opt-in.  Running ``pip install`` again writes pip's scripts back.

Which interpreter the venv is made from matters as much: their start-up
differs by milliseconds (HOST-FACTS.md: pyenv's 3.11 starts ~8 ms slower
than Debian's).  ``python3 src/minibox/_entry.py fastest-python`` (run by
``make setup`` before the venv exists, so it imports nothing of minibox)
times every usable interpreter on the machine and prints the fastest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

#: console script name -> the module whose ``entry_point()`` it calls (pyproject.toml's [project.scripts]).
SCRIPTS = {
    "minibox": "minibox.cli",
    "minibox-oci": "minibox.oci.cli",
    "minibox-oci-vm": "minibox.oci.cli",
}

#: Linux reads at most this many bytes of a "#!" line (BINPRM_BUF_SIZE since 5.1; older kernels 128).
SHEBANG_LIMIT = 127

MARKER = "# minibox fast entry"


def site_paths(python: str) -> list[str]:
    """The directories ``site`` appends to ``sys.path`` for ``python`` (site-packages, .pth entries).

    Both interpreters run with ``-E`` so the caller's PYTHONPATH is in neither list.
    """
    show = "import sys, json; print(json.dumps(sys.path))"
    import json

    def path(*flags: str) -> list[str]:
        out = subprocess.run([python, "-E", *flags, "-c", show], capture_output=True, text=True, check=True,
                             cwd="/").stdout
        return [p for p in json.loads(out) if p]

    without_site = set(path("-S"))
    return [p for p in path() if p not in without_site]


#: The script whose modules come from one file of bytecode (minibox/_bundle.py): the ``minibox`` command.
BUNDLED = "minibox.cli"

#: How that script loads minibox/_bundle.py: straight from its file, with the ordinary loader (its .pyc
#: checked as usual), so that the package and its first modules are not looked up before the bundle's
#: finder can answer for them (0.25 ms measured against ``from minibox._bundle import load``).
LOAD_BUNDLE = """try:  # the run path's bytecode from one file, each module checked against its source (_bundle.py)
    from _frozen_importlib import module_from_spec
    from _frozen_importlib_external import spec_from_file_location
    _spec = spec_from_file_location("minibox._bundle", {path!r})
    _bundle = module_from_spec(_spec)
    _spec.loader.exec_module(_bundle)
    _bundle.load()
except OSError:  # minibox moved: the ordinary imports (the run path is the same code, found more slowly)
    pass
"""


def script_text(python: str, module: str, paths: list[str], bundle: str | None = None) -> str:
    """The console script: ``python -S``, site's directories appended, then ``module.entry_point()``.

    ``bundle``: the path of minibox/_bundle.py, whose :func:`~minibox._bundle.load` the script runs first.
    """
    from ._lean import COLLECT_AFTER

    return f"""#!{python} -S
{MARKER} (python -m minibox._entry scripts; pip's own script starts site.py, ~10 ms more)
import gc, sys
gc.set_threshold({COLLECT_AFTER})  # minibox._lean.begin, before the imports: no cycle collection over them
if not sys.flags.safe_path:
    del sys.path[0]  # the script's own directory (bin/), where nothing is importable
sys.path += {paths!r}  # what site.py would add, in its order: site-packages, then its .pth entries
{LOAD_BUNDLE.format(path=bundle) if bundle else ""}try:
    from {module} import entry_point
except ImportError:  # the recorded directories moved: start site after all, as pip's script does
    import site
    site.main()
    from {module} import entry_point
entry_point()
"""


def install(bindir: str, python: str | None = None) -> list[str]:
    """Rewrite minibox's console scripts in ``bindir``; return the names rewritten.

    A script is left as pip wrote it when the interpreter's path would not
    fit on a "#!" line (too long, or with a space) -- it works, only slower.
    """
    bindir = os.path.abspath(bindir)
    python = python or os.path.join(bindir, "python")
    if len(python) + 4 > SHEBANG_LIMIT or any(c.isspace() for c in python):
        return []
    paths = site_paths(python)
    from . import _bundle

    bundle = _bundle.__file__
    written = []
    front = build_front() if any(os.path.exists(os.path.join(bindir, n)) for n in FRONTED) else None
    for name, module in SCRIPTS.items():
        target = os.path.join(bindir, name)
        if not os.path.exists(target):
            continue  # not installed here (pip installs all three)
        if front is not None and name in FRONTED:
            # the Python script goes where the front end hands over to; the front end takes its name
            os.makedirs(os.path.dirname(fronted_script(bindir, name)), exist_ok=True)
            _write_executable(fronted_script(bindir, name), script_text(python, module, paths))
            _write_executable(target, front)
        else:
            _write_executable(target, script_text(python, module, paths, bundle if module == BUNDLED else None))
        written.append(name)
    if "minibox" in written:
        _bundle.build(_bundle.run_path_modules(python, paths))
    return written


def _write_executable(path: str, content: str | bytes) -> None:
    """Write ``content`` to ``path`` under a temporary name, mode 0755, then rename it into place."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


# -- the C front end of minibox-oci ------------------------------------------------------

#: The console scripts csrc/oci/front.c stands in front of: it does ``state``, ``start`` and
#: ``delete`` of a container itself and hands every other verb to the Python script, which
#: lives in ``<bindir>/../libexec/minibox/`` under the same name (the name picks the isolation).
FRONTED = ("minibox-oci", "minibox-oci-vm")


def fronted_script(bindir: str, name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(bindir)), "libexec", "minibox", name)


def build_front() -> bytes | None:
    """Compile csrc/oci/front.c (static, so that no dynamic loader runs on every verb); None without a compiler.

    Without it, minibox-oci is the Python script alone: the same verbs, each ~8 ms slower to start.
    """
    import shutil
    import tempfile

    from ._static import source_path

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "minibox-oci")
        built = subprocess.run([compiler, "-static", "-O2", "-Wall", "-o", out, str(source_path("oci/front.c"))],
                               capture_output=True, text=True)
        if built.returncode != 0:
            print(f"minibox: csrc/oci/front.c did not build; minibox-oci stays Python only:\n{built.stderr}",
                  file=sys.stderr)
            return None
        with open(out, "rb") as f:
            return f.read()


# -- which interpreter ------------------------------------------------------------------------

#: pyproject.toml's requires-python.
MINIMUM_VERSION = (3, 11)
#: What an interpreter must be able to do to hold minibox's venv: make a venv with pip
#: (Debian's python3-venv), and build the cffi core (the C headers).
_USABLE = ("import sys, os, sysconfig, venv, ensurepip; "
           "assert sys.version_info >= {minimum}; "
           "assert os.path.exists(os.path.join(sysconfig.get_path('include'), 'Python.h'))")


def candidate_pythons() -> list[str]:
    """Every python3 / python3.N on PATH and in the usual directories, each once (by its real file)."""
    directories = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]
    names = ["python3", *(f"python3.{minor}" for minor in range(MINIMUM_VERSION[1], 20))]
    found: dict[str, str] = {}
    for directory in directories:
        for name in names:
            path = os.path.join(directory, name)
            if directory and os.access(path, os.X_OK):
                found.setdefault(os.path.realpath(path), path)
    return list(found.values())


def everyone_can_run(path: str) -> bool:
    """Whether every user may execute ``path``: tests run minibox as an unprivileged user too.

    A pyenv under /root (mode 0700) is the case this rules out.
    """
    real = os.path.realpath(path)
    directory = os.path.dirname(real)
    while directory != "/":
        if not os.stat(directory).st_mode & 0o001:
            return False
        directory = os.path.dirname(directory)
    return bool(os.stat(real).st_mode & 0o001)


def usable(path: str) -> bool:
    check = _USABLE.format(minimum=MINIMUM_VERSION)
    try:
        return subprocess.run([path, "-S", "-c", check], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_ms(paths: list[str], rounds: int = 15) -> dict[str, float]:
    """Median start-to-exit of ``python -S -c 'import os'`` per interpreter, sampled in alternation."""
    samples: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(rounds):
        for path in paths:
            start = time.perf_counter()
            subprocess.run([path, "-S", "-c", "import os"], check=True)
            samples[path].append((time.perf_counter() - start) * 1000)
    return {path: sorted(values)[len(values) // 2] for path, values in samples.items()}


def fastest_python(compare: list[str] | None = None) -> tuple[str | None, dict[str, float | str]]:
    """The usable interpreter that starts fastest, and each candidate's time (or why it is not usable).

    ``compare``: more interpreters to time in the same rounds, for the record; they are never chosen.
    """
    verdicts: dict[str, float | str] = {}
    for path in candidate_pythons():
        if not everyone_can_run(path):
            verdicts[path] = "not executable by every user"
        elif not usable(path):
            verdicts[path] = f"not {MINIMUM_VERSION[0]}.{MINIMUM_VERSION[1]}+ with venv, ensurepip and Python.h"
    paths = [path for path in candidate_pythons() if path not in verdicts]
    if not paths:
        return None, verdicts
    extra = [path for path in compare or [] if path not in paths]
    times = start_ms(paths + extra)
    for path in extra:
        verdicts[path] = f"{times.pop(path):.1f} ms to start (python -S), compared only"
    verdicts.update(times)
    return min(times, key=lambda path: times[path]), verdicts


USAGE = """usage: python -m minibox._entry scripts BINDIR    rewrite minibox's console scripts in BINDIR
       python3 src/minibox/_entry.py fastest-python [--compare PYTHON...]
                                                     print the usable interpreter that starts fastest
                                                     (--compare: time these too, for the record)"""


def main(argv: list[str]) -> int:
    if argv[:1] == ["scripts"] and len(argv) == 2:
        written = install(argv[1])
        print(f"fast console scripts in {argv[1]}: {', '.join(written) or 'none (pip scripts kept)'}")
        return 0
    if argv[:1] == ["fastest-python"] and argv[1:2] in ([], ["--compare"]):
        best, times = fastest_python(argv[2:])
        if best is None:
            for path, verdict in times.items():
                print(f"  {path}: {verdict}", file=sys.stderr)
            print(f"no usable python{MINIMUM_VERSION[0]}.{MINIMUM_VERSION[1]}+ (with venv and its C headers) "
                  "that every user may run", file=sys.stderr)
            return 1
        for path, verdict in times.items():
            shown = f"{verdict:.1f} ms to start (python -S)" if isinstance(verdict, float) else verdict
            print(f"  {path}: {shown}{'  <- chosen' if path == best else ''}", file=sys.stderr)
        print(best)
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
