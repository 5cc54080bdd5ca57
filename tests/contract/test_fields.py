"""Every Spec field, on both paths, against the table in docs/api.md.

The table (``| field | container | vm |``) is the specification: each cell
says *honoured* or *refused*.  This suite

* fails when a field of :class:`Spec` or :class:`Limits` has no row (so a
  new field cannot be added without deciding what both paths do with it);
* observes every honoured cell from inside a sandbox of that isolation
  (``/proc/self/status``, ``ulimit``, ``id``, ``hostname``...), or from
  its cgroup for the limits only the host can see;
* checks that every refused cell raises a :class:`SpecError` naming the
  field, when the sandbox is created, before anything exists.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from minibox import IdMap, Limits, Result, Sandbox, Spec, SpecError

from .conftest import ISOLATIONS, make, run

API = Path(__file__).resolve().parents[2] / "docs" / "api.md"
CAP_NET_RAW, CAP_SYS_PTRACE = 13, 19


def contract_table() -> dict[str, dict[str, str]]:
    """docs/api.md's ``| field | container | vm |`` table: field -> {isolation: cell}."""
    text = API.read_text()
    start = text.index("| field | container | vm |")
    rows: dict[str, dict[str, str]] = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        field = cells[0].strip("`")
        rows[field] = {"container": cells[1], "vm": cells[2]}
    return rows


TABLE = contract_table()


def spec_fields() -> set[str]:
    names = {f.name for f in dataclasses.fields(Spec)}
    return names | {f"limits.{f.name}" for f in dataclasses.fields(Limits)}


def honoured(field: str, isolation: str) -> bool:
    return TABLE[field][isolation].startswith("honoured")


def refused_anywhere(field: str, isolation: str) -> bool:
    return "refused" in TABLE[field][isolation]


# -- the table itself ----------------------------------------------------------


def test_every_spec_and_limits_field_has_a_row() -> None:
    assert set(TABLE) == spec_fields(), (
        f"docs/api.md's contract table misses {sorted(spec_fields() - set(TABLE))} "
        f"and has unknown rows {sorted(set(TABLE) - spec_fields())}")


def test_every_cell_says_honoured_or_refused() -> None:
    for field, cells in TABLE.items():
        for isolation in ISOLATIONS:
            assert cells[isolation].startswith(("honoured", "refused")), (field, isolation, cells[isolation])


# -- refused cells: a SpecError naming the field, before anything exists --------

def _named_rootfs() -> str:
    from minibox.images.busybox import default_rootfs

    return str(default_rootfs())


def _kernel_file() -> str:
    return sys.executable  # any file passes Spec's check; the container must refuse the field itself


#: One Spec per refused cell, setting that field (and only what it needs).
REFUSED_SAMPLES: dict[str, Callable[[], Spec]] = {
    "kernel": lambda: Spec(argv=["true"], kernel=_kernel_file()),
    "limits.memory_swap": lambda: Spec(argv=["true"], limits=Limits(memory="128M", memory_swap="256M")),
    "limits.cpu_weight": lambda: Spec(argv=["true"], limits=Limits(cpu_weight=50)),
    "limits.pids": lambda: Spec(argv=["true"], limits=Limits(pids=16)),
    "limits.cpuset": lambda: Spec(argv=["true"], limits=Limits(cpuset="0")),
    "network": lambda: Spec(argv=["true"], network="host"),
    "namespaces": lambda: Spec(argv=["true"], namespaces=["mnt", "pid"]),
    "uid_map": lambda: Spec(argv=["true"], namespaces=["user", "mnt"], uid_map=[IdMap(0, 0, 1)]),
    "gid_map": lambda: Spec(argv=["true"], namespaces=["user", "mnt"], gid_map=[IdMap(0, 0, 1)]),
    "rootfs_overlay": lambda: Spec(argv=["true"], rootfs=_named_rootfs(), rootfs_overlay=True),
    "rootfs_overlay_size": lambda: Spec(argv=["true"], rootfs=_named_rootfs(), rootfs_overlay=True,
                                        rootfs_overlay_size="64M"),
}

REFUSED_CASES = [(field, iso) for field in sorted(TABLE) for iso in ISOLATIONS if refused_anywhere(field, iso)]


@pytest.mark.parametrize(("field", "isolation_"), REFUSED_CASES)
def test_a_refused_field_raises_spec_error_naming_it(field: str, isolation_: str) -> None:
    assert field in REFUSED_SAMPLES, f"no sample Spec for the refused cell {field} ({isolation_})"
    spec = REFUSED_SAMPLES[field]()
    with pytest.raises(SpecError) as info:
        make(isolation_, spec).close()
    assert info.value.field == field
    assert f"not supported with isolation='{isolation_}'" in info.value.message


# -- honoured cells: observed from inside ----------------------------------------


def sh(box: Sandbox, script: str, **kw: object) -> Result:
    result = box.exec(["sh", "-c", script], timeout=120, **kw)  # type: ignore[arg-type]
    assert result.ok, (script, result)
    return result


def status(box: Sandbox, **kw: object) -> dict[str, str]:
    text = sh(box, "cat /proc/self/status", **kw).stdout.decode()
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def cgroup_file(box: Sandbox, v1: tuple[str, str], v2: str) -> str:
    """A limit file of a container's cgroup, as the host sees it (v1: (controller, file))."""
    paths: dict[str, str] = box.cgroup_paths  # type: ignore[attr-defined]
    if v1[0] in paths and os.path.exists(os.path.join(paths[v1[0]], v1[1])):
        return Path(paths[v1[0]], v1[1]).read_text().strip()
    directory = next(iter(dict.fromkeys(paths.values())))
    return Path(directory, v2).read_text().strip()


def observe_env(box: Sandbox, iso: str) -> None:
    assert sh(box, 'echo "$CONTRACT $HOME $HOSTNAME"').stdout == b"yes / contract-box\n"


def observe_cwd(box: Sandbox, iso: str) -> None:
    assert sh(box, "pwd").stdout == b"/tmp\n"


def observe_hostname(box: Sandbox, iso: str) -> None:
    assert sh(box, "hostname").stdout == b"contract-box\n"


def observe_user(box: Sandbox, iso: str) -> None:
    assert sh(box, "id -u; id -g; id -G").stdout == b"1000\n1000\n1000\n"


def observe_caps(box: Sandbox, iso: str) -> None:
    as_user = status(box)
    bounding = int(as_user["CapBnd"], 16)
    assert bounding >> CAP_SYS_PTRACE & 1, "cap_add SYS_PTRACE is missing"
    assert not bounding >> CAP_NET_RAW & 1, "cap_drop NET_RAW is still there"
    assert int(as_user["CapEff"], 16) == 0  # uid 1000 holds none
    as_root = status(box, user=(0, 0))
    assert int(as_root["CapEff"], 16) == int(as_root["CapPrm"], 16) == bounding
    assert int(as_root["CapInh"], 16) == int(as_root["CapAmb"], 16) == 0


def observe_no_new_privileges(box: Sandbox, iso: str) -> None:
    assert status(box)["NoNewPrivs"] == "1"


def observe_seccomp(box: Sandbox, iso: str) -> None:
    assert status(box)["Seccomp"] == "2"  # SECCOMP_MODE_FILTER
    # the default profile refuses what Docker's does: unshare(CLONE_NEWUSER) for one
    result = box.exec(["unshare", "-U", "true"], user=(0, 0), timeout=60)
    assert not result.ok


def observe_rlimits(box: Sandbox, iso: str) -> None:
    assert sh(box, "ulimit -n; ulimit -Hn").stdout == b"321\n321\n"


def observe_mounts(box: Sandbox, iso: str) -> None:
    out = sh(box, "cat /data/in.txt; echo scratch > /scratch/f && cat /scratch/f; stat -c %a /scratch; "
                  "touch /data/nope 2>/dev/null || echo data-ro; grep ' /scratch ' /proc/mounts | cut -d' ' -f3",
             user=(0, 0))
    assert out.stdout == b"from the host\nscratch\n755\ndata-ro\ntmpfs\n"


def observe_readonly_rootfs(box: Sandbox, iso: str) -> None:
    result = box.exec(["sh", "-c", "touch /written-by-contract"], user=(0, 0), timeout=60)
    assert not result.ok and b"Read-only file system" in result.stderr


def observe_network(box: Sandbox, iso: str) -> None:
    assert sh(box, "ls /sys/class/net").stdout.split() == [b"lo"]  # "none": loopback only
    assert box.ip is None


def observe_memory(box: Sandbox, iso: str) -> None:
    # dd's one 200M buffer, filled from /dev/zero, is more than the 128M the Spec allows
    result = box.exec(["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"], timeout=300)
    assert not result.ok, result
    if iso == "vm":
        # the guest has 128M of RAM: the allocation fails (or the guest's OOM killer ends dd)
        assert b"out of memory" in result.stderr or result.signal == signal.SIGKILL, result
    else:
        # the cgroup allows 128M: the OOM killer ends dd
        assert result.signal == signal.SIGKILL, result
        assert cgroup_file(box, ("memory", "memory.limit_in_bytes"), "memory.max") == str(128 << 20)


def observe_memory_swap(box: Sandbox, iso: str) -> None:
    assert cgroup_file(box, ("memory", "memory.memsw.limit_in_bytes"), "memory.swap.max") in (
        str(256 << 20), str(128 << 20))  # v1: memory+swap; v2: swap alone


def observe_cpus(box: Sandbox, iso: str) -> None:
    if iso == "vm":
        assert sh(box, "nproc").stdout == b"1\n"  # ceil(1.0) vCPUs
        assert guest_cgroup_file(box, "cpu.max") == "100000 100000"  # and one CPU's worth of quota
        return
    paths: dict[str, str] = box.cgroup_paths  # type: ignore[attr-defined]
    if "cpu" in paths and os.path.exists(os.path.join(paths["cpu"], "cpu.cfs_quota_us")):
        quota = int(Path(paths["cpu"], "cpu.cfs_quota_us").read_text())
        period = int(Path(paths["cpu"], "cpu.cfs_period_us").read_text())
    else:
        quota_s, period_s = cgroup_file(box, ("cpu", "cpu.max"), "cpu.max").split()
        quota, period = int(quota_s), int(period_s)
    assert quota == period  # one CPU's worth


def observe_cpu_weight(box: Sandbox, iso: str) -> None:
    from minibox.container.cgroups.v1 import weight_to_shares

    value = int(cgroup_file(box, ("cpu", "cpu.shares"), "cpu.weight"))
    assert value in (50, weight_to_shares(50))  # v2 weight, or v1 shares converted as runc does


def guest_cgroup_file(box: Sandbox, name: str) -> str:
    """A file of the cgroup the guest agent put the command in, read inside the guest."""
    return sh(box, f'cat "/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/{name}"').stdout.decode().strip()


def observe_pids(box: Sandbox, iso: str) -> None:
    if iso == "vm":
        assert guest_cgroup_file(box, "pids.max") == "64"
    else:
        assert cgroup_file(box, ("pids", "pids.max"), "pids.max") == "64"


def observe_cpuset(box: Sandbox, iso: str) -> None:
    assert cgroup_file(box, ("cpuset", "cpuset.cpus"), "cpuset.cpus") == "0"
    assert sh(box, "grep Cpus_allowed_list /proc/self/status").stdout.split()[-1] == b"0"


def observe_kernel(box: Sandbox, iso: str) -> None:
    from minibox.vm.kernel import ensure_kernel

    inside = sh(box, "uname -r").stdout.decode().strip()
    assert inside == box.kernel_release == ensure_kernel(box.spec.kernel).release != os.uname().release


#: Honoured cells observed in the shared sandbox (tests/contract/conftest.py: box).
OBSERVED_IN_BOX: dict[str, Callable[[Sandbox, str], None]] = {
    "env": observe_env, "cwd": observe_cwd, "hostname": observe_hostname, "user": observe_user,
    "cap_add": observe_caps, "cap_drop": observe_caps, "no_new_privileges": observe_no_new_privileges,
    "seccomp": observe_seccomp, "rlimits": observe_rlimits, "mounts": observe_mounts,
    "readonly_rootfs": observe_readonly_rootfs, "network": observe_network, "kernel": observe_kernel,
    "limits.memory": observe_memory, "limits.memory_swap": observe_memory_swap, "limits.cpus": observe_cpus,
    "limits.cpu_weight": observe_cpu_weight, "limits.pids": observe_pids, "limits.cpuset": observe_cpuset,
}
#: Honoured cells observed in a run of their own (the tests below).
OBSERVED_ALONE = {"argv", "rootfs", "tty", "init", "timeout", "namespaces", "uid_map", "gid_map",
                  "rootfs_overlay", "rootfs_overlay_size", "output_limit"}
#: Honoured cells of the bridge network, observed where the bridge is built (tests/network/).
OBSERVED_ELSEWHERE = {"ports": "tests/network/test_vm_network.py", "ip": "tests/network/test_vm_network.py",
                      "host_access": "tests/network/test_guard.py"}


def test_every_honoured_cell_has_an_observation() -> None:
    observed = set(OBSERVED_IN_BOX) | OBSERVED_ALONE | set(OBSERVED_ELSEWHERE) | {"limits"}
    need = {field for field in TABLE for iso in ISOLATIONS if honoured(field, iso)}
    assert need <= observed, f"honoured but never observed: {sorted(need - observed)}"


def test_the_composite_limits_row_is_honoured_where_its_fields_are() -> None:
    for iso in ISOLATIONS:
        assert honoured("limits", iso)
        assert any(honoured(f"limits.{f.name}", iso) for f in dataclasses.fields(Limits))


def test_the_network_fields_are_observed_by_the_network_suite() -> None:
    for field, where in OBSERVED_ELSEWHERE.items():
        text = (Path(__file__).resolve().parents[2] / where).read_text()
        assert f"{field}=" in text, f"{where} does not set {field}"
        assert all(honoured(field, iso) for iso in ISOLATIONS)


@pytest.mark.parametrize("field", sorted(OBSERVED_IN_BOX))
def test_an_honoured_field_is_observed_inside(box: Sandbox, isolation: str, field: str) -> None:
    assert honoured(field, isolation)  # refused cells are not collected (conftest.py)
    OBSERVED_IN_BOX[field](box, isolation)


def test_argv_rootfs_tty_and_init(isolation: str, custom_rootfs: str) -> None:
    """The command runs from the given rootfs, on a pty, under an init that reports 128+N."""
    spec = Spec(argv=["sh", "-c", "cat /marker; tty; kill -TERM $$"], rootfs=custom_rootfs,
                tty=True, init=True, timeout=300)
    result = run(isolation, spec)
    assert isinstance(result, Result)
    lines = result.stdout.replace(b"\r", b"").splitlines()
    assert lines[0] == b"custom rootfs"
    assert lines[1].startswith(b"/dev/pts/")
    assert (result.exit_code, result.signal, result.reason) == (128 + signal.SIGTERM, None, "exited")


def test_a_fork_bomb_stops_at_the_pids_limit(isolation: str) -> None:
    """limits.pids, seen by the command: forks fail at the limit (the shell gives up at the first)."""
    spec = Spec(argv=["sh", "-c", "for i in $(seq 80); do sleep 1 & done; wait"], limits=Limits(pids=16),
                timeout=300)
    result = run(isolation, spec)
    assert isinstance(result, Result) and b"can't fork" in result.stderr, result
    result = run(isolation, Spec(argv=["sleep", "600"], timeout=3))
    assert isinstance(result, Result)
    assert result.reason == "timeout" and result.exit_code is None and result.shell_status == 124


def test_output_limit_keeps_that_much_of_each_stream_and_says_so(isolation: str) -> None:
    """The main command's output is cut at the bound, the rest counted; an exec's too; the command runs on."""
    # the main command waits for the exec's file, so it is still running when the exec comes; it
    # then gives the exec's result time to arrive: in a VM, the main command's end ends the guest,
    # and an exec whose output is still being pumped then loses its exit (a StateError; once in CI)
    spec = Spec(argv=["sh", "-c", "head -c 300000 /dev/zero; echo e >&2; "
                                  "until [ -e /tmp/go ]; do sleep 0.1; done; sleep 2"],
                output_limit="100K", timeout=300)
    marker = b"\n[minibox: output truncated, 197600 bytes dropped after the first 102400]\n"
    with make(isolation, spec) as box:
        result = box.exec(["sh", "-c", "head -c 300000 /dev/zero >&2; echo o; touch /tmp/go"], timeout=120)
        assert (result.exit_code, result.stdout, result.stderr) == (0, b"o\n", b"\0" * 102400 + marker)
        result = box.wait(timeout=120)
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"\0" * 102400 + marker, b"e\n")


def test_rootfs_overlay_on_the_container(custom_rootfs: str) -> None:
    """Refused on a VM (above); on a container, writes land in a private layer, not the rootfs."""
    spec = Spec(argv=["sh", "-c", "echo layer > /written && cat /written"], rootfs=custom_rootfs,
                rootfs_overlay=True, rootfs_overlay_size="16M")
    result = run("container", spec)
    assert isinstance(result, Result) and result.stdout == b"layer\n", result
    assert not os.path.exists(os.path.join(custom_rootfs, "written"))


def test_namespaces_and_id_maps_on_the_container() -> None:
    """Refused on a VM (above); on a container, what is asked for is what the command gets."""
    assert honoured("namespaces", "container") and honoured("uid_map", "container")
    spec = Spec(argv=["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; readlink /proc/self/ns/net"],
                namespaces=["user", "mnt", "pid"], uid_map=[IdMap(0, 0, 1)], gid_map=[IdMap(0, 0, 1)])
    result = run("container", spec)
    assert isinstance(result, Result) and result.ok, result
    lines = [line.split() for line in result.stdout.decode().splitlines()]
    assert lines[0] == ["0", "0", "1"] and lines[1] == ["0", "0", "1"]
    assert lines[2] == [os.readlink("/proc/self/ns/net")]  # no "net" asked: the host's
    assert re.match(r"net:\[\d+\]", lines[2][0])
