"""Bad input, found by a generator: every failure is typed, and nothing is left behind.

Property-based (hypothesis): random Specs for the API and random argument
lists for the CLI, drawn from a vocabulary that mixes good values, values
the kernel refuses, wrong types and absurd sizes.  For every call:

* the API raises nothing but a :class:`minibox.MiniboxError` subclass
  (never an OverflowError, TypeError or a bare OSError);
* the CLI returns an exit status and, when minibox itself failed (125),
  says so in exactly one line on stderr;
* the host inventory -- cgroups (under a parent of this test's own, so
  other runs on the machine do not count), mounts, this process's
  children, state files, and for bridged Specs links and nft tables -- is
  the same after the call as before it.

The runs are bounded: a fixed number of examples, derandomized, no
per-example deadline (a container start on a loaded machine varies).
"""

from __future__ import annotations

import glob
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import minibox
from minibox import IdMap, Limits, MiniboxError, Mount, Spec
from minibox.cli import main

from ..conftest import child_pids, host_mounts_mentioning, needs_root

hypothesis = pytest.importorskip("hypothesis", reason="the test extra (pip install -e '.[test]') brings hypothesis")
st = pytest.importorskip("hypothesis.strategies")

pytestmark = needs_root

PARENT = f"minibox-fuzz-{os.getpid()}"
EXAMPLES = 60  # per test: about 8-14 s each on a busy 2-core machine


@pytest.fixture(scope="module", autouse=True)
def own_cgroup_parent() -> Iterator[None]:
    """Containers of this module get their cgroups under a parent no one else uses."""
    old = os.environ.get("MINIBOX_CGROUP_PARENT")
    os.environ["MINIBOX_CGROUP_PARENT"] = PARENT
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINIBOX_CGROUP_PARENT"]
        else:
            os.environ["MINIBOX_CGROUP_PARENT"] = old
        # each call was checked to leave nothing; a failed test must not leave its parent either
        from minibox.container import cgroups

        cgroups.prune_parents(PARENT)


def _inventory(bridged: bool) -> dict[str, set[str]]:
    """What a call could leave on the host, restricted to what this test can have made."""
    snap = {
        # the parent itself counts: an empty parent left behind is a leak too
        "cgroups": set(glob.glob(f"/sys/fs/cgroup/**/{PARENT}", recursive=True))
        | set(glob.glob(f"/sys/fs/cgroup/**/{PARENT}/**/", recursive=True)),
        "mounts": set(host_mounts_mentioning("minibox")),
        "children": {str(pid) for pid in child_pids()},
        "state": set(glob.glob(os.path.join(os.environ["MINIBOX_RUNTIME_DIR"], "**", "*.json"), recursive=True)),
    }
    if bridged:  # only a bridged Spec can make these; other runs on the machine make them too
        snap["links"] = {n for n in os.listdir("/sys/class/net") if n.startswith(("mbv", "mbt"))}
        import subprocess

        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
        snap["nft"] = {line for line in out.splitlines() if "minibox" in line and "minibox_" in line}
    return snap


def _assert_unchanged(before: dict[str, set[str]], bridged: bool, what: object) -> None:
    deadline = time.monotonic() + 3  # a reaped child's /proc entry, a link, may take a moment
    while True:
        after = _inventory(bridged)
        new = {kind: sorted(after[kind] - before[kind]) for kind in after}
        new = {kind: items for kind, items in new.items() if items}
        if not new or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not new, f"{what!r} left behind: {new}"


# -- the API: random Specs ------------------------------------------------------------------
#
# Each draw starts from a few good fields and spoils zero to two of them, so
# that a bad value meets an otherwise valid Spec and gets as far as it can
# (a bad limit reaches cgroup creation only if nothing else stops it first).

HUGE = 10**400
bad_sizes = st.one_of(
    st.integers(min_value=2**63 - 2, max_value=2**70), st.integers(max_value=0),
    st.sampled_from(["0", "-5M", "1" + "0" * 400, "9" * 5000, "64X", "", "18446744073709551616", "3.", ".5M", "1M",
                     "9223372036854775808"]),
    st.just(HUGE), st.just(True), st.just(1.5),
)
GOOD_LIMITS = st.fixed_dictionaries({}, optional={
    "memory": st.sampled_from(["64M", 16 << 20, "1.5G", "  8M "]),
    "cpus": st.sampled_from([0.5, 1, 2]),
    "cpu_weight": st.integers(min_value=1, max_value=10000),
    "pids": st.integers(min_value=1, max_value=4 * 1024 * 1024),
    "cpuset": st.sampled_from(["0", "0-1", "1", "0,1"]),
})
BAD_LIMITS = st.one_of(
    st.fixed_dictionaries({"memory": bad_sizes}),
    st.fixed_dictionaries({"memory": st.just("64M"), "memory_swap": bad_sizes}),
    st.fixed_dictionaries({"memory_swap": st.just("64M")}),
    st.fixed_dictionaries({"cpus": st.one_of(st.floats(), st.integers(min_value=3, max_value=HUGE), st.just("1"))}),
    st.fixed_dictionaries({"cpu_weight": st.one_of(st.integers(max_value=0), st.integers(min_value=10001),
                                                   st.just(2.0))}),
    st.fixed_dictionaries({"pids": st.one_of(st.integers(min_value=4 * 1024 * 1024 + 1, max_value=2**70),
                                             st.integers(max_value=0), st.just(HUGE), st.just(True))}),
    st.fixed_dictionaries({"cpuset": st.one_of(st.from_regex(r"\A[0-9,\-]{0,7}\Z"), st.just("9" * 5000),
                                               st.just(0), st.just("1-0"), st.just("2"))}),
)


def fields(scratch: str) -> dict[str, tuple[Any, Any]]:
    """Spec field -> (good values, bad values)."""
    targets = st.sampled_from(["/mnt/x", "/data", "/tmp/sub"])
    bad_targets = st.sampled_from(["rel", "/", "/a/../b", "", "/x\x00y", 5])
    return {
        "argv": (st.sampled_from([["true"], ["/nonexistent"], ["sh", "-c", "exit 3"], ["cat", "/etc/hostname"]]),
                 st.sampled_from([[], "true", [""], ["a\x00b"], [1], None])),
        "rootfs": (st.sampled_from([None, scratch]),
                   st.sampled_from(["/nonexistent", "relative", "/etc/hostname", scratch + "/,:x", 5])),
        "env": (st.sampled_from([{"A": "b"}, {}]), st.sampled_from([{"=": "x"}, {"A": 1}, "x", {"A": "a\x00"}])),
        "cwd": (st.sampled_from(["/", "/tmp"]), st.sampled_from(["rel", "/nonexistent", 5])),
        "hostname": (st.sampled_from(["ok", "a.b-c"]), st.sampled_from(["-bad", "a" * 70, 5])),
        "user": (st.sampled_from([(0, 0), (65534, 65534)]),
                 st.sampled_from([(-1, 0), (2**32, 0), "root", (HUGE, 0), (1, 2, 3)])),
        "limits": (GOOD_LIMITS, BAD_LIMITS),
        "network": (st.sampled_from(["none", "host", "bridge"]), st.sampled_from(["x", 5, None])),
        "mounts": (st.lists(st.one_of(st.builds(Mount.bind, st.just("/etc"), targets, st.booleans()),
                                      st.builds(Mount.tmpfs, targets, st.sampled_from([None, "1M"]))),
                            max_size=2),
                   st.one_of(st.lists(st.one_of(st.builds(Mount.bind, st.sampled_from(["/nonexistent", "rel", 5]),
                                                          targets),
                                                st.builds(Mount.bind, st.just("/etc"), bad_targets),
                                                st.builds(Mount.tmpfs, targets, bad_sizes),
                                                st.builds(Mount, st.sampled_from(["weird", "tmpfs"]), targets,
                                                          st.just("/etc")),
                                                st.just("not a mount")), min_size=1, max_size=2),
                             st.just("x"), st.just(5))),
        "readonly_rootfs": (st.booleans(), st.nothing()),
        "rootfs_overlay": (st.booleans(), st.sampled_from([1, "yes"])),
        "rootfs_overlay_size": (st.sampled_from([None, "8M", 1 << 20]), bad_sizes),
        "timeout": (st.sampled_from([None, 5, 0.5]), st.sampled_from([0, -1, math.nan, math.inf, HUGE, "5", 10**9])),
        "namespaces": (st.sampled_from([None, ["pid", "mnt"], ["user", "mnt", "pid"], ["time", "pid", "mnt"],
                                        ["mnt"]]),
                       st.sampled_from([["bogus"], "mnt", 5, ["pid"]])),
        "uid_map": (st.just(None), st.sampled_from([[IdMap(0, 100000, 1)], [], 5, [IdMap(-1, 0, 1)],
                                                    [IdMap(0, 0, 2**33)]])),
        "cap_add": (st.sampled_from([(), ["NET_ADMIN"], ["ALL"]]), st.sampled_from([["BOGUS"], "x", 5])),
        "cap_drop": (st.sampled_from([(), ["CHOWN"], ["ALL"]]), st.sampled_from([["nope"], 5])),
        "no_new_privileges": (st.booleans(), st.nothing()),
        "seccomp": (st.sampled_from(["default", "unconfined", {"defaultAction": "SCMP_ACT_ALLOW"}]),
                    st.sampled_from(["x", {"defaultAction": "bogus"}, {"syscalls": 5}, 5,
                                     {"defaultAction": "SCMP_ACT_ALLOW",
                                      "syscalls": [{"names": ["nope"], "action": "SCMP_ACT_ERRNO"}]}])),
        "rlimits": (st.sampled_from([{}, {"nofile": 1024}, {"nproc": "unlimited"}]),
                    st.sampled_from([{"bogus": 1}, {"nofile": -1}, {"nofile": (10, 5)}, {"nofile": 2**70}, "x",
                                     {"RLIMIT_NOFILE": 2**40}, {"nofile": 1, "RLIMIT_NOFILE": 2}])),
        "tty": (st.booleans(), st.nothing()),
        "init": (st.booleans(), st.nothing()),
        "kernel": (st.just(None), st.sampled_from(["/nonexistent", "/etc/hostname"])),
        "ports": (st.sampled_from([(), [(18080, 80)]]), st.sampled_from([[(0, 80)], 5, [(True, 80)], [(1, 2, 3)]])),
        "ip": (st.sampled_from([None, "10.88.0.250"]), st.sampled_from(["bad", 5, "300.1.1.1", "8.8.8.8"])),
        "host_access": (st.booleans(), st.sampled_from([1, "no"])),
    }


def spec_kwargs(scratch: str) -> Any:
    table = fields(scratch)
    names = sorted(table)

    @st.composite
    def draw_kwargs(draw: Any) -> dict[str, Any]:
        kwargs = {"argv": draw(table["argv"][0])}
        for name in draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
            kwargs[name] = draw(table[name][0])
        if draw(st.booleans()):  # half the draws spoil their limits, the rest up to two other fields
            kwargs["limits"] = draw(BAD_LIMITS)
        else:
            for name in draw(st.lists(st.sampled_from(names), max_size=2, unique=True)):
                if not table[name][1].is_empty:
                    kwargs[name] = draw(table[name][1])
        return kwargs

    return draw_kwargs()


@pytest.fixture(scope="module")
def fuzz_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from minibox.images.busybox import build_busybox_rootfs

    path = build_busybox_rootfs(tmp_path_factory.mktemp("fuzz") / "rootfs")
    yield str(path)


def test_random_specs_fail_typed_and_leave_nothing(fuzz_rootfs: str) -> None:
    failures: list[str] = []

    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(spec_kwargs(fuzz_rootfs))
    def check(kwargs: dict[str, Any]) -> None:
        bridged = kwargs.get("network") == "bridge"
        before = _inventory(bridged)
        try:
            if "limits" in kwargs:
                kwargs = {**kwargs, "limits": Limits(**kwargs["limits"])}
            minibox.run(Spec(**kwargs))
        except MiniboxError as e:
            failures.append(type(e).__name__)
        # anything else escapes and fails the test, with hypothesis's smallest example
        _assert_unchanged(before, bridged, kwargs)

    check()
    assert len(failures) > EXAMPLES // 3  # the generator does reach the error paths
    assert len(failures) < EXAMPLES  # and some Specs run


# -- the CLI: random argument lists ---------------------------------------------------------

GOOD_FLAGS: dict[str, list[str]] = {
    "--isolation": ["container"], "--hostname": ["box"], "-v": ["/etc:/e:ro"], "--tmpfs": ["/scratch"],
    "-e": ["A=b", "HOME"], "-w": ["/", "/tmp"], "--user": ["65534:65534", "0"], "--timeout": ["5", "0.5"],
    "--memory": ["64M"], "--cpus": ["0.5", "2"], "--cpu-weight": ["1", "10000"], "--pids": ["64", "4194304"],
    "--cpuset": ["0", "0-1"], "--net": ["none", "host", "bridge"], "--cap-add": ["NET_ADMIN", "all"],
    "--cap-drop": ["CHOWN", "ALL"], "--seccomp": ["default", "unconfined"], "--rootfs-overlay-size": ["8M"],
}
BAD_FLAGS: dict[str, list[str]] = {
    "--isolation": ["bogus", "VM", ""], "--hostname": ["-x", "a" * 70], "-v": ["/nonexistent:/x", "rel", ":", "a:b:c:d",
                                                                            "/etc:/e:rx", "/etc:rel"],
    "--tmpfs": ["rel", "/"], "-e": ["=x", "A=a\x00"], "-w": ["rel"], "--user": ["x", "-1", "4294967295", "1:2:3"],
    "--timeout": ["0", "-1", "nan", "inf", "1e400", "x", "99999999999"],
    "--memory": ["1" + "0" * 400, "0", "1M", "x", "9" * 5000, "18446744073709551616"],
    "--memory-swap": ["32M", "x"], "--cpus": ["0", "nan", "inf", "1" + "0" * 400, "x", "-1"],
    "--cpu-weight": ["0", "10001", "1.5", "9" * 5000], "--pids": ["0", "-1", "4194305", "1" + "0" * 30, "x"],
    "--cpuset": ["1-0", "2", "0-", "9" * 50, "a"], "--net": ["x", ""], "-p": ["0:80", "x", "80", "1:2:3"],
    "--ip": ["bad", "300.1.1.1"], "--cap-add": ["BOGUS"], "--cap-drop": ["nope"],
    "--seccomp": ["/nonexistent.json"], "--kernel": ["/nonexistent", "/etc/hostname"], "--rootfs": ["/nonexistent",
                                                                                                     "rel"],
    "--rootfs-overlay-size": ["0", "x", "1" + "0" * 400], "--no-such-flag": [],
}
SWITCHES = ["--read-only", "--userns", "--init", "--rootfs-overlay"]
COMMANDS = [["--", "true"], ["true"], ["--", "/nonexistent"], ["sh", "-c", "exit 7"]]


def cli_args(scratch: str, bad_seccomp: str) -> Any:
    bad = {**BAD_FLAGS, "--seccomp": [*BAD_FLAGS["--seccomp"], bad_seccomp], "--rootfs": [*BAD_FLAGS["--rootfs"]]}

    @st.composite
    def draw_args(draw: Any) -> list[str]:
        args = ["run"]
        if draw(st.booleans()):
            args += ["--rootfs", scratch]
        for flag in draw(st.lists(st.sampled_from(sorted(GOOD_FLAGS)), max_size=3, unique=True)):
            args += [flag, draw(st.sampled_from(GOOD_FLAGS[flag]))]
        args += draw(st.lists(st.sampled_from(SWITCHES), max_size=2, unique=True))
        for flag in draw(st.lists(st.sampled_from(sorted(bad)), max_size=2, unique=True)):
            args += [flag, draw(st.sampled_from(bad[flag]))] if bad[flag] else [flag]
        return [*args, *draw(st.sampled_from([*COMMANDS, []]))]

    return draw_args()


def test_random_cli_arguments_fail_in_one_line_and_leave_nothing(
        fuzz_rootfs: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    bad_seccomp = tmp_path / "bad.json"
    bad_seccomp.write_text('{"defaultAction": 5')
    statuses: list[int] = []

    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(cli_args(fuzz_rootfs, str(bad_seccomp)))
    def check(argv: list[str]) -> None:
        bridged = "bridge" in argv
        before = _inventory(bridged)
        capfd.readouterr()
        try:
            status = main(argv)
        except SystemExit as e:  # argparse exits (125 for bad input; 0 for --help)
            status = int(e.code or 0)
        _, err = capfd.readouterr()
        statuses.append(status)
        if status == 125:
            lines = [line for line in err.splitlines() if line]
            assert len(lines) == 1 and lines[0].startswith("minibox: "), (argv, err)
        assert "Traceback" not in err, (argv, err)
        _assert_unchanged(before, bridged, argv)

    check()
    assert statuses.count(125) > EXAMPLES // 3  # many draws are bad input
    assert any(status != 125 for status in statuses)  # and some run


def test_a_limit_the_kernel_refuses_late_leaves_no_parent_behind() -> None:
    # Defence in depth behind the Spec's checks: a value the kernel refuses only
    # when it is written (here a pids.max the Limits check was bypassed for)
    # removes the container's cgroup *and* the parent that was made for it.
    from minibox import SpecError
    from minibox.container.cgroups import Cgroup

    limits = Limits(pids=64)
    object.__setattr__(limits, "pids", 10**12)  # what a kernel with a smaller PID_MAX_LIMIT would refuse
    before = _inventory(False)
    assert not before["cgroups"]
    with pytest.raises(SpecError) as info:
        Cgroup.create("refused-late", limits)
    assert info.value.field == "limits.pids"
    _assert_unchanged(before, False, "Cgroup.create with pids=10**12")


def test_verbs_on_a_container_in_the_wrong_state_are_state_errors() -> None:
    from minibox import StateError

    box = minibox.Container(Spec(argv=["true"]))
    with pytest.raises(StateError):
        box.exec(["true"])  # not started
    box.start()
    deadline = time.monotonic() + 10
    assert box.pid is not None
    while time.monotonic() < deadline and open(f"/proc/{box.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)  # the command has exited; nobody has waited for it yet
    with pytest.raises(StateError, match="has exited"):
        box.exec(["true"])  # was an untyped FileNotFoundError (/proc/PID/ns/mnt)
    box.close()
    for verb in (lambda: box.exec(["true"]), box.kill, box.pause, box.stats):
        with pytest.raises(StateError):
            verb()
    with pytest.raises(StateError):
        box.start()
