"""VM templates (issue 13): a guest booted once, saved, and restored per run.

What a user would check: a run from a template gives the command's output
and exit status like a cold boot; two clones of one template do not share
random bytes, each has the host's wall clock, its own hostname, env and
stdin; a damaged or foreign template is refused (and rebuilt by ensure()),
never handed to QEMU; a pool never hands one VM to two runs and refills;
a caller SIGKILLed in the middle of a restore leaves nothing after gc.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import minibox
from minibox import Spec, gc, records
from minibox.errors import SpecError
from minibox.vm import templates

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="VMs run as root here (QEMU -runas, the records)")

PROBE = ("head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s; hostname; "
         "echo \"$GREETING\"; cat")


def _probe(hostname: str, greeting: str, stdin: bytes) -> tuple[str, int, str, str, str]:
    result = minibox.run(Spec(argv=["sh", "-c", PROBE], hostname=hostname, env={"GREETING": greeting}),
                         isolation="vm", stdin=stdin)
    assert (result.exit_code, result.stderr) == (0, b""), result
    rand, clock, host, env, *rest = result.stdout.decode().split("\n")
    return rand, int(clock), host, env, "\n".join(rest)


def test_two_clones_have_their_own_entropy_clock_hostname_env_and_stdin(no_leaks: None) -> None:
    before = time.time()
    first = _probe("first", "hello one", b"stdin one\n")
    second = _probe("second", "hello two", b"stdin two\n")
    after = time.time()
    assert len(first[0]) == 64 and len(second[0]) == 64
    assert first[0] != second[0], "two clones of one template read the same random bytes"
    for clock in (first[1], second[1]):
        assert before - 2 <= clock <= after + 2, (before, clock, after)  # the host's clock, not the template's
    assert first[2:] == ("first", "hello one", "stdin one\n")
    assert second[2:] == ("second", "hello two", "stdin two\n")


def test_a_template_run_keeps_the_vm_contract(no_leaks: None) -> None:
    """Exit status, a read-only default rootfs with a private /tmp, the user, a timeout."""
    result = minibox.run(Spec(argv=["sh", "-c", "echo x > /tmp/f && cat /tmp/f; touch /etc/nope; id -u; exit 7"],
                              user=(65534, 65534)), isolation="vm")
    assert result.exit_code == 7
    assert result.stdout == b"x\n65534\n"
    assert b"Read-only file system" in result.stderr
    result = minibox.run(Spec(argv=["sleep", "60"], timeout=1.5), isolation="vm")
    assert result.reason == "timeout"


def test_a_run_ends_at_its_exit_with_all_its_output_and_nothing_its_orphans_write_later(no_leaks: None) -> None:
    """The host ends the VM once the exit and all the output it counts are in, not at the guest's poweroff.

    Interleaved megabytes on both streams arrive whole; the guest's own
    counts (the exit frame's) match what the host received; an orphan the
    command left behind is ended with it, as in a container's pid namespace,
    so what it would have written later never appears.
    """
    from minibox.vm.clone import TemplateClone

    orphan = "(while [ ! -e /tmp/ended ]; do sleep 0.05; done; sleep 0.5; echo late; echo late >&2) &"
    script = f"{orphan} seq 1 300000 & a=$!; seq 1 100000 >&2 & b=$!; wait $a $b; echo done; touch /tmp/ended"
    with TemplateClone(Spec(argv=["sh", "-c", script])) as vm:
        result = vm.wait()
        claimed = vm._ch.state.main_output
    out = "".join(f"{i}\n" for i in range(1, 300_001)).encode() + b"done\n"
    err = "".join(f"{i}\n" for i in range(1, 100_001)).encode()
    assert result.exit_code == 0
    assert (len(result.stdout), len(result.stderr)) == (len(out), len(err))
    assert (result.stdout, result.stderr) == (out, err)
    assert claimed == (len(out), len(err)), "the guest's exit frame did not count the output it sent"


def test_a_clone_that_remounts_its_root_writes_only_its_own_copy(no_leaks: None) -> None:
    from minibox.images.busybox import default_rootfs

    marker = os.path.join(default_rootfs(), "bin", "written-by-a-clone")
    script = "mount -o remount,rw / && touch /bin/written-by-a-clone && ls /bin/written-by-a-clone"
    first = minibox.run(Spec(argv=["sh", "-c", script], cap_add=["SYS_ADMIN"], seccomp="unconfined"),
                        isolation="vm")
    assert first.stdout == b"/bin/written-by-a-clone\n", first  # the guest's root may do this to its copy...
    assert not os.path.exists(marker)  # ...which is neither the host's image
    second = minibox.run(Spec(argv=["ls", "/bin/written-by-a-clone"]), isolation="vm")
    assert second.exit_code != 0  # nor the next clone's


def test_specs_that_cannot_use_a_template_say_why(rootfs: str) -> None:
    from minibox.vm.clone import TemplateClone

    assert templates.ineligible(Spec(argv=["true"])) is None
    assert "rootfs" in str(templates.ineligible(Spec(argv=["true"], rootfs=rootfs)))
    assert "vhost-user-fs" in str(templates.ineligible(
        Spec(argv=["true"], mounts=[minibox.Mount.bind(rootfs, "/data")])))
    assert templates.ineligible(Spec(argv=["true"], network="bridge")) is None  # a template with a NIC
    assert "network" in str(templates.ineligible(Spec(argv=["true"], network="host")))
    with pytest.raises(SpecError, match="cannot start from a VM template: the Spec names its own rootfs"):
        TemplateClone(Spec(argv=["true"], rootfs=rootfs))


# ---- the manifest: checked before QEMU sees anything --------------------------------------------


def _fake_template(path: Path, key: dict[str, object]) -> None:
    """Template files of the right shape (not bootable): what Template.open checks."""
    path.mkdir()
    (path / "initrd").write_bytes(b"i" * 100)
    with open(path / "ram", "wb") as f:
        f.truncate(1 << 20)
    (path / "state").write_bytes(b"s" * 1000)
    templates.write_manifest(path, key, "7.2.0", "6.1.0-test", 1.0)


def test_a_damaged_or_foreign_template_is_refused_with_the_reason(tmp_path: Path) -> None:
    key = {"format": templates.FORMAT, "memory": 256 << 20, "kernel": ["/k", 1, 2]}
    good = tmp_path / "t"
    _fake_template(good, key)
    assert templates.Template.open(good, key).kernel_release == "6.1.0-test"
    with pytest.raises(templates.TemplateError, match=r"another machine \(differs in: kernel, memory\)"):
        templates.Template.open(good, dict(key, memory=128 << 20, kernel=["/k2", 1, 2]))
    os.truncate(good / "state", 500)
    with pytest.raises(templates.TemplateError, match="has 500 bytes, its manifest says 1000"):
        templates.Template.open(good, key)
    (good / "state").write_bytes(b"t" * 1000)  # same size, other bytes
    with pytest.raises(templates.TemplateError, match="does not match its manifest"):
        templates.Template.open(good, key)
    (good / "ram").unlink()
    with pytest.raises(templates.TemplateError, match="missing"):
        templates.Template.open(good, key)
    (good / "manifest.json").write_text("{not json")
    with pytest.raises(templates.TemplateError, match="unreadable"):
        templates.Template.open(good, key)
    with pytest.raises(templates.TemplateError, match="no template"):
        templates.Template.open(tmp_path / "none", key)


def test_ensure_rebuilds_a_truncated_template_and_reuses_a_good_one(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision of ensure(), with the boot replaced by writing files (the boot itself is tested above)."""
    key = {"format": templates.FORMAT, "memory": 1 << 20}
    builds: list[Path] = []

    class FakeParts:
        def key(self) -> dict[str, object]:
            return key

    def build(parts: object, work: Path, k: dict[str, object]) -> None:
        builds.append(work)
        _fake_template(work, k)

    monkeypatch.setattr(templates, "template_root", lambda: tmp_path)
    monkeypatch.setattr(templates, "build", build)
    first = templates.ensure(FakeParts())  # type: ignore[arg-type]
    assert len(builds) == 1 and first.path == tmp_path / templates.digest(key)
    assert templates.ensure(FakeParts()).path == first.path and len(builds) == 1  # type: ignore[arg-type]
    os.truncate(first.state, 10)
    assert templates.ensure(FakeParts()).state.stat().st_size == 1000  # type: ignore[arg-type]
    assert len(builds) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".lock", first.path.name])
    old = tmp_path / "0ld"
    _fake_template(old, {"format": 0})
    os.utime(old, (time.time() - 2 * templates.UNUSED_FOR,) * 2)
    assert templates.prune(tmp_path) == ["0ld"]  # the unused one goes, the one just used stays
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".lock", first.path.name])


# ---- the pool -----------------------------------------------------------------------------------


def test_a_pool_hands_each_vm_to_one_run_and_refills(no_leaks: None) -> None:
    from minibox.vm import Pool

    with Pool(Spec(argv=["true"]), size=2) as pool:
        assert pool.wait_ready(120)
        waiting = {vm.pid for vm in pool._ready}
        outputs = [pool.run(Spec(argv=["sh", "-c", f"echo run{i}; head -c 8 /dev/urandom | od -An -tx1"]))
                   for i in range(3)]
        assert [r.stdout.split(b"\n")[0] for r in outputs] == [b"run0", b"run1", b"run2"]
        assert len({r.stdout for r in outputs}) == 3
        assert len(set(pool.handed_out)) == 3, "a pool handed one VM to two runs"
        assert pool.wait_ready(120)
        assert {vm.pid for vm in pool._ready}.isdisjoint(waiting), "the VMs that ran were replaced"
        # a VM taken and not run yet is replaced too (after REFILL_DELAY, not at the run's end)
        with pool.take() as taken:
            assert pool.wait_ready(120), "a VM taken with take() was never replaced"
            assert taken.wait().exit_code == 0
        with pytest.raises(SpecError, match=r"limits\.memory"):
            pool.take(Spec(argv=["true"], limits=minibox.Limits(memory="128M")))


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_a_pool_run_returns_at_its_exit_with_all_output_and_its_vm_already_killed(no_leaks: None) -> None:
    from minibox.vm import Pool

    with Pool(Spec(argv=["true"]), size=1) as pool:
        vm = pool.take(Spec(argv=["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x; echo oops >&2; exit 3"]))
        pid = vm.pid
        assert pid is not None
        with vm:
            result = vm.wait()
        # the Result is whole although the reap is left to the pool's thread ...
        assert (result.exit_code, result.stdout, result.stderr) == (3, b"x" * 1000000, b"oops\n")
        # ... and nothing of the guest runs on once the caller has it
        assert not _running(pid), "the run's QEMU still runs after wait() returned"
        assert pool.release_errors == []
        # the VMs were made for the pool's Spec; a run's own output_limit still bounds its capture
        result = pool.run(Spec(argv=["head", "-c", "5000", "/dev/zero"], output_limit=1000))
        marker = b"\n[minibox: output truncated, 4000 bytes dropped after the first 1000]\n"
        assert result.stdout == b"\0" * 1000 + marker
    # no_leaks: once the pool is closed, the QEMU is reaped and its record, sockets and fds are gone


# ---- a caller killed during a restore -----------------------------------------------------------


CHILD = textwrap.dedent("""
    from minibox import Spec
    from minibox.vm.clone import TemplateClone
    vm = TemplateClone(Spec(argv=["sleep", "1000"]))
    print(vm.id, flush=True)
    vm.start()
    vm.close()
    print("closed", flush=True)
""")


def _orphaned_clones(template_dir: str, since: float) -> list[int]:
    """QEMUs restored from ``template_dir`` whose parent is gone (re-parented), started after ``since``."""
    found = []
    boot = time.time() - float(Path("/proc/uptime").read_text().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, ppid, start = stat[0], int(stat[1]), boot + int(stat[19]) / ticks
        if template_dir in cmdline and state != "Z" and ppid == 1 and start >= since - 1:
            found.append(int(entry))
    return found


def test_a_caller_killed_at_any_step_of_a_restore_leaves_nothing_after_gc(no_leaks: None) -> None:
    minibox.run(Spec(argv=["true"]), isolation="vm")  # the template exists: the steps are the restore's
    template_dir = str(templates.template_root())
    since = time.time()
    for n in range(1, 6):
        run = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, timeout=120, check=False,
                             env=dict(os.environ, MINIBOX_TEST_DIE_AFTER_STEP=str(n)))
        lines = run.stdout.decode().split()
        if run.returncode == 0:
            assert lines[-1] == "closed"
            break
        assert run.returncode == -9, run.stderr.decode(errors="replace")
        record = records.load(records.path_of(lines[0]))
        assert record is not None, f"step {n}: the record names the clone before anything exists"
        report = gc.collect()
        assert report.failed == [], report.failed
        assert not os.path.exists(records.path_of(lines[0]))
        deadline = time.monotonic() + 10
        while True:
            alive = [p for p in record["processes"] if records.is_running(records.as_process(p) or
                                                                         {"pid": 0, "starttime": None})]
            orphans = _orphaned_clones(template_dir, since)
            if (not alive and not orphans) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (alive, orphans) == ([], []), f"after dying at step {n}: {alive} {orphans}"
    else:
        pytest.fail("the restore still had steps after 5")
    assert n == 3, "record, QEMU, then done: a restore has two steps"


# ---- a pooled clone's warm-up ---------------------------------------------------------------------

#: Every process's "pid (comm) state ppid", then what the run's writable /tmp holds.
PROCESSES = "echo $$; cat /proc/[0-9]*/stat | cut -d' ' -f1-4; echo files:; ls -A /tmp"


def test_a_warmed_up_clone_runs_with_no_trace_of_its_warm_up(no_leaks: None) -> None:
    from minibox.vm.clone import TemplateClone

    vm = TemplateClone(Spec(argv=["sh", "-c", PROCESSES]))
    try:
        vm.restore_template()
        assert vm.warm_up(), "the agent did not run its throwaway /bin/true"
        with vm:  # the run, in the warmed clone
            result = vm.wait()
    finally:
        vm.close()
    assert (result.exit_code, result.stderr) == (0, b""), result
    shell, *processes = result.stdout.decode().split("files:\n")[0].splitlines()
    stats = [line.split() for line in processes]
    assert not [s for s in stats if s[1] == "(true)" or s[2] == "Z"], "the warm-up's process is still there"
    assert [s[0] for s in stats if s[3] == "1"] == [shell], "PID 1 has children other than the run"
    assert result.stdout.endswith(b"files:\n"), "the warm-up left a file in the run's /tmp"


def test_a_warm_up_with_one_policy_leaves_the_run_its_own(no_leaks: None) -> None:
    """A clone warmed up as a user with no capabilities, rlimits, seccomp and no_new_privs runs an unconfined Spec."""
    from minibox.vm.clone import TemplateClone

    probe = "id -u; ulimit -n; grep -E '^(CapBnd|NoNewPrivs|Seccomp):' /proc/self/status"
    restricted = Spec(argv=["true"], user=(65534, 65534), cap_drop=["ALL"], rlimits={"nofile": 64},
                      no_new_privileges=True, seccomp="default")
    run = Spec(argv=["sh", "-c", probe], no_new_privileges=False, seccomp="unconfined")
    baseline = minibox.run(run, isolation="vm")
    vm = TemplateClone(restricted)
    try:
        vm.restore_template()
        assert vm.warm_up(), "the throwaway /bin/true did not run with the restricted policy"
        vm.assign(run)
        with vm:
            result = vm.wait()
    finally:
        vm.close()
    assert (result.exit_code, result.stderr) == (0, b""), result
    assert result.stdout == baseline.stdout, "the warm-up's policy reached the run"
    assert result.stdout.startswith(b"0\n") and b"Seccomp:\t0" in result.stdout, result.stdout

