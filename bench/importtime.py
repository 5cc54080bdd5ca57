"""Where the ``minibox run`` command line's milliseconds go: a ``-X importtime`` budget.

    sudo .venv/bin/python bench/importtime.py                  # minibox run -- /bin/true (the default image)
    sudo .venv/bin/python bench/importtime.py --rootfs DIR     # minibox run --rootfs DIR -- /bin/true
         .venv/bin/python bench/importtime.py --oci            # minibox-oci's import path (no root needed)
    sudo .venv/bin/python bench/importtime.py --phases 20 --rootfs DIR   # interpreter, site, imports, the rest

It runs the command in a fresh interpreter under ``python -X importtime``
(CPython's per-module import timer: microseconds spent importing each
module, itself and with what it imported), with compiled bytecode cached in
a temporary directory as an installed minibox has it.  It prints the
slowest imports, then checks the budget: none of :data:`FORBIDDEN` may be
imported, and exits 1 naming any that is.  :data:`STILL_IMPORTED` are the
modules the issue wants gone too but which the path still needs today;
they are listed, not failed.  Timings on this shared machine are noisy:
compare the tree and the relative costs, not absolute milliseconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from minibox._bundle import RUN_PATH

#: Modules the CLI's run path and minibox-oci's verbs must not import (tests/unit/test_import_budget.py
#: checks the same set).  Each is a fresh interpreter's milliseconds for something minibox does without.
FORBIDDEN = frozenset({
    "dataclasses", "inspect", "ast", "dis", "tokenize", "linecache",   # dataclasses and what it pulls in
    "typing", "pathlib", "shutil", "subprocess", "tempfile", "importlib.metadata", "hashlib",
    "argparse", "gettext",   # minibox run's plain flags are parsed without argparse (cli._fast_run_args)
    "re", "json",            # hand-written checks; minibox._json uses json's C half directly
    "enum", "signal", "socket", "selectors",   # minibox._lean: the signal numbers, SCM_RIGHTS over _socket
    "threading", "contextlib", "functools", "collections", "copy", "weakref",   # _thread, _lean, _collections_abc
})
#: minibox's modules that only some containers need: a ``minibox run --rootfs DIR`` without a user
#: namespace imports none of them (minibox.container.plan and .container import them where used).
ONLY_WHEN_USED = frozenset({"minibox.images.busybox", "minibox.container.userns"})
#: At most this many of minibox's own modules on ``minibox run --rootfs DIR -- CMD``: each costs a start
#: ~0.15 ms of import machinery before its own code runs (docs/benchmarks.md, round three).
MINIBOX_MODULES_BUDGET = 27
#: Wanted gone as well, still imported: none today (the tuple says which when there are some again).
STILL_IMPORTED: tuple[str, ...] = ()

RUN = "from minibox.cli import main; raise SystemExit(main(sys.argv[1:]))"
#: Every module a minibox-oci create, start, state, kill or delete loads.
OCI = ("import minibox.oci.cli, minibox.oci.runtime, minibox.oci.config, minibox.oci.state, minibox.oci.mounts, "
       "minibox.oci.gate, minibox.oci.hooks, minibox.container.cgroups, minibox.container.spawn, "
       "minibox.images.paths, minibox.procfs, minibox._static")


def importtime(code: str, argv: list[str], pycache: str) -> tuple[list[tuple[str, int, int]], int]:
    """Run ``code`` under -X importtime; return (module, self µs, cumulative µs) rows and the exit status."""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": pycache}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    command = [sys.executable, "-X", "importtime", "-c", f"import sys; {code}", *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|")
        rows.append((name.strip(), int(self_us), int(cumulative_us)))
    return rows, done.returncode


#: Every module of the run path, imported without running anything (the "imports" phase): the list the
#: console script's bytecode bundle is built from (minibox/_bundle.py), imported here the ordinary way.
RUN_MODULES = "import " + ", ".join(RUN_PATH)


def phases(rootfs: str | None, rounds: int, src: str | None = None) -> int:
    """Where a ``minibox run -- /bin/true`` goes, from outside: medians of alternating fresh processes.

    interpreter = ``python -S -c pass``; site = what ``python -c pass``
    adds (pip's console script pays it, minibox's does not); imports = the
    run path's modules on top of the interpreter; the rest of the console
    script's run is parsing, the container's start, wait and clean-up.
    """
    import statistics
    import time

    paths = [p for p in sys.path if p.endswith("site-packages") or p.endswith("/src")]
    run = [os.path.join(os.path.dirname(sys.executable), "minibox")]
    if src:  # another checkout (e.g. an older commit, for a before/after): as pip's script starts it, with site
        paths = [p for p in paths if not p.endswith("/src")] + [src]
        run = [sys.executable, "-c", f"import sys; sys.path.insert(0, {src!r}); sys.argv[0] = 'minibox'; "
                                     "from minibox.cli import entry_point; entry_point()"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    steps = {
        "interpreter (python -S -c pass)": [sys.executable, "-S", "-c", "pass"],
        "interpreter with site (python -c pass)": [sys.executable, "-c", "pass"],
        "interpreter + the run path's imports": [sys.executable, "-S", "-c",
                                                 f"import sys; sys.path += {paths!r}; {RUN_MODULES}"],
        "minibox run -- /bin/true (console script)": [*run, "run", *(["--rootfs", rootfs] if rootfs else []),
                                                       "--", "/bin/true"],
    }
    if src:  # this checkout's console script in the same rounds: the before/after, interleaved
        steps["this checkout's minibox run, for comparison"] = [
            os.path.join(os.path.dirname(sys.executable), "minibox"), "run",
            *(["--rootfs", rootfs] if rootfs else []), "--", "/bin/true"]
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for round_no in range(rounds + 1):
        for name, argv in steps.items():
            time.sleep(0.06)
            start = time.perf_counter()
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)  # the CPU time of it and its reaped children
            elapsed = (time.perf_counter() - start) * 1000
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise SystemExit(f"{name}: exit status {proc.returncode}")
            if round_no:
                wall[name].append(elapsed)
                cpu[name].append((usage.ru_utime + usage.ru_stime) * 1000)
    names = list(steps)[:4]
    load = os.getloadavg()
    print(f"medians of {rounds} alternating runs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print("    wall ms   CPU ms")
    for name in steps:
        print(f"  {statistics.median(wall[name]):8.1f} {statistics.median(cpu[name]):8.1f}  {name}")
    for label, values in (("wall", wall), ("CPU", cpu)):
        m = [statistics.median(values[name]) for name in names]
        print(f"  -> {label}: site would add {m[1] - m[0]:.1f} ms; the imports {m[2] - m[0]:.1f} ms; "
              f"parsing, the container and its clean-up {m[3] - m[2]:.1f} ms")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rootfs", help="run in this rootfs (default: minibox's own image)")
    parser.add_argument("--oci", action="store_true", help="the minibox-oci import path instead")
    parser.add_argument("--top", type=int, default=15, help="how many of the slowest imports to print")
    parser.add_argument("--phases", type=int, metavar="N", default=0,
                        help="instead: time the run's phases from outside, N alternating rounds")
    parser.add_argument("--src", metavar="DIR", help="with --phases: that checkout's src/ (started with site)")
    args = parser.parse_args()
    if args.phases:
        return phases(args.rootfs, args.phases, args.src)
    if args.oci:
        code, argv = OCI, []
    else:
        code = RUN
        argv = ["run", *(["--rootfs", args.rootfs] if args.rootfs else []), "--", "/bin/true"]
    with tempfile.TemporaryDirectory(prefix="minibox-importtime-") as pycache:
        importtime(code, argv, pycache)  # fill the bytecode cache
        rows, status = importtime(code, argv, pycache)
    if status != 0:
        print(f"the command exited with {status} (minibox run needs root)", file=sys.stderr)
        return 1
    names = {name for name, _, _ in rows}
    total = sum(self_us for _, self_us, _ in rows)
    ours = sum(self_us for name, self_us, _ in rows if name.startswith("minibox"))
    load = os.getloadavg()
    print(f"{len(rows)} modules imported, {total / 1000:.1f} ms in all ({ours / 1000:.1f} ms in minibox's own); "
          f"load average {load[0]:.1f}")
    print(f"the {args.top} slowest (self ms, with what they import ms):")
    for name, self_us, cumulative_us in sorted(rows, key=lambda row: -row[1])[:args.top]:
        print(f"  {self_us / 1000:6.2f} {cumulative_us / 1000:7.2f}  {name}")
    still = [name for name in STILL_IMPORTED if name in names]
    print(f"still imported (wanted gone, needed today): {', '.join(still) or 'none'}")
    bad = sorted(names & FORBIDDEN)
    if args.rootfs:
        bad += sorted(names & ONLY_WHEN_USED)
        own = sorted(name for name in names if name.startswith("minibox"))
        if len(own) > MINIBOX_MODULES_BUDGET:
            print(f"FAIL: {len(own)} of minibox's modules, the budget is {MINIBOX_MODULES_BUDGET}: {', '.join(own)}")
            return 1
    if bad:
        print(f"FAIL: forbidden imports on this path: {', '.join(bad)}")
        return 1
    print(f"PASS: none of {', '.join(sorted(FORBIDDEN))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
