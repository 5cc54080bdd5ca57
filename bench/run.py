"""minibox against its peers: start-to-exit of /bin/true in a busybox rootfs, side by side.

    python bench/run.py [--runs N] [--quick] [--settle-ms MS] [--profile]

One command measures every row in one run, interleaved (each round samples
every row once, in a shuffled order), and prints medians, spreads, ratios to
``crun run`` and to ``bwrap --unshare-all``, the targets of issues 2 and 3
(PASS/MISS with the numbers), and what a cgroup costs minibox on this host
(create / attach / remove, and the v1 first cgroup.procs write).  Results
also go to bench/results/latest.json.

Rows:

* ``minibox.run`` in this (warm) interpreter: all default namespaces,
  pivot_root, no limits, hence no cgroup; output captured (the API default).
* the ``minibox run`` CLI: a fresh interpreter each time, through the
  console script ``make setup`` writes (python -S, minibox/_entry.py); and
  ``python -S -c pass``, the part of it that is the interpreter's own start.
* ``minibox.run`` with ``Limits(memory="64M", pids=64)``: the cgroup path.
* ``Container(spec).start()`` of a sleeping command, to running (its
  default cgroup, for pause and stats); ``close()`` is not timed.
* ``Container.exec(["/bin/true"])`` into one sleeping container.
* memory per idle container: what each of 10 sleeping containers' cgroups
  is charged (a PASS/MISS line, not a row).
* the peers (bench/peers.py): crun, crun with the same limits, ``crun run
  -d`` of a sleeping container (to running), ``crun exec /bin/true`` into
  one, runc, bwrap, unshare+chroot, chroot -- timed by a server in a
  private mount namespace.
* extension rows: every ``bench/bench_*.py`` that defines
  ``rows(runs: int) -> list[common.Row]`` (e.g. bench_vm.py) is called after
  the main table and its rows are printed with the others (not interleaved).

Before each sample the benchmark sleeps ``--settle-ms`` (default 60 ms).  On
cgroup v1 the first write to cgroup.procs after a quiet spell waits for an RCU
grace period (8-19 ms here) and later writes within a few ms are cheap; the
settle time makes every container start pay what a lone start pays, instead
of one row riding on the previous row's warm state.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    TIMES,
    CommandFailed,
    LineServer,
    Row,
    Subject,
    format_table,
    interleaved,
    median,
    ms_since,
    serve_lines,
    time_call,
    time_command,
    write_json,
)
from peers import ID_PREFIX, PEER_ROWS, SLEEPER_ARGS, PeerConfig, PeerServer, host_mount_leaked, leftover_cgroups

DEFAULT_RUNS = 30
QUICK_RUNS = 5
REFERENCES = ("crun", "bwrap")  # the ratio columns


@dataclass(frozen=True)
class Target:
    """A speed target from the issues: ``row`` ≤ ``factor`` times ``reference``."""

    label: str
    row: str
    reference: str
    factor: float
    issue: str


TARGETS = (
    Target(f"in-process minibox.run ≤ 1.0{TIMES} bwrap --unshare-all", "minibox_run", "bwrap", 1.0, "issue 2"),
    Target(f"minibox CLI ≤ 1.0{TIMES} crun run", "minibox_cli", "crun", 1.0, "issue 14"),
    Target(f"minibox.run with memory+pids limits ≤ 0.3{TIMES} crun with the same limits", "minibox_limits",
           "crun_limits", 0.3, "issue 14"),
    Target(f"Container(spec).start() to running ≤ 0.3{TIMES} crun run -d", "minibox_container", "crun_detached", 0.3,
           "issue 14"),
    Target(f"Container.exec ≤ 0.3{TIMES} crun exec", "minibox_exec", "crun_exec", 0.3, "issue 14"),
    Target(f"minibox-oci create+start+delete ≤ 1.5{TIMES} crun", "oci:minibox-oci", "oci:crun", 1.5, "issue 12"),
    Target(f"podman run --rm with minibox-oci ≤ 1.1{TIMES} with crun", "podman:minibox", "podman:crun", 1.1,
           "issue 12"),
    Target(f"VirtualMachine boot-to-exit ≤ 1.1{TIMES} a hand-written QEMU command line", "vm:minibox", "vm:hand",
           1.1, "issue 5"),
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the minibox rows ----------------------------------------------------------------


def cli_environment(pycache: Path) -> dict[str, str]:
    """The CLI's environment: as a user's, with compiled bytecode cached (in our temp dir).

    Sessions on these machines export PYTHONDONTWRITEBYTECODE=1, which would
    make every CLI start recompile minibox from source (~12 ms, measured);
    a user's installed minibox has its .pyc files.  PYTHONPYCACHEPREFIX keeps
    the cache out of the source tree; the warm-up rounds fill it.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def minibox_subjects(rootfs: Path, pycache: Path, exec_box: Any) -> list[Subject]:
    import minibox

    plain = minibox.Spec(argv=["/bin/true"], rootfs=str(rootfs))
    limited = minibox.Spec(argv=["/bin/true"], rootfs=str(rootfs), limits=minibox.Limits(memory="64M", pids=64))
    sleeper = minibox.Spec(argv=SLEEPER_ARGS, rootfs=str(rootfs))

    def start_container() -> float:
        """Container(spec).start() until the command runs (with its default cgroup); close() not timed."""
        box = minibox.Container(sleeper)
        try:
            start = time.perf_counter()
            box.start()
            return ms_since(start)
        finally:
            box.close()

    def exec_true() -> float:
        start = time.perf_counter()
        result = exec_box.exec(["/bin/true"])
        elapsed = ms_since(start)
        if result.exit_code != 0:
            raise CommandFailed(f"exec: exit {result.exit_code} ({result.reason}): {result.stderr[-200:]!r}")
        return elapsed

    def run_once(spec: Any) -> Callable[[], float]:
        def sample() -> float:
            start = time.perf_counter()
            result = minibox.run(spec)
            elapsed = ms_since(start)
            if result.exit_code != 0:
                raise CommandFailed(f"exit {result.exit_code} ({result.reason}): {result.stderr[-200:]!r}")
            return elapsed
        return sample

    cli = minibox_cli()
    cli_argv = [cli, "run", "--rootfs", str(rootfs), "--", "/bin/true"]
    cli_env = cli_environment(pycache)
    return [
        Subject("minibox_run", "minibox.run (in-process)", run_once(plain), "warm interpreter, no cgroup"),
        Subject("minibox_cli", "minibox run (CLI)", lambda: time_command(cli_argv, env=cli_env),
                "fresh interpreter, .pyc cached"),
        Subject("python_floor", "python -S -c pass (the CLI's floor)",
                lambda: time_command([sys.executable, "-S", "-c", "pass"], env=cli_env),
                "the venv's interpreter, as the console script starts it"),
        Subject("minibox_limits", "minibox.run (memory 64M, pids 64)", run_once(limited), "cgroup v1/v2 path"),
        Subject("minibox_container", "Container.start() (to running)", start_container,
                "default cgroup; close not timed"),
        Subject("minibox_exec", "Container.exec", exec_true, "into a sleeping container"),
    ]


BALLAST_MIB = 256


def serve_ballast(mib: int, rootfs: str) -> int:
    """Server mode (``run.py serve-ballast MIB ROOTFS``): time minibox.run from a caller holding MIB MiB.

    A real caller (a CI harness, a web service sandboxing requests) is rarely
    a 20 MiB interpreter; a spawn that clones the caller without CLONE_VM
    pays for its page tables and copy-on-write faults.  This row shows it.
    """
    import minibox

    ballast = [bytearray(1 << 20) for _ in range(mib)]  # zero-filled, so resident
    spec = minibox.Spec(argv=["/bin/true"], rootfs=rootfs)

    def measure(_key: str) -> float:
        start = time.perf_counter()
        result = minibox.run(spec)
        elapsed = ms_since(start)
        if result.exit_code != 0:
            raise CommandFailed(f"exit {result.exit_code} ({result.reason})")
        return elapsed

    serve_lines(measure, sys.stdin, sys.stdout)
    del ballast
    return 0


def ballast_subject(server: LineServer) -> Subject:
    return Subject("minibox_run_big", f"minibox.run (caller holds {BALLAST_MIB} MiB)",
                   lambda: server.measure("minibox_run"), "another process; same call")


def minibox_cli() -> str:
    beside = Path(sys.executable).parent / "minibox"
    if beside.exists():
        return str(beside)
    found = shutil.which("minibox")
    if found is None:
        raise SystemExit("the minibox command is not installed (pip install -e . in the venv)")
    return found


def peer_subjects(server: LineServer) -> list[Subject]:
    notes = {"crun": "reference", "bwrap": "reference", "chroot": "no namespaces"}

    def sampler(key: str) -> Callable[[], float]:
        return lambda: server.measure(key)

    return [Subject(key, name, sampler(key), notes.get(key, "")) for key, name in PEER_ROWS]


ORDER = ("minibox_run", "minibox_run_big", "minibox_cli", "python_floor", "minibox_limits", "minibox_container",
         "minibox_exec", "crun", "crun_limits", "crun_detached", "crun_exec", "runc", "bwrap", "unshare_chroot",
         "chroot")


# --- extension benchmarks --------------------------------------------------------------


def extension_rows(runs: int) -> list[Row]:
    """Rows from every bench/bench_*.py that defines ``rows(runs) -> list[Row]``."""
    rows: list[Row] = []
    for path in sorted(BENCH_DIR.glob("bench_*.py")):
        name = path.stem
        log(f"extension {name}: running (runs={runs})")
        try:
            module = importlib.import_module(name)
            provider = getattr(module, "rows", None)
            if not callable(provider):
                log(f"extension {name}: no rows(runs) function; skipped")
                continue
            for row in provider(runs):
                if not isinstance(row, Row):  # accept any object with the same fields
                    row = Row(name=row.name, median_ms=row.median_ms, notes=getattr(row, "notes", ""),
                              key=getattr(row, "key", ""), samples_ms=list(getattr(row, "samples_ms", [])))
                row.key = row.key or f"{name}:{row.name}"
                rows.append(row)
        except Exception as e:  # an extension's failure is a row, not a crash
            rows.append(Row.not_measured(name, name, f"{type(e).__name__}: {e}"))
    return rows


# --- memory per container -------------------------------------------------------------

MEMORY_TARGET_KIB = 400
MEMORY_SANDBOXES = 10


def memory_per_container(rootfs: Path, count: int = MEMORY_SANDBOXES) -> dict[str, Any]:
    """What each idle container's cgroup is charged (Container.stats().memory_bytes), as issue 14 counts it.

    ``count`` containers run ``sleep`` side by side; each one's charge is
    read once all are up (v1 memory.usage_in_bytes, v2 memory.current).  No
    runtime process stays behind a container, so the cgroup holds all of it.
    """
    import minibox

    label = f"memory per idle container ≤ {MEMORY_TARGET_KIB} KiB charged"
    check: dict[str, Any] = {"target": label, "issue": "issue 14", "factor": None}
    with contextlib.ExitStack() as stack:
        try:
            boxes = [stack.enter_context(minibox.Container(minibox.Spec(argv=SLEEPER_ARGS, rootfs=str(rootfs))))
                     for _ in range(count)]
            time.sleep(0.3)
            charged = [box.stats().memory_bytes for box in boxes]
        except Exception as e:
            check.update(verdict="NOT MEASURED", detail=f"{type(e).__name__}: {e}")
            return check
    values = [c / 1024 for c in charged if c is not None]
    if not values:
        check.update(verdict="NOT MEASURED", detail="the cgroups report no memory figure")
        return check
    kib = median(values)
    check.update(verdict="PASS" if kib <= MEMORY_TARGET_KIB else "MISS", row_ms=None, kib=kib,
                 detail=f"median {kib:.0f} KiB over {len(values)} (range {min(values):.0f}-{max(values):.0f}), "
                        f"target ≤ {MEMORY_TARGET_KIB} KiB")
    return check


# --- what a cgroup costs minibox ----------------------------------------------------


def cgroup_breakdown(runs: int, settle: float) -> list[Row]:
    """Time minibox's Cgroup.create / attach / remove from outside, on sleeping processes.

    Each iteration starts a fresh ``sleep`` (our child), lets the host settle
    (so the RCU state is cold, as for a lone container start), and times:
    ``Cgroup.create`` (mkdirs + limit writes), ``attach`` (one cgroup.procs
    write per hierarchy), and ``remove`` after the sleeper was killed and
    reaped.  A second sleeper is then written into the same directories by
    hand, one write at a time, after another settle: the first write is the
    RCU grace period, the rest are the ordinary cost.
    """
    from minibox import Limits
    from minibox.container.cgroups import Cgroup, prune_parents

    names = ("Cgroup.create (memory 64M, pids 64)", "Cgroup.attach (all hierarchies)",
             "  first cgroup.procs write", "  each later write (mean)",
             "a process moving itself (what the child does)", "Cgroup.remove (after exit)")
    keys = ("cg_create", "cg_attach", "cg_first_write", "cg_later_write", "cg_self_join", "cg_remove")
    samples: dict[str, list[float]] = {k: [] for k in keys}
    first_hierarchy = ""
    limits = Limits(memory="64M", pids=64)
    try:
        for i in range(runs):
            sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
            cgroup: Any = None
            try:
                time.sleep(settle)
                start = time.perf_counter()
                cgroup = Cgroup.create(f"{ID_PREFIX}-cg-{os.getpid()}-{i}", limits)
                samples["cg_create"].append(ms_since(start))
                time.sleep(settle)
                pid = sleepers[0].pid
                start = time.perf_counter()
                cgroup.attach(pid)
                samples["cg_attach"].append(ms_since(start))
                time.sleep(settle)
                writes = []
                for directory in dict.fromkeys(cgroup.paths.values()):
                    start = time.perf_counter()
                    with open(f"{directory}/cgroup.procs", "w") as f:
                        f.write(str(sleepers[1].pid))
                    writes.append(ms_since(start))
                first_hierarchy = next(iter(cgroup.paths))
                samples["cg_first_write"].append(writes[0])
                if len(writes) > 1:
                    samples["cg_later_write"].append(statistics.fmean(writes[1:]))
                time.sleep(settle)
                samples["cg_self_join"].append(self_join_ms(cgroup.self_join_files()))
            finally:
                for sleeper in sleepers:
                    sleeper.kill()  # our own children, by pid
                    sleeper.wait()
                if cgroup is not None:
                    samples["cg_remove"].append(time_call(cgroup.remove))
    except Exception as e:
        return [Row.not_measured("cg_breakdown", "cgroup breakdown", f"{type(e).__name__}: {e}")]
    finally:
        with contextlib.suppress(Exception):
            prune_parents()
    rows = []
    for key, name in zip(keys, names, strict=True):
        note = f"{first_hierarchy} hierarchy" if key == "cg_first_write" else ""
        rows.append(Row.from_samples(key, name, samples[key], note) if samples[key]
                    else Row.not_measured(key, name, "no samples"))
    return rows


def self_join_ms(paths: Sequence[str]) -> float:
    """A fresh process writes "0" to each of ``paths`` (moving itself, as the spawn's child does); its ms.

    Timed inside the child, from the first open to the last write, and
    sent back through a pipe; the child then exits (its cgroup empties).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        try:
            start = time.perf_counter()
            for path in paths:
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, b"0")
                os.close(fd)
            os.write(write_end, str(ms_since(start)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        reply = os.read(read_end, 64)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    if not reply:
        raise CommandFailed("the self-join child reported nothing")
    return float(reply)


# --- profile of minibox.run ------------------------------------------------------------


def profile_minibox_run(rootfs: Path, runs: int) -> str:
    import minibox

    spec = minibox.Spec(argv=["/bin/true"], rootfs=str(rootfs))
    minibox.run(spec)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        minibox.run(spec)
    profiler.disable()
    out = _StringSink()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)  # type: ignore[arg-type]
    return out.text()


class _StringSink:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def text(self) -> str:
        return "".join(self.parts)


# --- report ------------------------------------------------------------------------------


def rss_mib() -> float:
    """Peak RSS of this process: minibox.run's cost grows with its caller's memory."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def paired_ratio(a: Row, b: Row) -> float | None:
    """Median over rounds of a/b, when both rows have one sample per round."""
    if not a.samples_ms or len(a.samples_ms) != len(b.samples_ms):
        return None
    return median([x / y for x, y in zip(a.samples_ms, b.samples_ms, strict=True) if y > 0])


def check_targets(by_key: dict[str, Row]) -> list[dict[str, Any]]:
    checks = []
    for t in TARGETS:
        row, ref = by_key.get(t.row), by_key.get(t.reference)
        check: dict[str, Any] = {"target": t.label, "issue": t.issue, "factor": t.factor}
        if row is None or ref is None or row.median_ms is None or ref.median_ms is None:
            missing = row if row is not None and row.median_ms is None else ref
            check.update(verdict="NOT MEASURED", detail=missing.notes if missing else "row missing")
        else:
            ratio = row.median_ms / ref.median_ms
            paired = paired_ratio(row, ref)
            check.update(  # the paired ratio decides when the rows were sampled round by round
                verdict="PASS" if (paired if paired is not None else ratio) <= t.factor else "MISS",
                ratio=ratio, paired_ratio=paired, row_ms=row.median_ms, reference_ms=ref.median_ms,
                detail=(f"{row.median_ms:.2f} ms vs {ref.median_ms:.2f} ms = {ratio:.2f}{TIMES} "
                        f"(paired {paired:.2f}{TIMES})" if paired is not None else f"= {ratio:.2f}{TIMES}")
                + f", target ≤ {t.factor:.1f}{TIMES}",
            )
        checks.append(check)
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve-ballast"] and len(argv) == 3:
        return serve_ballast(int(argv[1]), argv[2])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=None, help=f"samples per row (default {DEFAULT_RUNS})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} samples per row, one warm-up round")
    parser.add_argument("--settle-ms", type=float, default=60.0,
                        help="idle time before each sample so cgroup v1's RCU state is cold (default 60)")
    parser.add_argument("--no-extensions", action="store_true", help="skip bench/bench_*.py")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of minibox.run")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results (default "
                        "bench/results/latest.json)")
    args = parser.parse_args(argv)
    runs = args.runs or (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    warmup = 1 if args.quick else 2
    settle = max(0.0, args.settle_ms) / 1000.0
    if os.geteuid() != 0:
        raise SystemExit("run as root: crun, runc and minibox's namespaces and cgroups need it")

    started = datetime.now().astimezone()
    load_at_start = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="minibox-bench."))
    try:
        from minibox.images.busybox import build_busybox_rootfs

        rootfs = build_busybox_rootfs(workdir / "rootfs")
        config = PeerConfig.detect(rootfs, workdir)
        config.prepare()
        import minibox

        ballast_argv = [sys.executable, str(Path(__file__).resolve()), "serve-ballast", str(BALLAST_MIB), str(rootfs)]
        with PeerServer(config) as server, LineServer(ballast_argv, "ballast server") as big, \
                minibox.Container(minibox.Spec(argv=SLEEPER_ARGS, rootfs=str(rootfs))) as exec_box:
            subjects = minibox_subjects(rootfs, workdir / "pycache", exec_box)
            subjects += [*peer_subjects(server), ballast_subject(big)]
            subjects.sort(key=lambda s: ORDER.index(s.key))

            def sample_after_settle(fn: Callable[[], float]) -> Callable[[], float]:
                def sample() -> float:
                    time.sleep(settle)
                    return fn()
                return sample

            timed = [Subject(s.key, s.name, sample_after_settle(s.sample), s.notes) for s in subjects]
            log(f"{len(timed)} rows, ({warmup} warm-up + {runs}) rounds, interleaved, settle {args.settle_ms:g} ms")
            rows = interleaved(timed, runs, warmup=warmup,
                               progress=lambda done, total: log(f"  round {done}/{total}") if done % 5 == 0 else None)
        log("memory per container ...")
        memory_check = memory_per_container(rootfs)
        log("cgroup breakdown ...")
        breakdown = cgroup_breakdown(runs, settle)
        extra = [] if args.no_extensions else extension_rows(runs)
        profile = profile_minibox_run(rootfs, max(runs, 20)) if args.profile else None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    all_rows = rows + extra
    by_key = {r.key: r for r in all_rows}
    references = {name: by_key[name].median_ms if name in by_key else None for name in REFERENCES}
    for row in all_rows:
        crun = references.get("crun")
        row.ratio = row.median_ms / crun if row.median_ms is not None and crun else None
    checks = [*check_targets(by_key), memory_check]

    load = os.getloadavg()
    print(f"minibox bench — {started:%Y-%m-%d %H:%M %Z} — {platform.node()} — kernel {platform.release()} — "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (at {load_at_start[0]:.2f} when it began)")
    print(f"start-to-exit of /bin/true in a busybox rootfs; medians of {runs} interleaved runs; "
          f"settle {args.settle_ms:g} ms before each sample; this process's peak RSS {rss_mib():.0f} MiB\n")
    print(format_table(all_rows, references))
    print("\nTargets:")
    for c in checks:
        print(f"  {c['verdict']:<4}  {c['target']} ({c['issue']}): {c['detail']}")
    print("\nWhere a cgroup's time goes (minibox.container.cgroups, timed from outside on a sleeping process):\n")
    print(format_table(breakdown, {}))
    if profile:
        print("\ncProfile of minibox.run (cumulative):\n")
        print(profile)

    leaks = leftover_cgroups()
    if host_mount_leaked():
        leaks.append("the minibox-bench tmpfs is mounted in the host namespace")
    for leak in leaks:
        print(f"LEAK: {leak}")

    path = write_json({
        "date": started.isoformat(timespec="seconds"),
        "host": platform.node(), "kernel": platform.release(), "python": sys.version.split()[0],
        "runs": runs, "warmup": warmup, "settle_ms": args.settle_ms, "bench_rss_mib": rss_mib(),
        "load_average": {"start": load_at_start, "end": load},
        "rows": all_rows, "targets": checks, "cgroup_breakdown": breakdown, "leaks": leaks,
    }, args.json)
    log(f"\nresults written to {path}")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
