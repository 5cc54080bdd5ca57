"""minibox-oci against a hostile container, a hostile bundle and a hostile neighbour on the host.

Each test is a probe in the manner of a runc/crun CVE; it fails if the hole
is there.  Probes that try what must be refused run inside a container (the
exe watcher, the mounts) or against files of the test's own temporary
directory; nothing here writes to a host file outside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.oci.conftest import Oci

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
