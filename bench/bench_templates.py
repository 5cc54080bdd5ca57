"""Issue 13's targets, each PASS or FAIL, against a cold boot measured in the same run.

Side by side, paired: every round runs, in turn, so that the machine's load
hits them alike,

* ``minibox.run(spec, isolation="vm", template=False)`` -- a cold boot;
* ``minibox.run(spec, isolation="vm")`` -- restored from the template;
* ``Pool.run(spec)`` -- a clone restored ahead of time, given the run;
* five ``minibox.run(spec, isolation="vm")`` started at once (threads), all
  from one template: the wall time until the last one is done.

Each ratio is the median of the per-round ratios (clone / cold of the same
round ...), with their spread; a figure is judged against the issue's target.

Memory: ``k`` clones restored and waiting (a pool), each QEMU's PSS from
``/proc/PID/smaps_rollup`` (proc(5)): the template's RAM pages are shared,
so a clone is charged only for what it wrote plus its share of the rest;
against one idle cold-booted VM's QEMU (+ its virtiofsd) PSS.

    python bench/bench_templates.py [-n 5] [-k 4]

The machine is shared: the load average before and after is printed with
the figures; TCG work is pure CPU, so a loaded machine stretches every
absolute figure (the ratios are paired, but a FAIL under load says little).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable

from common import Row

import minibox
from minibox import Result, Spec
from minibox.vm import Pool, VirtualMachine

SPEC = Spec(argv=["/bin/true"])
#: The issue's targets: (key, what, limit, unit).
TARGETS = (
    ("clone", "template start, /bin/true (median)", 0.150, "s"),
    ("pss", "PSS per extra clone alive (median)", 40.0, "MiB"),
    ("pool", "warm pool run, /bin/true (median)", 0.005, "s"),
    ("burst", "5 clones at once, all done (median)", 0.6, "s"),
)
BURST = 5


def _timed(fn: Callable[[], Result]) -> float:
    t0 = time.perf_counter()
    result = fn()
    assert result.exit_code == 0, result
    return time.perf_counter() - t0


def _burst(n: int) -> float:
    """Wall time from a common start until ``n`` template runs started at once are all done."""
    barrier = threading.Barrier(n + 1)
    results: list[Result | BaseException] = []

    def one() -> None:
        barrier.wait()
        try:
            results.append(minibox.run(SPEC, isolation="vm"))
        except BaseException as e:  # reported below
            results.append(e)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for r in results:
        if not isinstance(r, Result) or r.exit_code != 0:
            raise RuntimeError(f"a clone of the burst failed: {r!r}")
    return elapsed


def pss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def _cold_vm_pss() -> float:
    """PSS of one idle cold-booted VM: its QEMU and its virtiofsd (and their children)."""
    from minibox import procfs

    with VirtualMachine(Spec(argv=["sleep", "600"])) as vm:
        time.sleep(1)
        assert vm.pid is not None
        total = pss_bytes(vm.pid)
        for helper in procfs.children(os.getpid()):
            if helper.comm == "virtiofsd":
                for p in [helper.pid, *(k.pid for k in procfs.children(helper.pid))]:
                    total += (procfs.pss_kib(p) or 0) * 1024
        vm.kill()
    return float(total)


def measure(runs: int, clones: int, burst: bool = True) -> dict[str, list[float]]:
    """Per-round samples (seconds; PSS in bytes): cold, clone, pool, burst, pss, cold_pss."""
    minibox.run(SPEC, isolation="vm")  # the template exists before the clock starts
    out: dict[str, list[float]] = {"cold": [], "clone": [], "pool": [], "burst": [], "pss": [], "cold_pss": []}
    with Pool(SPEC, size=1) as pool:
        for _ in range(runs):
            out["cold"].append(_timed(lambda: minibox.run(SPEC, isolation="vm", template=False)))
            out["clone"].append(_timed(lambda: minibox.run(SPEC, isolation="vm")))
            pool.wait_ready(60)
            time.sleep(0.5)  # a pooled VM has waited a moment, as in real use
            out["pool"].append(_timed(lambda: pool.run(SPEC)))
            if burst:
                pool.wait_ready(60)
                out["burst"].append(_burst(BURST))
    with Pool(SPEC, size=clones) as pool:
        pool.wait_ready(120)
        time.sleep(1)
        out["pss"] = [float(pss_bytes(vm.pid)) for vm in pool._ready if vm.pid is not None]
    out["cold_pss"] = [_cold_vm_pss()]
    return out


def _ratios(m: dict[str, list[float]], key: str) -> list[float]:
    """Per-round ratios ``key`` / cold (paired by round)."""
    return [x / c for x, c in zip(m[key], m["cold"], strict=False)]


def rows(runs: int) -> list[Row]:
    """The template rows of bench/run.py's table (capped at 5 runs: a cold boot takes a second or more)."""
    m = measure(max(1, min(runs, 5)), 4, burst=False)
    cold, clone, pool = (statistics.median(m[k]) for k in ("cold", "clone", "pool"))
    pss = statistics.median(m["pss"]) / 2**20
    return [
        Row("VM cold boot, /bin/true", cold * 1000, key="vm:cold", samples_ms=[x * 1000 for x in m["cold"]],
            notes="run(isolation='vm', template=False)"),
        Row("VM from a template, /bin/true", clone * 1000, key="vm:template",
            samples_ms=[x * 1000 for x in m["clone"]],
            notes=f"{statistics.median(_ratios(m, 'clone')):.2f}x a cold boot (paired); "
                  f"{pss:.0f} MiB PSS per waiting clone (4 alive)"),
        Row("VM from a warm pool, /bin/true", pool * 1000, key="vm:pool", samples_ms=[x * 1000 for x in m["pool"]],
            notes=f"{statistics.median(_ratios(m, 'pool')):.3f}x a cold boot (paired)"),
    ]


def _fmt(value: float, unit: str) -> str:
    if unit == "MiB":
        return f"{value:.0f} MiB"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def report(m: dict[str, list[float]]) -> list[str]:
    """The targets table: measured, limit, PASS/FAIL, ratio against the cold boot (median, spread)."""
    lines = [f"{'target':40}{'measured':>11}{'limit':>13}  {'':5} vs a cold boot (paired: median, min-max)"]
    cold_pss = m["cold_pss"][0] / 2**20 if m["cold_pss"] else None
    for key, what, limit, unit in TARGETS:
        samples = m.get(key) or []
        if not samples:
            lines.append(f"{what:40}{'not measured':>11}{'<= ' + _fmt(limit, unit):>13}  ----")
            continue
        value = statistics.median(samples) / (2**20 if unit == "MiB" else 1)
        verdict = "PASS" if value <= limit else "FAIL"
        if key == "pss":
            vs = f"{value / cold_pss:.2f}x of an idle cold VM's {cold_pss:.0f} MiB" if cold_pss else ""
            what = what.replace("alive", f"alive ({len(samples)})")
        else:
            r = _ratios(m, key)
            vs = f"{statistics.median(r):.3f}x ({min(r):.3f}-{max(r):.3f})"
            if key == "burst":
                vs += f" for {BURST} VMs against one cold boot"
        lines.append(f"{what:40}{_fmt(value, unit):>11}{'<= ' + _fmt(limit, unit):>13}  {verdict:5} {vs}")
    cold = m["cold"]
    lines.append(f"{'(reference) cold boot, /bin/true':40}{_fmt(statistics.median(cold), 's'):>11}"
                 f"{'':13}  {'':5} min {_fmt(min(cold), 's')}, max {_fmt(max(cold), 's')}")
    return lines


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("-k", type=int, default=4, help="clones alive for the memory figure (default 4)")
    args = parser.parse_args()
    load_before, started = _load(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    m = measure(args.n, args.k)
    print(f"{args.n} rounds, {os.cpu_count()} CPUs, started {started}; "
          f"load average (1, 5, 15 min) {load_before} before, {_load()} after")
    print("\n".join(report(m)))


if __name__ == "__main__":
    main()
