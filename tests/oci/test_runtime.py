"""minibox-oci driven directly, as an engine would: the verbs, config.json fields, bad input."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.conftest import needs_root

from .conftest import MINIBOX_OCI, Oci, cgroup_dirs

pytestmark = [needs_root, pytest.mark.root]


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def test_create_leaves_init_blocked_before_exec_then_start_runs_it(oci: Oci, tmp_path: os.PathLike[str]) -> None:
    marker = "/tmp/started"
    oci.write_config(["sh", "-c", f"echo ran > {marker}; exec sleep 30"])
    pid_file = os.path.join(str(tmp_path), "pid")
    oci.create("c1", "--pid-file", pid_file)
    pid = int(open(pid_file).read())
    state = oci.state("c1")
    assert state["status"] == "created" and state["pid"] == pid and state["id"] == "c1"
    assert state["bundle"] == str(oci.bundle)
    # the init is alive, waits in the gate, and is our child now (we are the subreaper)
    assert "minibox-oci-gate" in _cmdline(pid)
    assert open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1] == str(os.getpid())
    # no minibox-oci process of its own is left once create returned
    assert not [p for p in os.listdir("/proc") if p.isdigit() and p != str(pid)
                and "minibox-oci" in _safe_cmdline(int(p)) and str(oci.root) in _safe_cmdline(int(p))]
    assert cgroup_dirs("c1"), "the container has its cgroup"

    oci("start", "c1")
    assert oci.state("c1")["status"] == "running"
    assert _cmdline(pid).startswith("sleep 30")
    assert oci("ps", "--format", "json", "c1").stdout.strip() == json.dumps([pid])

    oci("kill", "c1", "KILL")
    assert oci.reap(pid) == 128 + signal.SIGKILL
    assert oci.state("c1")["status"] == "stopped"
    oci("delete", "c1")
    assert not (oci.root / "c1").exists()
    assert not cgroup_dirs("c1")
    missing = oci("state", "c1", check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def _safe_cmdline(pid: int) -> str:
    try:
        return _cmdline(pid)
    except OSError:
        return ""


def test_run_passes_exit_code_stdio_and_config_fields(oci: Oci) -> None:
    oci.write_config(["sh", "-c", "echo $(hostname) $(id -u):$(id -g) $(id -G) $(pwd) $FOO; umask; "
                      "grep CapEff /proc/self/status; cat /proc/kcore | wc -c; exit 3"],
                     process__env=["PATH=/bin", "FOO=bar"], process__cwd="/tmp",
                     process__user={"uid": 1000, "gid": 1000, "additionalGids": [27, 44], "umask": 0o27})
    oci.ids.append("r1")
    done = oci("run", "--bundle", str(oci.bundle), "r1", check=False)
    assert done.returncode == 3, done.stderr
    lines = done.stdout.split("\n")
    assert lines[0] == "ocitest 1000:1000 1000 27 44 /tmp bar"
    assert lines[1] == "0027"
    assert lines[2].split() == ["CapEff:", "0000000000000000"]  # caps of a non-root user are cleared on exec
    assert lines[3].strip() == "0"  # maskedPaths: /proc/kcore reads as /dev/null
    assert not (oci.root / "r1").exists(), "run deletes the container it ran"
    assert not cgroup_dirs("r1")


def test_preserve_fds_and_stdin_pass_through(oci: Oci) -> None:
    oci.write_config(["sh", "-c", "read line; echo got:$line >&3; echo done"])
    r, w = os.pipe()
    os.set_inheritable(w, True)
    oci.ids.append("p1")
    # fd 3 of minibox-oci is our pipe's write end (the shell puts it there)
    done = oci("run", "--preserve-fds", "1", "--bundle", str(oci.bundle), "p1", input="hello\n",
               pass_fds=(w,), check=False, prefix=["bash", "-c", f'exec "$@" 3>&{w} {w}>&-', "bash"])
    os.close(w)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    assert os.read(r, 100) == b"got:hello\n"
    os.close(r)


def test_preserve_fds_refuses_fds_not_inherited(oci: Oci) -> None:
    oci.write_config(["true"])
    done = oci.create("p2", "--preserve-fds", "2", check=False)
    assert done.returncode != 0 and "was not open" in done.stderr
    assert not (oci.root / "p2").exists()


def test_exec_pause_resume_kill_all_and_forced_delete(oci: Oci, tmp_path: os.PathLike[str]) -> None:
    oci.write_config(["sh", "-c", "trap 'echo term; exit 0' TERM; while true; do sleep 0.1; done"])
    oci.create("e1")
    pid = oci.state("e1")["pid"]
    oci("start", "e1")
    done = oci("exec", "e1", "sh", "-c", "echo in $(hostname); ls /proc | grep -c '^[0-9]'; exit 4", check=False)
    assert done.returncode == 4 and done.stdout.startswith("in ocitest\n"), done.stderr
    oci("pause", "e1")
    assert oci.state("e1")["status"] == "paused"
    oci("resume", "e1")
    assert oci.state("e1")["status"] == "running"
    assert oci("delete", "e1", check=False).returncode != 0, "a running container is deleted only with --force"
    oci("kill", "e1", "TERM")
    assert oci.reap(pid) == 0, "the TERM trap ran"
    oci("delete", "e1")

    oci.create("e2")
    pid = oci.state("e2")["pid"]
    oci("start", "e2")
    exec_pid_file = os.path.join(str(tmp_path), "exec.pid")
    oci("exec", "--detach", "--pid-file", exec_pid_file, "e2", "sleep", "30")
    exec_pid = int(open(exec_pid_file).read())
    assert exec_pid in json.loads(oci("ps", "--format", "json", "e2").stdout)
    oci("kill", "--all", "e2", "9")
    # the detached process is ours to reap too (as conmon's): the namespace's
    # init finishes exiting only once every process of it is reaped
    assert oci.reap(exec_pid) == 128 + signal.SIGKILL
    oci.reap(pid)
    oci("delete", "--force", "e2")
    assert not cgroup_dirs("e2") and not (oci.root / "e2").exists()


def test_exec_of_missing_command_says_not_found(oci: Oci) -> None:
    oci.write_config(["sleep", "30"])
    oci.create("x1")
    oci("start", "x1")
    done = oci("exec", "x1", "no-such-command", check=False)
    assert done.returncode != 0 and "executable file not found" in done.stderr


def test_global_flag_forms_and_json_log(oci: Oci, tmp_path: os.PathLike[str]) -> None:
    log = os.path.join(str(tmp_path), "log.json")
    oci.write_config(["true"])
    for form in (["--root", str(oci.root)], [f"--root={oci.root}"]):
        done = oci("--log", log, "--log-format=json", *form, "state", "nope", check=False)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and "does not exist" in done.stderr
    entries = [json.loads(line) for line in open(log)]
    assert len(entries) == 2 and entries[0]["level"] == "error" and "does not exist" in entries[0]["msg"]
    assert "time" in entries[0]
    refused = oci("--systemd-cgroup", "state", "nope", check=False)
    assert refused.returncode == 1 and "systemd" in refused.stderr
    assert "minibox-oci version" in oci("--version").stdout
    features = json.loads(oci("features").stdout)
    assert "pid" in features["linux"]["namespaces"]


BAD = {
    "wrong type": {"process__args": "sh"},
    "unknown namespace": {"linux__namespaces": [{"type": "mount"}, {"type": "bogus"}]},
    "root outside bundle": {"root": {"path": "../../etc"}},
    "unknown mount type": {"mounts": [{"destination": "/x", "type": "nosuchfs", "source": "x"}]},
    "missing command": {"process__args": ["/no/such/program"]},
    "systemd cgroups path": {"linux__cgroupsPath": "machine.slice:minibox:c1"},
    "unknown isolation": {"annotations": {"minibox.isolation": "gvisor"}},
    "unknown rlimit": {"process__rlimits": [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]},
    "host sysctl": {"linux__sysctl": {"vm.swappiness": "10"}},
    "namespace path not a namespace": {"linux__namespaces": [{"type": "mount"},
                                                             {"type": "pid", "path": "/etc/hostname"}]},
    "namespace path of another type": {"linux__namespaces": [{"type": "mount"},
                                                             {"type": "pid", "path": "/proc/self/ns/net"}]},
    "namespace path missing": {"linux__namespaces": [{"type": "mount"}, {"type": "user", "path": "/no/such/ns"}]},
    "host mount namespace": {"linux__namespaces": [{"type": "mount", "path": "/proc/self/ns/mnt"}]},
    "cgroups path leaving its parent": {"linux__cgroupsPath": "/libpod_parent/../../x"},
    "bind source missing": {"mounts": [{"destination": "/x", "type": "bind", "source": "/no/such/dir",
                                        "options": ["rbind"]}]},
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_leaves_nothing(oci: Oci, case: str, tmp_path: os.PathLike[str]) -> None:
    oci.write_config(["true"], **BAD[case])
    log = os.path.join(str(tmp_path), "log.json")
    before = set(os.listdir("/proc"))
    done = oci("--log-format", "json", "--log", log, "create", "--bundle", str(oci.bundle), "bad", check=False)
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert json.loads(open(log).read().splitlines()[-1])["level"] == "error"
    assert not (oci.root / "bad").exists()
    assert not cgroup_dirs("bad")
    time.sleep(0.05)
    new = set(os.listdir("/proc")) - before
    assert not [p for p in new if p.isdigit() and "minibox-oci-gate" in _safe_cmdline(int(p))]


def test_missing_rootfs_and_duplicate_id(oci: Oci) -> None:
    oci.write_config(["sleep", "30"])
    oci.create("d1")
    again = oci.create("d1", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    assert oci.state("d1")["status"] == "created", "the first container is untouched"
    (oci.bundle / "rootfs").unlink()
    gone = oci.create("d2", check=False)
    assert gone.returncode != 0 and "root.path" in gone.stderr
    assert not (oci.root / "d2").exists()
    pid = oci.state("d1")["pid"]
    oci("delete", "d1")  # a created container may be deleted without --force (it is killed)
    oci.reap(pid)
    assert not cgroup_dirs("d1")


def test_hooks_get_the_state_on_stdin(oci: Oci, tmp_path: os.PathLike[str]) -> None:
    out = os.path.join(str(tmp_path), "hooks")
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"cat >> {out}; echo >> {out}"]}
    oci.write_config(["sleep", "30"], hooks={"prestart": [hook], "createRuntime": [hook], "poststart": [hook],
                                             "poststop": [hook]})
    oci.create("h1")
    pid = oci.state("h1")["pid"]
    oci("start", "h1")
    oci("kill", "h1", "KILL")
    oci.reap(pid)
    oci("delete", "h1")
    states = [json.loads(line) for line in open(out).read().splitlines() if line]
    assert [s["status"] for s in states] == ["created", "created", "running", "stopped"]
    assert all(s["id"] == "h1" and s["bundle"] == str(oci.bundle) for s in states)
    assert states[0]["pid"] > 0


def test_failing_create_hook_undoes_everything(oci: Oci) -> None:
    oci.write_config(["sleep", "30"], hooks={"createRuntime": [{"path": "/bin/false"}]})
    done = oci.create("h2", check=False)
    assert done.returncode != 0 and "hooks.createRuntime[0]" in done.stderr
    assert not (oci.root / "h2").exists() and not cgroup_dirs("h2")


def test_forced_delete_cleans_up_after_a_killed_create(oci: Oci) -> None:
    import subprocess

    from minibox import procfs

    # the createRuntime hook holds create after the clone; the engine's timeout then kills it
    oci.write_config(["sleep", "30"], hooks={"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"]}]})
    oci.ids.append("k1")
    create = subprocess.Popen([MINIBOX_OCI, "--root", str(oci.root), "create", "--bundle", str(oci.bundle), "k1"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = oci.root / "k1" / "state.json"
    deadline = time.monotonic() + 30
    while not (state_file.exists() and json.loads(state_file.read_text()).get("hooks") is not None):
        assert time.monotonic() < deadline and create.poll() is None
        time.sleep(0.05)
    pid = json.loads(state_file.read_text())["pid"]
    create.kill()
    create.wait()
    oci("delete", "--force", "k1")
    assert not (oci.root / "k1").exists() and not cgroup_dirs("k1")
    assert oci.reap(pid) == 128 + signal.SIGKILL
    for orphan in procfs.children(os.getpid()):   # the hook's sleep, ours now (subreaper)
        if orphan.comm == "sleep":
            os.kill(orphan.pid, signal.SIGKILL)
            os.waitpid(orphan.pid, 0)


def test_cgroups_path_is_honoured_below_minibox_parent_and_removed(oci: Oci) -> None:
    from minibox.container.cgroups import parent_dirs

    # relative: below minibox's own parent, as runc reads it below its own cgroup
    oci.write_config(["sleep", "30"], linux__cgroupsPath="oci-test-pod/c1")
    parents = parent_dirs()
    assert not any(os.path.exists(f"{d}/oci-test-pod") for d in parents.values())
    oci.create("cg1")
    pid = oci.state("cg1")["pid"]
    with open(f"/proc/{pid}/cgroup") as f:
        where = dict(line.split(":", 2)[1:] for line in f.read().splitlines())
    assert where["pids"].endswith("/minibox/oci-test-pod/c1"), where
    assert os.path.isdir(f"{parents['pids']}/oci-test-pod/c1")
    # a cgroup that exists is never taken over: another container's limits would change
    again = oci.create("cg2", check=False)
    assert again.returncode == 1 and "linux.cgroupsPath" in again.stderr and "exists" in again.stderr
    assert oci.state("cg1")["status"] == "created" and not (oci.root / "cg2").exists()
    oci("delete", "cg1")
    oci.reap(pid)
    assert not any(os.path.exists(f"{d}/oci-test-pod") for d in parents.values()), "its parents go too"


def test_kill_of_a_stopped_container_as_containerd_expects(oci: Oci) -> None:
    oci.write_config(["true"])
    oci.create("st1")
    pid = oci.state("st1")["pid"]
    oci("start", "st1")
    assert oci.reap(pid) == 0
    # containerd's shim reads "container not running" as "already finished" (checkKillError)
    plain = oci("kill", "st1", "KILL", check=False)
    assert plain.returncode == 1 and "container not running" in plain.stderr
    # --all signals what is left in the cgroup, and nothing is no error (runc's behaviour)
    assert oci("kill", "--all", "st1", "KILL", check=False).returncode == 0
    oci("delete", "st1")
    assert not cgroup_dirs("st1")


def test_delete_of_a_stopped_container_ends_what_its_init_left_in_the_cgroup(oci: Oci) -> None:
    # No pid namespace: the init's exit does not end its background child, which
    # stays in the container's cgroup.  delete (an engine's, without --force) must
    # end it and remove the cgroup, not only rmdir what it can.
    oci.write_config(["sh", "-c", "sleep 300 </dev/null >/dev/null 2>&1 & echo $! > /tmp/left; exit 0"],
                     linux__namespaces=[{"type": t} for t in ("network", "ipc", "uts", "mount")],
                     root={"path": "rootfs", "readonly": False})
    oci.create("left1")
    pid = oci.state("left1")["pid"]
    dirs = cgroup_dirs("left1")
    assert dirs
    oci("start", "left1")
    assert oci.reap(pid) == 0
    assert oci.state("left1")["status"] == "stopped"
    with open(f"{dirs[0]}/cgroup.procs") as f:
        left = [int(p) for p in f.read().split()]
    assert len(left) == 1 and _cmdline(left[0]).startswith("sleep 300"), left
    oci("delete", "left1")
    assert not cgroup_dirs("left1")
    # orphaned, it was reparented to us (the tests are a subreaper, as engines are): killed
    _, status = os.waitpid(left[0], 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
