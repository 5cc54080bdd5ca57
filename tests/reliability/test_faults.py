"""Failures under faults are typed, happen before the command runs, and leave nothing (issue 15 §3).

Each fault is injected for real: a read-only or full runtime directory (a
small tmpfs mounted inside a private mount namespace, unshare(1)), a
read-only state directory (a read-only bind mount, same), a lowered
RLIMIT_NOFILE, the rootfs removed under a running container, the cgroup
directories removed under a live container.  Each test asserts a typed
error (in the CLI: one line, exit 125, no traceback) and that the host
inventory (tests/conftest.py's ``_leftover_snapshot``) holds nothing of its
sandboxes afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from minibox import Container, Limits, MiniboxError, SetupError, Spec, StateError

from ..conftest import _leftover_snapshot, needs_root

pytestmark = needs_root

MARK = f"fault{os.getpid()}"
PARENT_ENV = {"MINIBOX_CGROUP_PARENT": f"minibox/{MARK}"}  # cgroups of these tests live under their own parent


def _ours(extra_marks: list[str] = ()) -> dict[str, list[str]]:  # type: ignore[assignment]
    snap = _leftover_snapshot()
    marks = [MARK, *extra_marks]
    found = {kind: sorted(i for i in items if any(m in i for m in marks)) for kind, items in snap.items()}
    return {kind: items for kind, items in found.items() if items}


def _in_private_mount_ns(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a shell ``script`` in a new mount namespace whose mounts do not propagate to the host."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec", script],
                          capture_output=True, text=True, timeout=300, env=env, check=False)


def _cli_env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, **PARENT_ENV, PYTHON=sys.executable, T=str(tmp_path))


def _assert_one_line_setup_error(run: subprocess.CompletedProcess[str], *words: str) -> None:
    assert run.returncode == 125, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith("minibox: SetupError:"), lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "ok" not in run.stdout  # the command never ran


def test_a_read_only_runtime_dir_is_a_setup_error_before_the_command_runs(tmp_path: Path) -> None:
    run = _in_private_mount_ns(textwrap.dedent("""
        mkdir -p "$T/run"
        mount -t tmpfs -o ro,size=64k tmpfs "$T/run"
        MINIBOX_RUNTIME_DIR="$T/run/minibox" "$PYTHON" -m minibox.cli run --memory 32M -- echo ok
    """), _cli_env(tmp_path))
    _assert_one_line_setup_error(run, str(tmp_path / "run" / "minibox"), "EROFS")
    assert _ours() == {}


def test_a_full_runtime_dir_is_a_setup_error_before_the_command_runs(tmp_path: Path) -> None:
    run = _in_private_mount_ns(textwrap.dedent("""
        mkdir -p "$T/run"
        mount -t tmpfs -o size=64k tmpfs "$T/run"
        mkdir "$T/run/minibox"
        dd if=/dev/zero of="$T/run/filler" bs=4k 2>/dev/null || true
        MINIBOX_RUNTIME_DIR="$T/run/minibox" "$PYTHON" -m minibox.cli run --memory 32M -- echo ok
    """), _cli_env(tmp_path))
    _assert_one_line_setup_error(run, str(tmp_path / "run" / "minibox"), "ENOSPC")
    assert _ours() == {}


@pytest.mark.parametrize("isolation", ["container", pytest.param("vm", marks=pytest.mark.vm)])
def test_a_read_only_state_dir_that_is_complete_is_enough_to_start(tmp_path: Path, isolation: str) -> None:
    from minibox.paths import state_dir

    if isolation == "vm" and shutil.which("qemu-system-x86_64") is None:
        pytest.skip("QEMU is not installed")
    warm = subprocess.run([sys.executable, "-m", "minibox.cli", "run", "--isolation", isolation, "--", "true"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert warm.returncode == 0, warm.stderr  # the state dir is complete now
    env = dict(_cli_env(tmp_path), S=str(state_dir()), I=isolation)
    run = _in_private_mount_ns(textwrap.dedent("""
        mount --bind "$S" "$S"
        mount -o remount,bind,ro "$S"
        ! touch "$S/.probe" 2>/dev/null
        "$PYTHON" -m minibox.cli run --isolation "$I" -- echo ok
    """), env)
    assert (run.returncode, run.stdout) == (0, "ok\n"), run.stderr
    assert _ours() == {}


HOLDER = textwrap.dedent("""
    import json, os, resource, sys
    from minibox import Container, Spec, SetupError
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    boxes, error, fds_before = [], None, None
    for i in range(64):
        box = Container(Spec(argv=["sleep", "1000"]))
        fds_before = sorted(os.listdir("/proc/self/fd"))
        try:
            box.start()
        except SetupError as e:
            error = {"step": e.step, "errno": e.errno, "text": str(e), "held": len(boxes),
                     "leaked": sorted(set(os.listdir("/proc/self/fd")) - set(fds_before))}
            box.close()
            break
        boxes.append(box)
    for box in boxes:
        box.close()
    print(json.dumps(error))
""")


def test_running_out_of_fds_is_a_typed_error_that_leaks_nothing() -> None:
    run = subprocess.run([sys.executable, "-c", HOLDER], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, **PARENT_ENV), check=False)
    assert run.returncode == 0, run.stderr
    error = json.loads(run.stdout)
    assert error is not None, "64 fds held 64 containers?"
    assert error["step"] == "file descriptors" and error["errno"] == 24  # EMFILE
    assert f"owns {error['held']} sandboxes" in error["text"] and "RLIMIT_NOFILE" in error["text"]
    assert error["leaked"] == []  # every partial acquisition was released
    assert _ours() == {}


def test_the_rootfs_removed_under_a_running_container(scratch_rootfs: str) -> None:
    box = Container(Spec(argv=["sleep", "1000"], rootfs=scratch_rootfs, limits=Limits(pids=8)))
    try:
        box.start()
        shutil.rmtree(scratch_rootfs)  # the files are gone inside too: it is the same file system
        with pytest.raises(SetupError) as err:  # exec needs the rootfs: typed, naming the step
            box.exec(["echo", "still-here"])
        assert err.value.step and err.value.errno is not None
        assert box.running  # the container itself runs on
    finally:
        box.close()
    with pytest.raises(MiniboxError) as err:  # typed, not an OSError, and nothing created
        Container(Spec(argv=["true"], rootfs=scratch_rootfs)).start()
    assert not isinstance(err.value, OSError)
    assert _ours([box.id]) == {}


def test_stats_of_a_container_whose_cgroup_was_removed_is_a_state_error() -> None:
    box = Container(Spec(argv=["sleep", "1000"], limits=Limits(pids=8)))
    try:
        box.start()
        assert box.stats().pids == 1
        for directory in dict.fromkeys(box.cgroup_paths.values()):
            # as a cgroup-cleaning tool would: move the process out, remove the directory
            Path(os.path.dirname(os.path.dirname(directory)), "cgroup.procs").write_text(str(box.pid))
            os.rmdir(directory)
        with pytest.raises(StateError, match="removed from under it"):
            box.stats()
    finally:
        box.close()
    assert _ours([box.id]) == {}
