"""/bin/true in a VM: cold boot vs a template clone vs a warm pool; what each clone costs.

Side by side in one run, same kernel and agent, paired (cold, clone, pool
run in turn so that the machine's load hits all three alike):

* ``minibox.run(spec, isolation="vm", template=False)`` -- a cold boot;
* ``minibox.run(spec, isolation="vm")`` -- restored from the template;
* ``Pool.run(spec)`` -- a clone restored ahead of time, given the run.

Memory: ``k`` clones restored and waiting (a pool), each QEMU's PSS from
``/proc/PID/smaps_rollup`` (proc(5)): the template's RAM pages are shared,
so a clone is charged only for what it wrote plus its share of the rest.

    python bench/bench_templates.py [-n 10] [-k 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import Row

import minibox
from minibox import Spec
from minibox.vm import Pool

SPEC = Spec(argv=["/bin/true"])


def _timed(fn: object) -> float:
    assert callable(fn)
    t0 = time.perf_counter()
    result = fn()
    assert result.exit_code == 0, result
    return time.perf_counter() - t0


def pss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def measure(runs: int, clones: int) -> dict[str, list[float]]:
    minibox.run(SPEC, isolation="vm")  # the template exists before the clock starts
    out: dict[str, list[float]] = {"cold": [], "clone": [], "pool": [], "pss": []}
    with Pool(SPEC, size=1) as pool:
        for _ in range(runs):
            out["cold"].append(_timed(lambda: minibox.run(SPEC, isolation="vm", template=False)))
            out["clone"].append(_timed(lambda: minibox.run(SPEC, isolation="vm")))
            pool.wait_ready(60)
            time.sleep(0.5)  # a pooled VM has waited a moment, as in real use
            out["pool"].append(_timed(lambda: pool.run(SPEC)))
    with Pool(SPEC, size=clones) as pool:
        pool.wait_ready(120)
        time.sleep(1)
        out["pss"] = [float(pss_bytes(vm.pid)) for vm in pool._ready if vm.pid is not None]
    return out


def rows(runs: int) -> list[Row]:
    """The template rows of bench/run.py's table (capped at 5 runs: a cold boot takes a second or more)."""
    m = measure(max(1, min(runs, 5)), 4)
    cold, clone, pool = (statistics.median(m[k]) for k in ("cold", "clone", "pool"))
    pss = statistics.median(m["pss"]) / 2**20
    return [
        Row("VM cold boot, /bin/true", cold * 1000, key="vm:cold", samples_ms=[x * 1000 for x in m["cold"]],
            notes="run(isolation='vm', template=False)"),
        Row("VM from a template, /bin/true", clone * 1000, key="vm:template",
            samples_ms=[x * 1000 for x in m["clone"]],
            notes=f"{cold / clone:.1f}x faster than a cold boot; {pss:.0f} MiB PSS per waiting clone (4 alive)"),
        Row("VM from a warm pool, /bin/true", pool * 1000, key="vm:pool", samples_ms=[x * 1000 for x in m["pool"]],
            notes=f"{cold / pool:.1f}x faster than a cold boot"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=10, help="runs per side (default 10)")
    parser.add_argument("-k", type=int, default=4, help="clones alive for the memory figure (default 4)")
    args = parser.parse_args()
    m = measure(args.n, args.k)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"{args.n} runs each, TCG, load average {load}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{'':30}{'median':>10}{'min':>10}{'max':>10}")
    for key, name in (("cold", "cold boot"), ("clone", "template clone"), ("pool", "warm pool")):
        xs = m[key]
        print(f"{name:30}{statistics.median(xs):>9.3f}s{min(xs):>9.3f}s{max(xs):>9.3f}s")
    print(f"template / cold: {statistics.median(m['clone']) / statistics.median(m['cold']):.2f}x; "
          f"pool / cold: {statistics.median(m['pool']) / statistics.median(m['cold']):.2f}x")
    print(f"PSS per waiting clone ({len(m['pss'])} alive): median {statistics.median(m['pss']) / 2**20:.0f} MiB, "
          f"max {max(m['pss']) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
