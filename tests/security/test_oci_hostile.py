"""minibox-oci against a hostile container, a hostile bundle and a hostile neighbour on the host.

Each test is a probe in the manner of a runc/crun CVE; it fails if the hole
is there.  Probes that try what must be refused run inside a container (the
exe watcher, the mounts) or against files of the test's own temporary
directory; nothing here writes to a host file outside it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.oci.conftest import Oci, cgroup_dirs

pytestmark = [needs_root, pytest.mark.root]
HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def exe_watch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exe-watch") / "exe_watch"
    subprocess.run(["cc", "-static", "-O2", "-Wall", "-o", str(out), str(HERE / "exe_watch.c")], check=True)
    return out


def _bind(source: Path | str, destination: str, *options: str) -> dict[str, object]:
    return {"destination": destination, "type": "bind", "source": str(source), "options": ["bind", *options]}


# ------------------------------------------------------------ exec: what a hostile container sees of it


def test_exec_never_exposes_the_host_binary_through_proc_exe(oci: Oci, exe_watch: Path, tmp_path: Path) -> None:
    """CVE-2019-5736: a process entering the container runs the host's interpreter until it
    execs; root inside must not be able to open its /proc/PID/exe (it would rewrite it)."""
    out = tmp_path / "out"
    out.mkdir()
    config = oci.write_config(["/exe_watch", "20", "/out/hits"])
    config["mounts"] += [_bind(exe_watch, "/exe_watch", "ro"), _bind(out, "/out")]
    caps = ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE", "CAP_FOWNER"]
    config["process"]["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}
    (oci.bundle / "config.json").write_text(json.dumps(config))
    oci.create("w1")
    pid = oci.state("w1")["pid"]
    oci("start", "w1")
    deadline = time.monotonic() + 10
    while not (out / "hits").exists() or "ready" not in (out / "hits").read_text():
        assert time.monotonic() < deadline, "the watcher did not start"
        time.sleep(0.01)
    for _ in range(30):
        oci("exec", "w1", "sleep", "0.01")
    oci("kill", "w1", "KILL")
    oci.reap(pid)
    host = set()
    for binary in {os.path.realpath(sys.executable), "/usr/bin/python3.11"}:
        if os.path.exists(binary):
            st = os.stat(binary)
            host.add((st.st_dev, st.st_ino))
    hits = [line.split(" ", 3) for line in (out / "hits").read_text().splitlines() if line[0].isdigit()]
    assert len(hits) >= 10, f"the watcher saw too few of the 30 execs to tell: {hits}"
    leaked = [h for h in hits if (int(h[1]), int(h[2])) in host]
    assert not leaked, f"root inside opened the host's interpreter through /proc/PID/exe: {leaked}"


# ------------------------------------------------------------ ids, --root, state and pid files on the host


@pytest.mark.parametrize("bad", ["../x", "..", ".", ".hidden", "/", "a/b", "x\n", "x\x00y", "a" * 129, "", "-x"])
def test_container_ids_that_are_not_one_plain_name_are_refused(oci: Oci, bad: str) -> None:
    oci.write_config(["true"])
    before = sorted(os.listdir(oci.root.parent))
    done = oci("create", "--bundle", str(oci.bundle), "--", bad, check=False) if "\x00" not in bad else None
    if done is not None:   # (a NUL cannot even be passed in argv: exec refuses it)
        assert done.returncode != 0 and "invalid container id" in done.stderr, done.stderr
    from minibox.oci.state import OciError, Record

    with pytest.raises(OciError, match="invalid container id"):
        Record(str(oci.root), bad)
    assert sorted(os.listdir(oci.root.parent)) == before, "nothing was made next to --root"
    assert not oci.root.exists() or not os.listdir(oci.root)


def test_pid_file_is_never_written_through_a_planted_symlink(oci: Oci, tmp_path: Path) -> None:
    """runc writes --pid-file atomically through a new temporary file; a symlink planted at the
    temporary name (predictable from the pid) must not make root write to its target."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    pids = tmp_path / "pids"
    pids.mkdir()
    pids.chmod(0o777)   # the directory of the pid file is the engine's, perhaps not only root's
    for name in ("pid.tmp1", ".pid.tmp1", "pid.tmp"):
        (pids / name).symlink_to(victim)
    (pids / "pid").symlink_to(victim)
    oci.write_config(["sleep", "30"])
    # minibox-oci as pid 1 of a pid namespace of its own: the old temporary name was "pid.tmp1"
    done = oci.create("p1", "--pid-file", str(pids / "pid"),
                      prefix=["unshare", "--pid", "--fork", "--mount-proc"], check=False)
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "precious", "create wrote the pid through a symlink"
    assert not (pids / "pid").is_symlink() and (pids / "pid").read_text().isdigit()
    assert sorted(p.name for p in pids.iterdir()) == sorted(["pid", "pid.tmp1", ".pid.tmp1", "pid.tmp"])


def test_a_root_others_can_write_is_refused_before_its_state_is_trusted(oci: Oci, tmp_path: Path) -> None:
    """A state file is trusted by every verb: delete kills what runs in the recorded cgroup and runs the
    recorded poststop hooks.  Planted in a --root that others can write, it must be refused."""
    victim_cgroup = Path(f"/sys/fs/cgroup/pids/minibox-probe-{os.getpid()}")
    if not Path("/sys/fs/cgroup/pids").is_dir():
        pytest.skip("no cgroup v1 pids hierarchy to hold the victim")
    victim_cgroup.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    marker = tmp_path / "hook-ran"
    try:
        (victim_cgroup / "cgroup.procs").write_text(str(sleeper.pid))
        oci.root.mkdir()
        oci.root.chmod(0o777)   # e.g. a --root in a shared directory
        forged = oci.root / "f1"
        forged.mkdir()
        (forged / "lock").touch()
        (forged / "state.json").write_text(json.dumps({
            "id": "f1", "pid": 0, "bundle": str(oci.bundle), "started": True,
            "cgroup": {"version": 1, "paths": {"pids": str(victim_cgroup)}, "made_parents": []},
            "hooks": {"poststop": [{"path": "/bin/sh", "args": ["sh", "-c", f"touch {marker}"]}]}}))
        for verb in (["delete", "--force", "f1"], ["kill", "--all", "f1", "KILL"], ["state", "f1"]):
            done = oci(*verb, check=False)
            assert done.returncode != 0 and "writable by group or others" in done.stderr, (verb, done.stderr)
        assert sleeper.poll() is None, "a forged state made minibox-oci kill a host process"
        assert victim_cgroup.is_dir() and not marker.exists()
        oci.write_config(["true"])
        done = oci.create("c1", check=False)
        assert done.returncode != 0 and "--root" in done.stderr and not (oci.root / "c1").exists()
        oci.root.chmod(0o700)
        (forged / "state.json").unlink()
    finally:
        sleeper.kill()
        sleeper.wait()
        victim_cgroup.rmdir()


def _fds_and_cwd(oci: Oci, container_id: str, pid: str, **kwargs: object) -> tuple[dict[str, str], str]:
    """The open fds (number -> target) and the cwd of ``pid`` (a number or "$$", the shell itself)."""
    out = oci("exec", container_id, "sh", "-c", f"ls -l /proc/{pid}/fd/ /proc/{pid}/cwd", **kwargs).stdout
    fds: dict[str, str] = {}
    cwd = ""
    for line in out.splitlines():
        if " -> " not in line:
            continue
        name, target = line.split(" -> ", 1)
        if name.endswith("/cwd"):
            cwd = target
        else:
            fds[name.split()[-1]] = target
    return fds, cwd


def test_no_host_fd_or_cwd_reaches_the_container(oci: Oci, tmp_path: Path) -> None:
    """CVE-2024-21626 / CVE-2016-9962: a host directory fd leaked by the engine (not close-on-exec) or
    the engine's working directory must not reach the init or an exec'd process."""
    host_dir = tmp_path / "host-secret"
    host_dir.mkdir()
    leaked = os.open(str(host_dir), os.O_RDONLY | os.O_DIRECTORY)   # inheritable: as a careless engine's
    os.set_inheritable(leaked, True)
    try:
        oci.write_config(["sleep", "30"])
        oci.create("f1", cwd=str(host_dir), pass_fds=(leaked,))
        pid = oci.state("f1")["pid"]
        oci("start", "f1", cwd=str(host_dir), pass_fds=(leaked,))
        init_fds, init_cwd = _fds_and_cwd(oci, "f1", "1")
        exec_fds, exec_cwd = _fds_and_cwd(oci, "f1", "$$", cwd=str(host_dir), pass_fds=(leaked,))
    finally:
        os.close(leaked)
    assert init_cwd == "/" and exec_cwd == "/", (init_cwd, exec_cwd)
    for fds in (init_fds, exec_fds):
        assert not [t for t in fds.values() if str(tmp_path) in t or "host-secret" in t], fds
        assert set(fds) <= {"0", "1", "2"}, f"fds beyond stdio reached the container: {fds}"
    oci("kill", "f1", "KILL")
    oci.reap(pid)


# ------------------------------------------------------------ a hostile bundle: its image and its config.json


@pytest.fixture
def hostile_bundle(oci: Oci, tmp_path: Path) -> Path:
    """The bundle's rootfs replaced by a private busybox image the test may plant symlinks in."""
    from minibox.images.busybox import build_busybox_rootfs

    rootfs = build_busybox_rootfs(tmp_path / "hostile-rootfs")
    (oci.bundle / "rootfs").unlink()
    (oci.bundle / "rootfs").symlink_to(rootfs)
    return rootfs


def test_mount_destinations_through_image_symlinks_stay_in_the_rootfs(oci: Oci, hostile_bundle: Path,
                                                                     tmp_path: Path) -> None:
    """CVE-2021-30465 class: symlinks in the image (absolute, or climbing with ..) at a mount's
    destination, a masked or a read-only path must resolve inside the rootfs, never on the host."""
    victim = tmp_path / "host-victim"
    victim.mkdir()
    (victim / "file").write_text("host")
    (hostile_bundle / "abs").symlink_to(victim)
    (hostile_bundle / "climb").symlink_to("../" * 12 + str(victim).lstrip("/"))
    (hostile_bundle / "tmp" / "dotdot").symlink_to("../../../../..")
    (hostile_bundle / str(victim).lstrip("/")).mkdir(parents=True)   # where the links lead inside the image
    source = tmp_path / "bind-source"
    source.write_text("bound")
    config = oci.write_config(["sleep", "30"])
    config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/tmp"]   # the image's own /tmp
    config["mounts"] += [
        {"destination": "/abs/sub", "type": "tmpfs", "source": "tmpfs"},
        _bind(source, "/climb/bound"),
        _bind(source, "/tmp/dotdot" + str(victim) + "/bound2"),
    ]
    config["linux"]["maskedPaths"] += ["/abs/file", "/climb/bound"]
    config["linux"]["readonlyPaths"] += ["/tmp/dotdot" + str(victim)]
    (oci.bundle / "config.json").write_text(json.dumps(config))
    oci.create("m1")
    pid = oci.state("m1")["pid"]
    oci("start", "m1")
    try:
        assert sorted(p.name for p in victim.iterdir()) == ["file"], "a mount step made something on the host"
        assert (victim / "file").read_text() == "host"
        inside = oci("exec", "m1", "sh", "-c", f"cat {victim}/bound2 {victim}/bound; echo; ls {victim}").stdout.split()
        assert inside == ["bound", "bound", "bound2", "sub"], inside   # made inside, where the links lead; bound masked
        with open("/proc/self/mountinfo") as f:
            assert str(victim) not in f.read(), "a mount appeared on the host"
    finally:
        oci("kill", "m1", "KILL")
        oci.reap(pid)


def test_proc_over_an_image_symlink_keeps_its_masks(oci: Oci, hostile_bundle: Path) -> None:
    """CVE-2019-16884/19921 class: /proc in the image is a symlink.  procfs lands where it leads,
    inside the rootfs, and its masked and read-only paths are applied to that very mount
    (resolved from the mount's own fd, so swapping the link meanwhile cannot make them miss)."""
    (hostile_bundle / "proc").rmdir()
    (hostile_bundle / "elsewhere").mkdir()
    (hostile_bundle / "proc").symlink_to("/elsewhere")
    config = oci.write_config(["sleep", "30"])
    config["linux"]["maskedPaths"].append("/proc/keys")
    (oci.bundle / "config.json").write_text(json.dumps(config))
    oci.create("p1")
    pid = oci.state("p1")["pid"]
    oci("start", "p1")
    try:
        # kernel.hostname: namespaced (uts), so the probe is harmless even if /proc/sys were writable
        out = oci("exec", "p1", "sh", "-c", "stat -c %F /elsewhere/keys; grep -c . /elsewhere/self/status; "
                  "echo probe > /elsewhere/sys/kernel/hostname && echo WROTE", check=False)
        lines = out.stdout.splitlines()
        assert lines[0] == "character special file", out   # /dev/null over it
        assert int(lines[1]) > 5, "procfs is mounted where the link leads"
        assert "WROTE" not in out.stdout and "Read-only file system" in out.stderr, out
    finally:
        oci("kill", "p1", "KILL")
        oci.reap(pid)


def _cap_line(status: str, name: str) -> int:
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(name + ":")), 16)


def test_exec_process_file_without_capabilities_gets_the_containers_not_the_hosts(oci: Oci, tmp_path: Path) -> None:
    """runc: an exec --process whose process has no "capabilities" runs with the container's set.
    Falling back to minibox-oci's own (every capability of host root) would hand root inside
    CAP_SYS_MODULE, CAP_SYS_ADMIN..."""
    oci.write_config(["sleep", "30"])
    oci.create("c1")
    pid = oci.state("c1")["pid"]
    oci("start", "c1")
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["cat", "/proc/self/status"], "cwd": "/", "env": ["PATH=/bin"],
                                   "user": {"uid": 0, "gid": 0}}))
    try:
        status = oci("exec", "--process", str(process), "c1").stdout
        init = oci("exec", "c1", "cat", "/proc/1/status").stdout
    finally:
        oci("kill", "c1", "KILL")
        oci.reap(pid)
    for name in ("CapBnd", "CapEff", "CapPrm"):
        assert _cap_line(status, name) == _cap_line(init, name), f"{name}: {status}"


def test_exec_takes_the_config_create_read_not_the_bundles_of_now(oci: Oci, tmp_path: Path) -> None:
    """runc keeps the config in its state at create.  minibox-oci exec read the bundle's config.json
    again: whoever could write it after create (a hostile bundle writer, a container a mount showed
    it to) chose what every exec got -- here every capability, no seccomp, no no_new_privs, uid 0."""
    oci.write_config(["sleep", "30"], process={
        **oci.write_config(["sleep", "30"])["process"], "user": {"uid": 1000, "gid": 1000}})
    oci.create("c2")
    pid = oci.state("c2")["pid"]
    oci("start", "c2")
    try:
        before = oci("exec", "c2", "cat", "/proc/self/status").stdout
        config = json.loads((oci.bundle / "config.json").read_text())
        every = ["CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_DAC_OVERRIDE"]
        config["process"].update(capabilities={k: every for k in ("bounding", "effective", "permitted")},
                                 noNewPrivileges=False, user={"uid": 0, "gid": 0}, env=["PATH=/bin:/usr/bin", "EVIL=1"])
        (oci.bundle / "config.json").write_text(json.dumps(config))
        after = oci("exec", "c2", "cat", "/proc/self/status").stdout
        env = oci("exec", "c2", "env").stdout
        process = tmp_path / "process.json"  # --process without capabilities: the container's, as created
        process.write_text(json.dumps({"args": ["cat", "/proc/self/status"], "cwd": "/", "env": ["PATH=/bin"],
                                       "user": {"uid": 1000, "gid": 1000}}))
        by_file = oci("exec", "--process", str(process), "c2").stdout
    finally:
        oci("kill", "c2", "KILL")
        oci.reap(pid)
    for name in ("CapBnd", "CapEff", "CapPrm", "NoNewPrivs", "Seccomp", "Uid"):
        line = next(x for x in before.splitlines() if x.startswith(name + ":"))
        assert line in after.splitlines(), f"{name}: {after}"
        if name not in ("NoNewPrivs", "Uid"):  # --process says those itself
            assert line in by_file.splitlines(), f"{name}: {by_file}"
    assert "EVIL" not in env


@pytest.mark.parametrize("device", [
    {"path": "/dev/null", "type": "b", "major": 1, "minor": 3},    # the host's is a char device
    {"path": "/dev/null", "type": "c", "major": 8, "minor": 0},    # another number than the host's node
    {"path": "/dev/null", "type": "p"},
    {"path": "/dev/../etc/shadow", "type": "c", "major": 1, "minor": 3},
    {"path": "/etc/passwd", "type": "c", "major": 1, "minor": 3},
])
def test_devices_not_the_hosts_node_of_that_type_and_number_are_refused(oci: Oci, device: dict[str, object]) -> None:
    config = oci.write_config(["true"])
    config["linux"]["devices"] = [device]
    (oci.bundle / "config.json").write_text(json.dumps(config))
    done = oci.create("d1", check=False)
    assert done.returncode != 0 and "linux.devices" in done.stderr, done.stderr
    assert not (oci.root / "d1").exists()


@pytest.mark.parametrize("sysctl", ["kernel.core_pattern", "kernel.modprobe", "vm.overcommit_memory", "fs.file-max",
                                    "kernel.shm_rmid_forced/../core_pattern", "net/../kernel.core_pattern",
                                    "kernel.hostname\n", "net.ipv4.ip_forward\n"])
def test_sysctls_outside_the_containers_namespaces_are_refused(oci: Oci, sysctl: str) -> None:
    """Only keys of a namespace the container creates; kernel.* (but shm/msg/sem, the uts names) is the host's."""
    config = oci.write_config(["true"])
    config["linux"]["sysctl"] = {sysctl: "x"}
    (oci.bundle / "config.json").write_text(json.dumps(config))
    done = oci.create("s1", check=False)
    assert done.returncode != 0 and "linux.sysctl" in done.stderr, done.stderr
    assert not (oci.root / "s1").exists()


# ------------------------------------------------------------ a caller killed half way


def _gates() -> list[int]:
    from minibox import procfs

    # the gate runs from a memfd: its comm is "memfd:minibox-oci-gate", cut to 15 characters
    return [child.pid for child in procfs.children(os.getpid()) if "minibox" in child.comm]


@pytest.mark.parametrize("delay_ms", [0, 2, 4, 6, 8, 10, 12, 15, 18, 22, 26, 30, 35, 40, 50, 60, 80, 120])
def test_a_create_killed_at_any_point_leaves_nothing_after_delete_force(oci: Oci, delay_ms: int) -> None:
    oci.write_config(["sleep", "30"])
    oci.ids.append("k1")
    create = subprocess.Popen([oci_cli(), "--root", str(oci.root), "create", "--bundle", str(oci.bundle), "k1"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay_ms / 1000)
    create.kill()
    create.wait()
    done = oci("delete", "--force", "k1", check=False)
    assert done.returncode == 0, f"killed after {delay_ms} ms: {done.stderr}"
    assert not (oci.root / "k1").exists(), f"killed after {delay_ms} ms: the record is left"
    time.sleep(0.05)
    for pid in _gates():   # the init, re-parented to us: reap it
        os.waitpid(pid, 0)
    assert not cgroup_dirs("k1"), f"killed after {delay_ms} ms: its cgroup is left"
    assert not _gates()


def oci_cli() -> str:
    from tests.oci.conftest import MINIBOX_OCI

    return MINIBOX_OCI


def test_container_exec_never_exposes_the_host_binary_either(exe_watch: Path, tmp_path: Path) -> None:
    """The library's Container.exec enters the same way (19 of 20 execs were caught before the fix);
    and the caller, whose mm a vfork-mode child borrows, is left as dumpable as it was."""
    import prctl

    from minibox import Container, Mount, Spec

    out = tmp_path / "out"
    out.mkdir()
    spec = Spec(argv=["/exe_watch", "20", "/out/hits"],
                mounts=[Mount.bind(str(exe_watch), "/exe_watch", readonly=True), Mount.bind(str(out), "/out")])
    dumpable = prctl.get_dumpable()
    with Container(spec) as box:
        deadline = time.monotonic() + 10
        while not (out / "hits").exists() or "ready" not in (out / "hits").read_text():
            assert time.monotonic() < deadline, "the watcher did not start"
            time.sleep(0.01)
        for _ in range(20):
            box.exec(["sleep", "0.01"])
        box.kill(signal.SIGKILL)
        box.wait(timeout=10)
    assert prctl.get_dumpable() == dumpable
    host = os.stat(os.path.realpath(sys.executable))
    hits = [line.split(" ", 3) for line in (out / "hits").read_text().splitlines() if line[0].isdigit()]
    assert len(hits) >= 10, f"the watcher saw too few of the 20 execs to tell: {hits}"
    leaked = [h for h in hits if (int(h[1]), int(h[2])) == (host.st_dev, host.st_ino)]
    assert not leaked, f"root inside opened the host's interpreter through /proc/PID/exe: {leaked}"


def test_a_cwd_through_a_directory_fd_never_lands_outside_the_root(oci: Oci, tmp_path: Path) -> None:
    """CVE-2024-21626: an image's WORKDIR /proc/self/fd/N, with a directory fd open in the process as it
    chdirs (runc leaked one of /sys/fs/cgroup; here one the engine passes with --preserve-fds),
    made the command start in the host's file system.  Refused, at create and at exec."""
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    (host_dir / "host-only").touch()
    oci.write_config(["sleep", "30"])
    oci.create("c1")
    pid = oci.state("c1")["pid"]
    oci("start", "c1")
    with_fd3 = ["sh", "-c", f'exec "$@" 3<{host_dir}', "sh"]   # fd 3: the host directory, in minibox-oci only
    try:
        done = oci("exec", "--preserve-fds", "1", "--cwd", "/proc/self/fd/3", "c1", "sh", "-c", "ls; ls ../../..",
                   prefix=with_fd3, check=False)
        assert "host-only" not in done.stdout, f"exec started in the host's directory: {done.stdout}"
        assert done.returncode != 0 and "cwd" in done.stderr, done.stderr
        config = oci.write_config(["sh", "-c", "ls"])
        config["process"]["cwd"] = "/proc/self/fd/3"
        (oci.bundle / "config.json").write_text(json.dumps(config))
        done = oci.create("c2", "--preserve-fds", "1", prefix=with_fd3, check=False)
        assert done.returncode != 0 and "cwd" in done.stderr, done.stderr
        assert not (oci.root / "c2").exists()
    finally:
        oci("kill", "c1", "KILL")
        oci.reap(pid)


def test_a_recycled_pid_in_the_record_is_never_signalled(oci: Oci) -> None:
    """The record keeps the init's start time: once the init has gone and its pid names another
    process, kill and delete treat the container as stopped and leave that process alone."""
    oci.write_config(["sleep", "30"])
    oci.create("r1")
    pid = oci.state("r1")["pid"]
    oci("start", "r1")
    oci("kill", "r1", "KILL")
    oci.reap(pid)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        state_file = oci.root / "r1" / "state.json"
        record = json.loads(state_file.read_text())
        record["pid"] = bystander.pid   # as if the pid had been recycled for it
        state_file.write_text(json.dumps(record))
        assert oci.state("r1")["status"] == "stopped"
        done = oci("kill", "r1", "KILL", check=False)
        assert done.returncode != 0 and "not running" in done.stderr
        oci("kill", "--all", "r1", "KILL")
        oci("delete", "r1")
        assert bystander.poll() is None, "minibox-oci signalled a process that is not the container's"
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize("case", ["hostname too long", "uid map overflowing", "uid map the kernel refuses",
                                  "huge environment", "cwd relative"])
def test_hostile_values_fail_whole_and_leave_nothing(oci: Oci, case: str) -> None:
    config = oci.write_config(["true"])
    if case == "hostname too long":
        config["hostname"] = "h" * 65
    elif case == "uid map overflowing":
        config["linux"]["namespaces"].append({"type": "user"})
        config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 4294967295, "size": 4294967295}]
        config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 0, "size": 1}]
    elif case == "uid map the kernel refuses":   # overlapping ranges: found only by the write, with the child waiting
        config["linux"]["namespaces"].append({"type": "user"})
        config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 10},
                                          {"containerID": 5, "hostID": 200000, "size": 10}]
        config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 10}]
    elif case == "huge environment":
        config["process"]["env"] += [f"K{i}={'v' * 1000}" for i in range(4000)]
    else:
        config["process"]["cwd"] = "../../etc"
    (oci.bundle / "config.json").write_text(json.dumps(config))
    done = oci.create("v1", check=False)   # (create hung on the map the kernel refused)
    assert done.returncode != 0 and done.stderr.count("\n") == 1, done.stderr
    field = {"hostname too long": "config.json: hostname", "uid map overflowing": "config.json: linux.uidMappings[0]",
             "cwd relative": "config.json: process.cwd"}.get(case, "")
    assert field in done.stderr, done.stderr
    assert not (oci.root / "v1").exists() and not cgroup_dirs("v1")
    time.sleep(0.05)
    assert not _gates()


def test_a_created_containers_gate_is_out_of_reach_of_its_pid_namespace(oci: Oci) -> None:
    """In a pod sharing one pid namespace, a created container waits in its gate holding its exec
    fifo (a file of the host's --root): a neighbour must not reach it through /proc/PID/fd (and so
    start the container behind the engine's back, or steal start's byte)."""
    oci.write_config(["sleep", "30"])
    oci.create("pod")
    pod_pid = oci.state("pod")["pid"]
    oci("start", "pod")
    config = oci.write_config(["sleep", "30"])
    config["linux"]["namespaces"] = [{"type": "pid", "path": f"/proc/{pod_pid}/ns/pid"},
                                     *[ns for ns in config["linux"]["namespaces"] if ns["type"] != "pid"]]
    (oci.bundle / "config.json").write_text(json.dumps(config))
    oci.create("member")
    member_pid = oci.state("member")["pid"]
    try:
        script = ("for p in /proc/[0-9]*; do grep -q minibox-oci-gate $p/cmdline 2>/dev/null || continue; "
                  "echo gate=$p; ls -l $p/fd/; for f in $p/fd/*; do case $(readlink $f) in *exec.fifo) "
                  "echo 0 > $f && echo WROTE;; esac; done; done; true")
        out = oci("exec", "pod", "sh", "-c", script, check=False)
        assert "gate=" in out.stdout, f"the probe did not find the gate: {out}"
        assert "exec.fifo" not in out.stdout and "WROTE" not in out.stdout, out.stdout
        assert oci.state("member")["status"] == "created"
    finally:
        oci("kill", "pod", "KILL")
        oci("delete", "--force", "member")
        oci.reap(member_pid)   # first: the namespace's init is reaped once all of it is
        oci.reap(pod_pid)


def test_console_socket_gives_the_engine_a_pty_of_the_containers_own_and_nothing_more(oci: Oci,
                                                                                       tmp_path: Path) -> None:
    """--console-socket: the master goes to the engine, the init keeps only the slave (of the container's
    own devpts instance) on 0-2; neither the socket nor a host terminal reaches the container."""
    import array
    import fcntl
    import socket

    path = str(tmp_path / "console.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    config = oci.write_config(["sleep", "30"])
    config["process"]["terminal"] = True
    (oci.bundle / "config.json").write_text(json.dumps(config))
    oci.create("t1", "--console-socket", path)
    pid = oci.state("t1")["pid"]
    conn, _ = listener.accept()
    _, fds, _, _ = socket.recv_fds(conn, 16, 4)
    conn.close()
    listener.close()
    try:
        assert len(fds) == 1
        number = array.array("i", [0])
        fcntl.ioctl(fds[0], 0x80045430, number)   # TIOCGPTN: a pty master; its slave's number
        oci("start", "t1")
        init_fds, _ = _fds_and_cwd(oci, "t1", "1")
        assert init_fds == {str(i): f"/dev/pts/{number[0]}" for i in range(3)}, init_fds
        pts = oci("exec", "t1", "ls", "/dev/pts").stdout.split()
        assert sorted(pts) == sorted(["ptmx", str(number[0])]), f"not a devpts of its own: {pts}"
    finally:
        for fd in fds:
            os.close(fd)
        oci("kill", "t1", "KILL")
        oci.reap(pid)
