"""minibox-oci against runc, as an engine drives them: create, start, reap, delete.

Each sample is one container's life through the runtime's command line, as
conmon or the containerd shim call it: ``create --bundle B ID`` (the init
blocks before exec), ``start ID``, wait for the init's exit status (this
process is the subreaper, as the engines are), ``delete ID``.  Both
runtimes get the same busybox rootfs and the bundle ``runc spec`` writes
(args /bin/true, terminal false, root read-write), their own --root, and
alternate sample by sample.  crun refuses this host's hybrid cgroups
(HOST-FACTS.md), so runc is the peer here.

    sudo .venv/bin/python bench/bench_oci.py [-n 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Row

from minibox.images.busybox import build_busybox_rootfs


def _bundle(work: Path, rootfs: Path, runc: str) -> Path:
    bundle = work / "bundle"
    bundle.mkdir()
    subprocess.run([runc, "spec"], cwd=bundle, check=True, capture_output=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(args=["/bin/true"], terminal=False)
    config["root"] = {"path": str(rootfs), "readonly": False}
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def _life(binary: str, root: Path, bundle: Path, cid: str) -> float:
    """Seconds from create to delete's return, the init reaped in between."""
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    start = time.perf_counter()
    subprocess.run([binary, "--root", str(root), "create", "--bundle", str(bundle), cid], check=True, **quiet)
    state = json.loads(subprocess.run([binary, "--root", str(root), "state", cid], check=True,
                                      capture_output=True).stdout)
    subprocess.run([binary, "--root", str(root), "start", cid], check=True, **quiet)
    os.waitpid(state["pid"], 0)
    subprocess.run([binary, "--root", str(root), "delete", cid], check=True, **quiet)
    return time.perf_counter() - start


def measure(runs: int) -> tuple[list[float], list[float]]:
    import prctl

    runc = shutil.which("runc") or "/usr/sbin/runc"
    mine = str(Path(sys.executable).parent / "minibox-oci")
    work = Path(tempfile.mkdtemp(prefix="minibox-bench-oci-"))
    prctl.set_child_subreaper(True)
    try:
        rootfs = build_busybox_rootfs(work / "rootfs")
        bundle = _bundle(work, rootfs, runc)
        a, b = [], []
        for i in range(runs + 2):   # two warm-up rounds
            ta = _life(mine, work / "mine", bundle, f"mbxbench-oci-{i}")
            tb = _life(runc, work / "runc", bundle, f"mbxbench-runc-{i}")
            if i >= 2:
                a.append(ta)
                b.append(tb)
        return a, b
    finally:
        prctl.set_child_subreaper(False)
        shutil.rmtree(work, ignore_errors=True)


def rows(runs: int) -> list[Row]:
    """The rows of bench/run.py's table."""
    mine, runc = measure(max(3, min(runs, 20)))
    m, r = statistics.median(mine), statistics.median(runc)
    return [
        Row("minibox-oci create+start+delete", m * 1000, key="oci:minibox", samples_ms=[x * 1000 for x in mine],
            notes=f"{m / r:.2f}x runc; /bin/true, the caller reaps"),
        Row("runc create+start+delete", r * 1000, key="oci:runc", samples_ms=[x * 1000 for x in runc],
            notes="runc spec bundle (crun refuses hybrid cgroups)"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20, help="runs per runtime (default 20)")
    args = parser.parse_args()
    mine, runc = measure(args.n)
    m, r = statistics.median(mine), statistics.median(runc)
    print(f"{args.n} runs each, medians: minibox-oci {m * 1000:.1f} ms, runc {r * 1000:.1f} ms, "
          f"ratio {m / r:.2f}x")


if __name__ == "__main__":
    main()
