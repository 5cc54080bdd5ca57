"""minibox-oci against crun and runc, as an engine drives them; podman on each; a detached container's memory.

    sudo .venv/bin/python bench/bench_oci.py [-n 20] [--no-podman]

Three measurements, each side by side in one run:

* **create + start + delete** of a prepared bundle through each runtime's
  command line, as conmon or the containerd shim call it: ``create --bundle
  B ID`` (the init blocks before exec), ``state ID`` (its pid), ``start
  ID``, wait for the init's exit status (this process is the subreaper, as
  the engines are), ``delete ID``.  minibox-oci, crun and runc get the same
  busybox rootfs and the bundle ``runc spec`` writes (args /bin/true,
  terminal false, root read-write), their own --root, and take turns in a
  shuffled order each round, after a 60 ms settle (bench/run.py's reason:
  cgroup v1's cold first write).  Target (issue 12): minibox-oci ≤ 1.5x crun.
* **podman run --rm IMAGE /bin/true** with ``--runtime`` minibox-oci and
  crun, the same podman store (vfs, cgroupfs, no network), alternating.
  Target (issue 12): ≤ 1.1x crun.
* **a detached container's cost**: ``create`` + ``start`` of ``sleep``
  containers, then what each is charged (its memory cgroup's usage) and
  whether any minibox-oci process is left (there must be none: conmon or
  the shim is the only supervisor).  Target (issues 12 and 14): ≤ 400 KiB, no process.

crun 1.8.1 refuses this host's hybrid cgroups (HOST-FACTS.md), so all of it
runs in a private mount namespace in which /sys/fs/cgroup/unified is covered
by an empty tmpfs (as bench/peers.py does); minibox sees the same v1
hierarchies there.  Ratios are paired: the median over rounds of
minibox/peer, with the 25th-75th percentile spread.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from common import TIMES, Row
from peers import _NAMESPACE_SETUP, find_tool

MEMORY_TARGET_KIB = 400
SETTLE = 0.06
IMAGE = "localhost/minibox-bench-busybox:latest"
ID_PREFIX = "mbxbench-oci"


def _bundle(work: Path, name: str, rootfs: Path, runc: str, args: list[str]) -> Path:
    bundle = work / name
    bundle.mkdir()
    subprocess.run([runc, "spec"], cwd=bundle, check=True, capture_output=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(args=args, terminal=False)
    config["root"] = {"path": str(rootfs), "readonly": False}
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


QUIET = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


def _life(runtime: list[str], bundle: Path, cid: str) -> float:
    """Milliseconds from create to delete's return, the init reaped in between."""
    start = time.perf_counter()
    subprocess.run([*runtime, "create", "--bundle", str(bundle), cid], check=True, **QUIET)
    state = json.loads(subprocess.run([*runtime, "state", cid], check=True, capture_output=True).stdout)
    subprocess.run([*runtime, "start", cid], check=True, **QUIET)
    os.waitpid(state["pid"], 0)
    subprocess.run([*runtime, "delete", cid], check=True, **QUIET)
    return (time.perf_counter() - start) * 1000


#: ``--src DIR``: also time minibox-oci from another checkout's src/ (e.g. an older commit), started as pip's
#: console script starts it (with site), for a before/after in the same run.
OTHER_SRC: str | None = None


def _runtimes(work: Path) -> dict[str, list[str]]:
    found = {"minibox-oci": str(Path(sys.executable).parent / "minibox-oci"),
             "crun": find_tool("crun"), "runc": find_tool("runc")}
    runtimes = {name: [binary, "--root", str(work / f"{name}-state")] for name, binary in found.items() if binary}
    if OTHER_SRC:
        code = (f"import sys; sys.path.insert(0, {OTHER_SRC!r}); sys.argv[0] = 'minibox-oci'; "
                "from minibox.oci.cli import entry_point; entry_point()")
        runtimes["minibox-oci (--src)"] = [sys.executable, "-c", code, "--root", str(work / "other-state")]
    return runtimes


def lifecycle(work: Path, rootfs: Path, runs: int) -> dict[str, list[float]]:
    runtimes = _runtimes(work)
    bundle = _bundle(work, "bundle", rootfs, runtimes["runc"][0], ["/bin/true"])
    samples: dict[str, list[float]] = {name: [] for name in runtimes}
    rng = random.Random(1)
    for i in range(runs + 2):  # two warm-up rounds
        order = list(runtimes)
        rng.shuffle(order)
        for name in order:
            time.sleep(SETTLE)
            elapsed = _life(runtimes[name], bundle, f"{ID_PREFIX}-{name.replace(' (--src)', '-src')}-{i}")
            if i >= 2:
                samples[name].append(elapsed)
    return samples


# -- podman --------------------------------------------------------------------------------


def podman_samples(work: Path, rootfs: Path, runs: int) -> dict[str, list[float]]:
    podman, crun = find_tool("podman"), find_tool("crun")
    if podman is None or find_tool("conmon") is None or crun is None:
        return {}
    base = work / "podman"
    base.mkdir()
    wrapper = base / "minibox-oci"
    wrapper.write_text(f'#!/bin/sh\nexec {Path(sys.executable).parent / "minibox-oci"} --root {base / "mbx"} "$@"\n')
    wrapper.chmod(0o755)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    (base / "containers.conf").write_text(f"""\
[containers]
netns = "none"
default_ulimits = ["nofile={hard}:{hard}", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime_supports_json = ["minibox", "crun"]

[engine.runtimes]
minibox = ["{wrapper}"]
crun = ["{crun}"]
""")
    env = {**os.environ, "CONTAINERS_CONF": str(base / "containers.conf")}
    command = [podman, "--root", str(base / "root"), "--runroot", str(base / "run"), "--tmpdir", str(base / "tmp"),
               "--storage-driver", "vfs"]
    parents_before = set(glob.glob("/sys/fs/cgroup/*/libpod_parent"))
    with tarfile.open(base / "busybox.tar", "w") as archive:
        archive.add(rootfs, arcname=".")
    subprocess.run([*command, "import", str(base / "busybox.tar"), IMAGE], check=True, capture_output=True, env=env)
    samples: dict[str, list[float]] = {"minibox": [], "crun": []}
    try:
        for i in range(runs + 2):
            for name in (("minibox", "crun") if i % 2 else ("crun", "minibox")):
                time.sleep(SETTLE)
                start = time.perf_counter()
                done = subprocess.run([*command, "run", "--rm", "--runtime", name, IMAGE, "/bin/true"],
                                      capture_output=True, env=env, cwd=base)
                elapsed = (time.perf_counter() - start) * 1000
                if done.returncode != 0:
                    raise RuntimeError(f"podman run with {name} failed: {done.stderr.decode()[-300:]}")
                if i >= 2:
                    samples[name].append(elapsed)
    finally:
        subprocess.run([*command, "rm", "--all", "--force", "--time", "0"], capture_output=True, env=env, cwd=base)
        # conmon's cgroup (podman's cgroupfs layout) goes too, if this run made it; conmon may
        # still be exiting after `rm` returns (EBUSY), so retry for a moment
        from minibox.container.cgroups.files import rmdir_retrying

        deadline = time.monotonic() + 5
        for parent in set(glob.glob("/sys/fs/cgroup/*/libpod_parent")) - parents_before:
            for directory in sorted(glob.glob(f"{parent}/**/", recursive=True), key=len, reverse=True):
                try:
                    rmdir_retrying(directory, deadline)
                except OSError:
                    pass
    return samples


# -- a detached container's memory -----------------------------------------------------------


def _charged_kib(pid: int) -> float | None:
    """The usage of ``pid``'s memory cgroup (v1 memory.usage_in_bytes or v2 memory.current), in KiB."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                name = f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes"
            elif controllers == "" and os.path.exists(f"/sys/fs/cgroup{path}/memory.current"):
                name = f"/sys/fs/cgroup{path}/memory.current"
            else:
                continue
            with open(name) as usage:
                return int(usage.read()) / 1024
    return None


def _runtime_processes(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (our runtime's --root): a leftover supervisor."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def detached(work: Path, rootfs: Path, count: int) -> dict[str, float]:
    """Start ``count`` detached ``sleep`` containers with each runtime; KiB charged each, leftover processes."""
    runtimes = _runtimes(work)
    bundle = _bundle(work, "sleeper", rootfs, runtimes["runc"][0], ["sleep", "600"])
    out: dict[str, float] = {}
    for name, runtime in runtimes.items():
        if name.endswith("(--src)"):
            continue
        ids = [f"{ID_PREFIX}-sleep-{name}-{i}" for i in range(count)]
        pids = []
        try:
            for cid in ids:
                subprocess.run([*runtime, "create", "--bundle", str(bundle), cid], check=True, **QUIET)
                pids.append(json.loads(subprocess.run([*runtime, "state", cid], check=True,
                                                      capture_output=True).stdout)["pid"])
                subprocess.run([*runtime, "start", cid], check=True, **QUIET)
            time.sleep(0.3)
            charged = [kib for kib in (_charged_kib(pid) for pid in pids) if kib is not None]
            out[f"{name}_kib"] = statistics.median(charged) if charged else float("nan")
            out[f"{name}_processes"] = len(_runtime_processes(runtime[2])) if name == "minibox-oci" else 0
        finally:
            for cid in ids:
                subprocess.run([*runtime, "delete", "--force", cid], **QUIET)
            for pid in pids:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
    return out


# -- running it all in the private namespace ---------------------------------------------------


def serve(runs: int, podman: bool, sleepers: int) -> dict[str, object]:
    """Everything, measured in this process (already in the private mount namespace)."""
    import prctl

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from minibox.images.busybox import build_busybox_rootfs

    work = Path(tempfile.mkdtemp(prefix="minibox-bench-oci-"))
    prctl.set_child_subreaper(True)
    try:
        rootfs = build_busybox_rootfs(work / "rootfs")
        result: dict[str, object] = {"lifecycle": lifecycle(work, rootfs, runs)}
        result["podman"] = podman_samples(work, rootfs, max(3, runs // 2)) if podman else {}
        result["detached"] = detached(work, rootfs, sleepers)
        return result
    finally:
        prctl.set_child_subreaper(False)
        shutil.rmtree(work, ignore_errors=True)


def measure(runs: int, podman: bool = True, sleepers: int = 10, src: str | None = None) -> dict[str, object]:
    """:func:`serve` in a private mount namespace with cgroup2 hidden (crun's condition), as JSON."""
    unshare = find_tool("unshare") or "unshare"
    argv = [unshare, "--mount", "--propagation", "private", "sh", "-c", _NAMESPACE_SETUP, "sh",
            sys.executable, str(Path(__file__).resolve()), "--serve", "-n", str(runs), "--sleepers", str(sleepers),
            *([] if podman else ["--no-podman"]), *(["--src", src] if src else [])]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench_oci failed: {done.stderr.strip()[-500:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _paired(mine: list[float], theirs: list[float]) -> tuple[float, float, float]:
    ratios = sorted(a / b for a, b in zip(mine, theirs, strict=False) if b > 0)
    q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) >= 2 else [ratios[0]] * 3
    return statistics.median(ratios), q[0], q[2]


def verdicts(result: dict[str, object]) -> list[tuple[str, bool | None, str]]:
    """(target, met?, detail) for the three targets."""
    life: dict[str, list[float]] = result["lifecycle"]  # type: ignore[assignment]
    pods: dict[str, list[float]] = result["podman"]  # type: ignore[assignment]
    mem: dict[str, float] = result["detached"]  # type: ignore[assignment]
    out: list[tuple[str, bool | None, str]] = []
    for peer in ("crun", "runc"):
        if peer in life:
            ratio, low, high = _paired(life["minibox-oci"], life[peer])
            factor = 1.5 if peer == "crun" else None
            label = f"minibox-oci create+start+delete vs {peer}" + (f" ≤ {factor}{TIMES}" if factor else "")
            detail = f"paired {ratio:.2f}{TIMES} (p25-p75 {low:.2f}-{high:.2f})"
            out.append((label, ratio <= factor if factor else None, detail))
    if "minibox-oci (--src)" in life:
        ratio, low, high = _paired(life["minibox-oci"], life["minibox-oci (--src)"])
        out.append(("minibox-oci create+start+delete vs the --src checkout's", None,
                    f"paired {ratio:.2f}{TIMES} (p25-p75 {low:.2f}-{high:.2f})"))
    if pods.get("minibox") and pods.get("crun"):
        ratio, low, high = _paired(pods["minibox"], pods["crun"])
        out.append((f"podman run --rm with minibox-oci vs crun ≤ 1.1{TIMES}", ratio <= 1.1,
                    f"paired {ratio:.2f}{TIMES} (p25-p75 {low:.2f}-{high:.2f})"))
    kib, left = mem.get("minibox-oci_kib", float("nan")), mem.get("minibox-oci_processes", 0)
    out.append((f"a detached container ≤ {MEMORY_TARGET_KIB} KiB charged, no minibox process",
                kib <= MEMORY_TARGET_KIB and left == 0,
                f"{kib:.0f} KiB each (crun {mem.get('crun_kib', float('nan')):.0f}, runc "
                f"{mem.get('runc_kib', float('nan')):.0f}), {left:.0f} minibox-oci processes left"))
    return out


def rows(runs: int) -> list[Row]:
    """The rows of bench/run.py's table."""
    result = measure(max(3, min(runs, 20)))
    life: dict[str, list[float]] = result["lifecycle"]  # type: ignore[assignment]
    pods: dict[str, list[float]] = result["podman"]  # type: ignore[assignment]
    memory = next(f"{'PASS' if met else 'FAIL'} {detail}" for target, met, detail in verdicts(result)
                  if target.startswith("a detached"))
    out = []
    for name, samples in life.items():
        note = f"detached: {memory}" if name == "minibox-oci" else ""
        out.append(Row.from_samples(f"oci:{name}", f"{name} create+start+delete", samples, note))
    for name, samples in pods.items():
        out.append(Row.from_samples(f"podman:{name}", f"podman run --rm ({name})", samples))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20, help="rounds (default 20; podman gets half)")
    parser.add_argument("--sleepers", type=int, default=10, help="detached containers per runtime (default 10)")
    parser.add_argument("--no-podman", action="store_true", help="skip the podman rows")
    parser.add_argument("--src", metavar="DIR", help="also minibox-oci from this checkout's src/ (a before/after)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # inside the namespace
    args = parser.parse_args()
    global OTHER_SRC
    OTHER_SRC = args.src
    if args.serve:
        print(json.dumps(serve(args.n, not args.no_podman, args.sleepers)))
        return 0
    result = measure(args.n, not args.no_podman, args.sleepers, args.src)
    load = os.getloadavg()
    print(f"bench_oci: {args.n} rounds, settle {SETTLE * 1000:.0f} ms, load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    for group in ("lifecycle", "podman"):
        for name, samples in result[group].items():  # type: ignore[attr-defined]
            print(f"  {group:9} {name:12} median {statistics.median(samples):7.1f} ms  (n={len(samples)})")
    failed = False
    for target, met, detail in verdicts(result):
        verdict = "INFO" if met is None else ("PASS" if met else "FAIL")
        failed |= met is False
        print(f"  {verdict}  {target}: {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
