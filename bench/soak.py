"""bench/soak.py: many mixed sandboxes, callers killed at random, then one gc -- is anything left?

A soak is how a runtime shows that *nothing is lost and nothing leaks,
whatever fails*.  This one runs N container runs and M VM runs of a mix
of scenarios (plain, limits, bridge, timeout, OOM, command not found,
exec, pause/resume, VM), from several concurrent callers; a fraction of
the runs is made by a fresh caller process that is killed with SIGKILL at
a random moment of its run.  Then it runs ``minibox gc`` once and takes an
inventory of the host -- cgroups in every hierarchy, mounts, network links,
nft tables, processes, state files, temp files -- and compares it with the
one taken before.  It prints:

* unexpected failures: a run whose outcome was not the scenario's (a
  killed caller has no outcome: it is expected to leave things for gc);
* leaks: anything in the inventory after gc that was not there before;
* the steady callers' file descriptors and RSS over their runs, and the
  RSS growth over the last half of each caller's runs.

Isolation from the rest of this shared machine: every caller runs with a
private cgroup parent, runtime dir, bridge, nft table and TMPDIR, and an
environment marker (``MINIBOX_SOAK``) that every process it starts
inherits -- so the inventory counts this soak's objects only, and the
final gc cannot touch another session's sandboxes.

    sudo .venv/bin/python bench/soak.py --runs 10000 --vm-runs 200 --kill-fraction 0.1
    make soak                        # the same, with SOAK_ARGS to change it

Exit status: 0 when there was no unexpected failure and no leak, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20
MARKER = "MINIBOX_SOAK"


# --- the scenarios: what one caller does, and what outcome is expected ----------------------


class Unexpected(Exception):
    """A run ended differently from what its scenario expects."""


def _spec(argv: list[str], **kw: Any) -> Any:
    from minibox import Spec

    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", MARKER: os.environ.get(MARKER, "")}
    return Spec(argv=argv, env=env, **kw)


def _expect(condition: bool, what: str, result: Any) -> None:
    if not condition:
        out = getattr(result, "stdout", b"")[-200:]
        err = getattr(result, "stderr", b"")[-200:]
        raise Unexpected(f"{what}: got {result!r} stdout={out!r} stderr={err!r}")


def plain() -> None:
    import minibox

    r = minibox.run(_spec(["echo", "soak"]))
    _expect(r.exit_code == 0 and r.stdout == b"soak\n", "echo soak", r)


def limits() -> None:
    import minibox
    from minibox import Limits

    r = minibox.run(_spec(["sh", "-c", "cat /proc/self/status | grep -c ^Vm"],
                          limits=Limits(memory="64M", pids=32, cpus=0.5)))
    _expect(r.exit_code == 0 and r.stdout.strip().isdigit(), "a limited run", r)


def bridge() -> None:
    import minibox

    r = minibox.run(_spec(["ip", "-4", "-o", "addr", "show", "eth0"], network="bridge"))
    _expect(r.exit_code == 0 and b"inet " in r.stdout, "an address on the bridge", r)


def timeout() -> None:
    import minibox

    r = minibox.run(_spec(["sleep", "30"], timeout=0.2))
    _expect(r.reason == "timeout", "a timeout", r)


def oom() -> None:
    import minibox
    from minibox import Limits

    r = minibox.run(_spec(["sh", "-c", "x=$(head -c 104857600 /dev/zero | tr '\\0' a); echo survived"],
                          limits=Limits(memory="32M")))
    _expect(r.reason == "oom" and b"survived" not in r.stdout, "an OOM kill", r)


def not_found() -> None:
    import minibox
    from minibox.errors import CommandNotFoundError

    try:
        r = minibox.run(_spec(["/no/such/command"]))
    except CommandNotFoundError:
        return
    _expect(False, "CommandNotFoundError", r)


def exec_() -> None:
    from minibox import Container

    with Container(_spec(["sleep", "30"])) as box:
        r = box.exec(["cat", "/etc/hostname"])
        _expect(r.exit_code == 0 and r.stdout.strip() != b"", "exec in a running container", r)
        box.kill()
        box.wait(timeout=10)


def pause_resume() -> None:
    from minibox import Container

    with Container(_spec(["sleep", "30"]), cgroup=True) as box:
        box.pause()
        box.resume()
        r = box.exec(["true"])
        _expect(r.exit_code == 0, "exec after resume", r)
        box.kill()
        end = box.wait(timeout=10)
        _expect(end.signal == signal.SIGKILL, "killed after pause/resume", end)


def vm() -> None:
    import minibox

    r = minibox.run(_spec(["echo", "soak"]), isolation="vm")
    _expect(r.exit_code == 0 and b"soak" in r.stdout, "echo in a VM", r)


#: name -> (weight among container runs, function, how long a run takes, roughly, in s)
CONTAINER_SCENARIOS: dict[str, tuple[int, Callable[[], None], float]] = {
    "plain": (30, plain, 0.05), "limits": (15, limits, 0.1), "bridge": (10, bridge, 0.15),
    "timeout": (10, timeout, 0.3), "oom": (10, oom, 0.4), "not_found": (10, not_found, 0.05),
    "exec": (10, exec_, 0.15), "pause_resume": (5, pause_resume, 0.2),
}
VM_SCENARIO = ("vm", vm, 2.5)
SCENARIOS = {**{name: fn for name, (_, fn, _) in CONTAINER_SCENARIOS.items()}, "vm": vm}
DURATION = {**{name: d for name, (_, _, d) in CONTAINER_SCENARIOS.items()}, "vm": VM_SCENARIO[2]}


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def run_one(name: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        SCENARIOS[name]()
        error = None
    except Exception as e:  # the soak reports every failure, whatever its type
        error = f"{type(e).__name__}: {e}"
    return {"scenario": name, "error": error, "seconds": round(time.perf_counter() - t0, 4),
            "rss_kib": rss_kib(), "fds": len(os.listdir("/proc/self/fd"))}


def worker_main() -> int:
    """A steady caller: runs the scenarios named on stdin, one JSON line back per run."""
    out = sys.stdout
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        out.write(json.dumps(run_one(name)) + "\n")
        out.flush()
    return 0


def caller_main(name: str) -> int:
    """A caller that will be killed: say "ready" once imported, then run one scenario."""
    import importlib

    # Import before "ready": the kill should hit the run, not the imports.
    importlib.import_module("minibox.vm.virtual_machine" if name == "vm" else "minibox.container.container")
    print("ready", flush=True)
    return 0 if run_one(name)["error"] is None else 1


# --- the inventory ---------------------------------------------------------------------------


@dataclass
class Soak:
    """One soak's private names and directories."""

    tag: str
    base: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, tag: str | None = None) -> Soak:
        tag = tag or secrets.token_hex(3)
        base = Path(f"/tmp/minibox-soak-{tag}")
        (base / "tmp").mkdir(parents=True)
        soak = cls(tag, base)
        soak.env = dict(os.environ, MINIBOX_CGROUP_PARENT=f"minibox-soak-{tag}",
                        MINIBOX_RUNTIME_DIR=str(base / "run"), TMPDIR=str(base / "tmp"),
                        MINIBOX_BRIDGE=f"mbsoak{tag[:4]}", MINIBOX_NFT_TABLE=f"minibox_soak_{tag}",
                        PYTHONUNBUFFERED="1", **{MARKER: tag})
        return soak

    @property
    def cgroup_parent(self) -> str:
        return self.env["MINIBOX_CGROUP_PARENT"]


def _cgroups(parent: str) -> list[str]:
    """Every directory named after the soak's cgroup parent, in every mounted hierarchy, and below."""
    found = []
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if " - cgroup" in line]
    for mount in mounts:
        for directory, dirs, _ in os.walk(mount):
            for d in dirs:
                if d == parent:
                    found += [os.path.join(directory, d, k) for k in os.listdir(os.path.join(directory, d))
                              if os.path.isdir(os.path.join(directory, d, k))]
            if directory.count("/") - mount.count("/") >= 3:
                dirs[:] = []  # the parent sits at most a few levels down (under the caller's own cgroup)
    return sorted(found)


def _marked_processes(tag: str, exclude: set[int]) -> list[str]:
    """Processes whose environment carries this soak's marker (everything its callers started)."""
    needle = f"{MARKER}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0].decode()
        except OSError:
            continue
        found.append(f"{entry} [{state}] {cmd[:120]}")
    return sorted(found)


def _links(bridge: str) -> list[str]:
    """The soak's bridge, the ports on it, and master-less minibox ports (a veth or tap left behind).

    Links of other sessions on this machine (on their own bridges) are not counted.
    """
    found = []
    for name in os.listdir("/sys/class/net"):
        master = os.path.basename(os.readlink(f"/sys/class/net/{name}/master")) \
            if os.path.islink(f"/sys/class/net/{name}/master") else None
        if name == bridge or master == bridge or (master is None and name.startswith(("mbv", "mbtap"))):
            found.append(name if master is None else f"{name} (on {master})")
    return sorted(found)


def _nft_tables() -> list[str]:
    """Every nft table on the host, as ``nft list tables`` prints them."""
    nft = shutil.which("nft") or "/usr/sbin/nft"
    proc = subprocess.run([nft, "list", "tables"], capture_output=True, text=True, check=False)
    return sorted(line for line in proc.stdout.splitlines() if line.strip())


def _files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def inventory(soak: Soak, exclude: set[int]) -> dict[str, list[str]]:
    """What is on the host now that this soak could have left: see the module docstring."""
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(line.split(" - ")[0].split(" ", 4)[4] for line in f
                        if "minibox" in line or soak.tag in line)
    return {
        "cgroups": _cgroups(soak.cgroup_parent),
        "mounts": mounts,
        "links": _links(soak.env["MINIBOX_BRIDGE"]),
        "nft tables": [t for t in _nft_tables() if soak.tag in t],  # the soak's table only
        "processes": _marked_processes(soak.tag, exclude),
        "state files": _files(soak.base / "run"),
        # The callers' TMPDIR is private: whatever minibox makes with tempfile lands there
        # (/tmp itself is shared with every other session on this machine).
        "temp files": _files(soak.base / "tmp"),
    }


def diff(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, list[str]]:
    """What ``after`` has that ``before`` had not, per kind."""
    new = {k: sorted(set(after[k]) - set(before.get(k, []))) for k in after}
    return {k: v for k, v in new.items() if v}


def lasting_leaks(soak: Soak, before: dict[str, list[str]], exclude: set[int],
                  settle: float = 2.0) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(inventory after, what is new in it and still there ``settle`` seconds later).

    A master-less port of another session may be on its way to its bridge;
    a process may be exiting: only what stays is a leak.
    """
    first = inventory(soak, exclude)
    if not diff(before, first):
        return first, {}
    time.sleep(settle)
    second = inventory(soak, exclude)
    both = {k: sorted(set(first[k]) & set(second[k])) for k in second}
    return second, diff(before, both)


# --- the orchestra ---------------------------------------------------------------------------


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: Counter[str] = field(default_factory=Counter)
    killed: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    workers: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # pid -> [(rss KiB, fds)]
    caller_pids: set[int] = field(default_factory=set)


def schedule(runs: int, vm_runs: int, kill_fraction: float, rng: random.Random) -> list[tuple[str, bool]]:
    """The runs, shuffled: (scenario, made by a caller that gets killed)."""
    names = [n for n, (w, _, _) in CONTAINER_SCENARIOS.items() for _ in range(w)]
    plan = [(rng.choice(names), rng.random() < kill_fraction) for _ in range(runs)]
    plan += [("vm", rng.random() < kill_fraction) for _ in range(vm_runs)]
    rng.shuffle(plan)
    return plan


def _python() -> list[str]:
    return [sys.executable, os.path.abspath(__file__)]


#: Start steps the test hook can stop a caller after (minibox/owner.py, MINIBOX_TEST_DIE_AFTER_STEP);
#: a runtime without the hook ignores the variable, and the caller is killed at a random moment instead.
HOOK_STEPS = 6


def killed_run(soak: Soak, name: str, rng: random.Random, tally: Tally) -> None:
    """A fresh caller, SIGKILLed at a random moment of its run, or by itself after start step N."""
    env = soak.env
    if rng.random() < 0.5:
        env = dict(env, MINIBOX_TEST_DIE_AFTER_STEP=str(rng.randint(1, HOOK_STEPS)))
    proc = subprocess.Popen([*_python(), "--caller", name], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    with tally.lock:
        tally.caller_pids.add(proc.pid)
    try:
        assert proc.stdout is not None
        select.select([proc.stdout], [], [], 60)  # "ready": imported, about to start the sandbox
        time.sleep(rng.uniform(0, DURATION[name] * 1.2))
        proc.send_signal(signal.SIGKILL)  # our own child, by pid
    finally:
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        with tally.lock:
            tally.caller_pids.discard(proc.pid)
            tally.killed[name] += 1


class Worker:
    """A steady caller process, fed scenario names; it lives through many runs (RSS, fds)."""

    #: A run taking longer than this is a hang: the worker is killed and replaced.
    RUN_TIMEOUT = 180.0

    def __init__(self, soak: Soak) -> None:
        self.proc = subprocess.Popen([*_python(), "--worker"], env=soak.env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def run(self, name: str) -> dict[str, Any]:
        """One run's report; RuntimeError when the worker died or hung (it is then gone)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.RUN_TIMEOUT)
        if not ready:
            self.proc.kill()  # our own child, by pid
            self.proc.wait()
            raise RuntimeError(f"the worker {self.proc.pid} hung for {self.RUN_TIMEOUT:g} s in {name}; killed")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker {self.proc.pid} died (exit {self.proc.wait()}) in {name}")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def drive(soak: Soak, plan: list[tuple[str, bool]], concurrency: int, seed: int, tally: Tally,
          progress: Callable[[int], None], stop_at: float | None = None) -> None:
    """``concurrency`` slots, each with its own steady worker, take runs off the plan.

    With ``stop_at`` (a time.time() value), no run starts after it: the soak ends early
    with what it has done (the report says how many runs that was).
    """
    queue: Iterator[tuple[int, tuple[str, bool]]] = iter(enumerate(plan))
    qlock = threading.Lock()

    def slot(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        worker = Worker(soak)
        with tally.lock:
            tally.caller_pids.add(worker.proc.pid)
            tally.workers[worker.proc.pid] = []
        try:
            while True:
                with qlock:
                    item = None if stop_at is not None and time.time() >= stop_at else next(queue, None)
                if item is None:
                    return
                n, (name, kill) = item
                if kill:
                    killed_run(soak, name, rng, tally)
                    progress(n)
                    continue
                try:
                    result = worker.run(name)
                except RuntimeError as e:  # a dead or hung worker is an unexpected failure; go on
                    with tally.lock:
                        tally.unexpected.append(f"run {n} ({name}): {e}")
                    worker.close()
                    worker = Worker(soak)
                    with tally.lock:
                        tally.workers[worker.proc.pid] = []
                    progress(n)
                    continue
                with tally.lock:
                    tally.done[name] += 1
                    tally.seconds.setdefault(name, []).append(result["seconds"])
                    tally.workers[worker.proc.pid].append((result["rss_kib"], result["fds"]))
                    if result["error"]:
                        tally.unexpected.append(f"run {n} ({name}): {result['error']}")
                progress(n)
        finally:
            worker.close()

    threads = [threading.Thread(target=slot, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def gc(soak: Soak) -> tuple[int, str]:
    minibox = str(Path(sys.executable).with_name("minibox"))
    proc = subprocess.run([minibox, "gc"], env=soak.env, capture_output=True, text=True, timeout=300)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def growth(samples: list[tuple[int, int]]) -> tuple[float, int]:
    """(RSS growth in MiB, fd growth) from the middle of a worker's runs to its end."""
    if len(samples) < 2:
        return 0.0, 0
    half = samples[len(samples) // 2:]
    return (half[-1][0] - half[0][0]) / 1024, half[-1][1] - half[0][1]


def cleanup_own(soak: Soak) -> None:
    """Remove this soak's own bridge, nft table and empty cgroups if a leak left them, and its directory.

    The cgroup parent is the soak's alone, so an empty container cgroup under
    it is dead whatever its age: no grace as ``minibox gc`` gives unrecorded
    ones it cannot attribute (the leak report above has counted them already).
    """
    with contextlib.suppress(Exception):
        from minibox.container import cgroups

        parent = soak.env["MINIBOX_CGROUP_PARENT"]
        cgroups.remove_empty_orphans(min_age=0.0, parent=parent)
        cgroups.prune_parents(parent)
    with contextlib.suppress(Exception):
        from minibox.network import bridge as br

        with br.opened() as ipr:
            br.remove_bridge(ipr, soak.env["MINIBOX_BRIDGE"])
    nft = shutil.which("nft") or "/usr/sbin/nft"
    subprocess.run([nft, "delete", "table", "inet", soak.env["MINIBOX_NFT_TABLE"]], capture_output=True, check=False)
    subprocess.run([nft, "delete", "table", "ip", soak.env["MINIBOX_NFT_TABLE"]], capture_output=True, check=False)
    shutil.rmtree(soak.base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="container runs (default 1000)")
    parser.add_argument("--vm-runs", type=int, default=20, help="VM runs (default 20)")
    parser.add_argument("--kill-fraction", type=float, default=0.1, help="share of runs whose caller is SIGKILLed")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent callers")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", metavar="FILE", help="also write the whole report as JSON")
    parser.add_argument("--stop-at", metavar="HH:MM", help="start no run after this time (UTC, today)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--caller", metavar="SCENARIO", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    if args.caller:
        return caller_main(args.caller)
    if os.geteuid() != 0:
        print("soak: needs root (cgroups, bridge networking, VMs)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    stop_at = None
    if args.stop_at:
        hours, minutes = (int(x) for x in args.stop_at.split(":"))
        now = time.gmtime()
        stop_at = time.time() + ((hours - now.tm_hour) * 60 + minutes - now.tm_min) * 60 - now.tm_sec
    rng = random.Random(seed)
    soak = Soak.create()
    plan = schedule(args.runs, args.vm_runs, args.kill_fraction, rng)
    tally = Tally()
    me = {os.getpid()}
    started = time.time()
    print(f"soak {soak.tag}: {args.runs} container + {args.vm_runs} VM runs, "
          f"{args.kill_fraction:.0%} killed callers, {args.concurrency} concurrent, seed {seed}", flush=True)
    before = inventory(soak, me)
    step = max(1, len(plan) // 20)
    finished = iter(range(1, len(plan) + 1))

    def progress(_: int) -> None:
        n = next(finished)  # under the GIL: one count per finished run
        if n % step == 0:
            print(f"  {n}/{len(plan)} runs, {time.time() - started:.0f} s, "
                  f"{len(tally.unexpected)} unexpected so far", flush=True)

    try:
        drive(soak, plan, args.concurrency, seed, tally, progress, stop_at)
        ran = time.time() - started
        time.sleep(1.0)  # the last killed callers' children notice their parent is gone
        gc_status, gc_output = gc(soak)
        after, leaks = lasting_leaks(soak, before, me)
    except BaseException:
        cleanup_own(soak)
        raise
    rss = {pid: growth(s) for pid, s in tally.workers.items()}
    report = {
        "tag": soak.tag, "seed": seed, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "host": {"kernel": os.uname().release, "cpus": os.cpu_count()},
        "parameters": {"runs": args.runs, "vm_runs": args.vm_runs, "kill_fraction": args.kill_fraction,
                       "concurrency": args.concurrency},
        "seconds": round(ran, 1), "planned": len(plan), "completed": dict(tally.done), "killed": dict(tally.killed),
        "unexpected": tally.unexpected, "gc": {"status": gc_status, "output": gc_output.splitlines()[-20:]},
        "leaks": leaks, "inventory_before": {k: len(v) for k, v in before.items()},
        "inventory_after": {k: len(v) for k, v in after.items()},
        "median_seconds": {k: round(statistics.median(v), 4) for k, v in sorted(tally.seconds.items())},
        "workers": {str(pid): {"runs": len(s), "rss_kib_first": s[0][0] if s else None,
                               "rss_kib_last": s[-1][0] if s else None, "fds_last": s[-1][1] if s else None,
                               "rss_growth_last_half_mib": round(rss[pid][0], 2),
                               "fd_growth_last_half": rss[pid][1]} for pid, s in tally.workers.items()},
    }
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    cleanup_own(soak)
    return 0 if not tally.unexpected and not leaks else 1


def render(report: dict[str, Any]) -> str:
    lines = [f"soak {report['tag']} ({report['date']}, kernel {report['host']['kernel']}, "
             f"{report['host']['cpus']} CPUs): {report['seconds']} s, seed {report['seed']}"]
    done, killed = report["completed"], report["killed"]
    ran = sum(done.values()) + sum(killed.values())
    if ran < report["planned"]:
        lines.append(f"stopped at --stop-at: {ran} of {report['planned']} planned runs made")
    lines.append(f"completed runs: {sum(done.values())}  " + ", ".join(f"{k} {v}" for k, v in sorted(done.items())))
    lines.append(f"killed callers: {sum(killed.values())}  " + ", ".join(f"{k} {v}" for k, v in sorted(killed.items())))
    lines.append(f"median seconds per run: {report['median_seconds']}")
    lines.append(f"unexpected failures: {len(report['unexpected'])}")
    lines += [f"  {u}" for u in report["unexpected"][:30]]
    lines.append(f"gc (exit {report['gc']['status']}): {len(report['gc']['output'])} lines, last: "
                 f"{report['gc']['output'][-1] if report['gc']['output'] else ''}")
    lines.append("inventory before -> after gc: " + ", ".join(
        f"{k} {report['inventory_before'][k]} -> {report['inventory_after'][k]}" for k in report["inventory_after"]))
    lines.append(f"leaks after one gc: {sum(len(v) for v in report['leaks'].values())}")
    for kind, items in report["leaks"].items():
        lines += [f"  {kind}: {item}" for item in items[:20]]
    worst = max((w["rss_growth_last_half_mib"] for w in report["workers"].values()), default=0.0)
    lines.append(f"steady callers: {len(report['workers'])}; RSS growth over the last half of each one's runs: "
                 f"max {worst:.2f} MiB; " + "; ".join(
                     f"{w['runs']} runs, RSS {w['rss_kib_first']}->{w['rss_kib_last']} KiB, fds {w['fds_last']}"
                     for w in report["workers"].values()))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
