"""Supervised from the first instant, liveness by lock (issue 15 §1 and §2).

* A caller SIGKILLed right after *every* step of a start (the
  ``MINIBOX_TEST_DIE_AFTER_STEP`` hook, minibox/owner.py) leaves only what
  one ``minibox gc`` removes at once: no cgroup, process, link, lease, nft
  rule or record of that sandbox remains -- for a container with limits, a
  bridge port and a published port, and for a VM on the bridge.
* ``gc`` never touches a live sandbox, even while other processes start and
  stop sandboxes as it runs.
* A detached container outlives its owner; ``minibox ps`` lists it,
  ``minibox kill`` ends it, ``gc`` then removes it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from minibox import gc, records

from ..conftest import _leftover_snapshot, needs_root

pytestmark = needs_root

BRIDGE = f"mbr{os.getpid() % 100000}"
TABLE = f"minibox_rel{os.getpid() % 100000}"


@pytest.fixture(scope="module")
def network_env() -> Iterator[dict[str, str]]:
    """A bridge, subnet and nft table of this module's own."""
    from ..network.helpers import free_test_subnet

    env = dict(os.environ, MINIBOX_BRIDGE=BRIDGE, MINIBOX_SUBNET=str(free_test_subnet("10.214.0.0/16")),
               MINIBOX_NFT_TABLE=TABLE)
    yield env


def _mine(snapshot: dict[str, set[str]], marks: list[str]) -> dict[str, list[str]]:
    """The items of a host inventory that belong to this test: they name one of ``marks``."""
    found = {kind: sorted(i for i in items if any(m in i for m in marks)) for kind, items in snapshot.items()}
    return {kind: items for kind, items in found.items() if items}


def _processes_mentioning(marker: str, sandbox_id: str) -> list[str]:
    """Live processes whose command line holds ``marker``, or that hold an fd naming ``sandbox_id``
    (QEMU keeps the initramfs memfd "minibox-initramfs-<id>" open)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            fds = [os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")]
        except OSError:
            continue
        if state != "Z" and (marker in cmdline or any(sandbox_id in link for link in fds)):
            found.append(f"{entry} {cmdline.strip()}")
    return found


def _leases(env: dict[str, str]) -> dict[str, dict[str, object]]:
    from minibox.network import network_dir

    path = network_dir() / f"{env['MINIBOX_BRIDGE']}.json"
    return dict(json.loads(path.read_text())["leases"]) if path.exists() else {}


def _die_after_every_step(child: str, env: dict[str, str], args: list[str], max_steps: int) -> list[str]:
    """Run ``child`` with the hook at N = 1, 2, ... until it completes; after each death, gc and check.

    Returns the step count at which it completed, with what each step left.
    """
    completed_at = None
    for n in range(1, max_steps + 1):
        marker = f"mark{os.getpid()}x{n}x{time.monotonic_ns() % 10**6}"
        run = subprocess.run([sys.executable, "-c", child, marker, *args], capture_output=True, timeout=300,
                             env=dict(env, MINIBOX_TEST_DIE_AFTER_STEP=str(n)), check=False)
        lines = run.stdout.decode().split()
        sandbox_id = lines[0] if lines else ""
        if run.returncode == 0:
            assert lines[-1] == "closed", run.stderr.decode(errors="replace")
            completed_at = n
            break
        assert run.returncode == -9, f"step {n}: {run.stderr.decode(errors='replace')}"
        assert sandbox_id, "the child names its sandbox before starting it"
        report = gc.collect()
        assert report.failed == [], report.failed
        marks = [sandbox_id, sandbox_id[:10], marker]
        deadline = time.monotonic() + 10  # a process SIGKILLed by the keeper may take a moment to go
        while True:
            left = _mine(_leftover_snapshot(), marks)
            procs = _processes_mentioning(marker, sandbox_id)
            if (not left and not procs) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (left, procs) == ({}, []), f"after dying at step {n}, gc left {left} {procs}"
        assert not os.path.exists(records.path_of(sandbox_id))
        assert not any(e.get("owner") == sandbox_id for e in _leases(env).values())
    assert completed_at is not None, f"the start still had steps after {max_steps}"
    return [str(completed_at)]


CONTAINER = textwrap.dedent("""
    import sys
    from minibox import Container, Limits, Spec
    box = Container(Spec(argv=["sh", "-c", "sleep 1000; : " + sys.argv[1]],
                         limits=Limits(memory="64M", pids=16), network="bridge", ports=[(int(sys.argv[2]), 80)]))
    print(box.id, flush=True)
    box.start()
    box.close()
    print("closed", flush=True)
""")


def test_a_container_caller_killed_after_any_start_step_leaves_nothing_after_one_gc(
        network_env: dict[str, str]) -> None:
    steps = _die_after_every_step(CONTAINER, network_env, ["18301"], max_steps=12)
    # record, network, cgroup, clone, spawn, attach network, running: seven steps, then it completes
    assert steps == ["8"]


PLAIN = textwrap.dedent("""
    import sys
    from minibox import Container, Spec
    box = Container(Spec(argv=["sh", "-c", "sleep 1000; : " + sys.argv[1]]), cgroup=False)
    print(box.id, flush=True)
    box.start()
    box.close()
    print("closed", flush=True)
""")


def test_a_caller_killed_right_after_the_clone_of_a_container_without_cgroup_leaves_nothing(
        network_env: dict[str, str]) -> None:
    # No cgroup (minibox.run and the CLI without limits): nothing but the keeper can find the
    # child, and the caller hands it over only after the clone returns.  The child hands itself
    # over first (csrc/spawn.c), so a caller killed in between still takes it along.
    steps = _die_after_every_step(PLAIN, network_env, [], max_steps=8)
    # record, clone, spawn, running: four steps, then it completes
    assert steps == ["5"]


VM = textwrap.dedent("""
    import sys
    from minibox import Spec
    from minibox.vm import VirtualMachine
    box = VirtualMachine(Spec(argv=["sh", "-c", "sleep 1000; : " + sys.argv[1]], rootfs=sys.argv[3],
                              network="bridge", ports=[(int(sys.argv[2]), 80)]))
    print(box.id, flush=True)
    box.start()
    box.close()
    print("closed", flush=True)
""")


@pytest.mark.vm
def test_a_vm_caller_killed_after_any_start_step_leaves_nothing_after_one_gc(
        network_env: dict[str, str], scratch_rootfs: str) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("QEMU is not installed")
    steps = _die_after_every_step(VM, network_env, ["18302", scratch_rootfs], max_steps=12)
    # record, network, virtiofsd, tap, qemu: five steps, then it completes
    assert steps == ["6"]


WORKER = textwrap.dedent("""
    import sys
    from minibox import Container, Limits, Spec
    for i in range(int(sys.argv[1])):
        box = Container(Spec(argv=["sh", "-c", "echo $0", "ok"], limits=Limits(pids=16)))
        print(box.id, flush=True)
        with box:
            result = box.wait(30)
        assert result.exit_code == 0 and result.stdout == b"ok\\n", result
    print("done", flush=True)
""")


def test_gc_racing_live_starts_in_other_processes_never_touches_them() -> None:
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, "15"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE) for _ in range(3)]
    removed: list[str] = []
    try:
        while any(w.poll() is None for w in workers):
            removed += gc.collect().removed
        outputs = [w.communicate(timeout=60) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    for w, (out, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err.decode(errors="replace")
        assert out.split()[-1] == b"done"
    ids = {line.decode() for out, _ in outputs for line in out.split()[:-1]}
    assert len(ids) == 45
    assert [r for r in removed if any(i in r for i in ids)] == []  # gc removed none of them


DETACHED = textwrap.dedent("""
    import os
    from minibox import Container, Limits, Spec
    box = Container(Spec(argv=["sleep", "1000"], limits=Limits(pids=8)), detached=True,
                    stdout=os.open(os.devnull, os.O_WRONLY), stderr=os.open(os.devnull, os.O_WRONLY))
    box.start()
    print(box.id, box.pid, flush=True)
    box.close()  # leaves it running
""")


def test_a_detached_container_outlives_its_owner_and_ps_kill_gc_find_it() -> None:
    owner = subprocess.run([sys.executable, "-c", DETACHED], capture_output=True, timeout=60, check=True)
    sandbox_id, pid = owner.stdout.decode().split()
    try:
        assert records.is_running(records.identify(int(pid)))  # its owner has exited; it runs on
        cli = [sys.executable, "-m", "minibox.cli"]
        ps = subprocess.run([*cli, "ps", "--json"], capture_output=True, text=True, timeout=60, check=True)
        row = next(r for r in json.loads(ps.stdout) if r["id"] == sandbox_id)
        assert row["alive"] and row["detached"] and row["processes"][0]["pid"] == int(pid)
        report = gc.collect()
        assert any(what == f"container {sandbox_id}" and "detached" in why for what, why in report.skipped)
        kill = subprocess.run([*cli, "kill", sandbox_id[:8]], capture_output=True, text=True, timeout=60)
        assert kill.returncode == 0, kill.stderr
        deadline = time.monotonic() + 10
        while records.is_running(records.identify(int(pid))) and time.monotonic() < deadline:
            time.sleep(0.05)
        gc_run = subprocess.run([*cli, "gc"], capture_output=True, text=True, timeout=60, check=True)
        assert f"removed container {sandbox_id}" in gc_run.stdout
        assert _mine(_leftover_snapshot(), [sandbox_id]) == {}
    finally:
        records.kill_verified(records.identify(int(pid)))
        gc.collect()


def test_a_forked_child_does_not_keep_its_parents_sandboxes_alive() -> None:
    """The owner's lock is shared across fork(2); the child drops its copy (os.register_at_fork)."""
    code = textwrap.dedent("""
        import os, signal, sys, time
        from minibox import Container, Limits, Spec
        box = Container(Spec(argv=["sleep", "1000"], limits=Limits(pids=8)))
        box.start()
        child = os.fork()
        if child == 0:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 1)
            os.dup2(null, 2)
            time.sleep(1000)
        print(box.id, child, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    owner = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=False)
    sandbox_id, child = owner.stdout.decode().split()
    try:
        assert owner.returncode == -9
        report = gc.collect()  # the forked child lives on; the sandbox's owner does not
        assert f"container {sandbox_id}" in report.removed
    finally:
        os.kill(int(child), 9)


def test_the_cli_leaves_no_owner_lock_file() -> None:
    """The console script ends with os._exit (no atexit hooks): it removes the owner's lock file itself."""
    from minibox.owner import owners_dir

    run = subprocess.run([sys.executable, "-m", "minibox.cli", "run", "--memory", "32M", "--", "true"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    # the command's lock was named "<its pid>-<token>.lock"; none of a process that is gone may remain
    left = [name for name in os.listdir(owners_dir()) if name.endswith(".lock")
            and not os.path.exists(f"/proc/{name.split('-', 1)[0]}")]
    assert left == []
