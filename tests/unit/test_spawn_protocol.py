"""The parent/child protocol of the spawn engine is written down once.

csrc/spawn.h numbers the child's steps (they travel through the error
pipe, also from minibox-init), names the sync bytes and the mount op kinds;
Python reads the numbers through cffi and only adds words.  These tests tie
the two, find enumerators nothing uses, and drive the sync pipe for real.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from minibox._native import lib
from minibox.container import rootfs, spawn
from minibox.errors import CommandNotFoundError, SetupError, exec_failure

REPO = Path(__file__).resolve().parents[2]
HEADER = (REPO / "csrc" / "spawn.h").read_text()
C_SOURCES = (REPO / "csrc" / "spawn.c").read_text() + (REPO / "csrc" / "rootfs.c").read_text()
PY_SOURCES = "".join(p.read_text() for p in (REPO / "src" / "minibox").rglob("*.py"))


def enum(name: str) -> dict[str, int]:
    body = re.search(r"enum " + name + r" \{(.*?)\};", HEADER, re.S)
    assert body, name
    entries = {}
    for key, value in re.findall(r"^\s*(MB_\w+)\s*=\s*('.'|\d+)", body.group(1), re.M):
        entries[key] = ord(value[1]) if value.startswith("'") else int(value)
    return entries


def test_every_step_has_one_number_and_one_name() -> None:
    steps = enum("mb_step")
    assert len(set(steps.values())) == len(steps), "two steps share a number"
    assert {getattr(lib, k) for k in steps} == set(steps.values())
    assert set(spawn.STEP_NAMES) == set(steps.values()), "a step without a name, or a name without a step"
    assert len(set(spawn.STEP_NAMES.values())) == len(spawn.STEP_NAMES)


def test_minibox_init_reports_the_same_execve_step() -> None:
    init = (REPO / "csrc" / "init" / "init.c").read_text()
    value = re.search(r"#define STEP_EXECVE (\d+)", init)
    assert value and int(value.group(1)) == lib.MB_STEP_EXECVE


@pytest.mark.parametrize("name", ["mb_step", "mb_op_kind", "mb_sync", "mb_compat", "mb_write_flags"])
def test_no_dead_enumerators(name: str) -> None:
    for key in enum(name):
        used_in_c = re.search(rf"\b{key}\b", C_SOURCES) is not None
        used_in_python = f"lib.{key}" in PY_SOURCES
        assert used_in_c or used_in_python, f"{key} is declared in spawn.h but nothing uses it"


def test_python_mirrors_the_sync_bytes_and_op_kinds() -> None:
    sync = enum("mb_sync")
    assert spawn.SYNC_MAPS_WRITTEN == bytes([sync["MB_SYNC_MAPS_WRITTEN"]])
    assert spawn.SYNC_GO == bytes([sync["MB_SYNC_GO"]])
    kinds = enum("mb_op_kind")
    python_kinds = {rootfs.OP_MOUNT, rootfs.OP_BIND, rootfs.OP_MKDIR, rootfs.OP_TOUCH, rootfs.OP_SYMLINK,
                    rootfs.OP_WRITE}
    assert python_kinds == set(kinds.values())
    assert rootfs.WRITE_AS_PID1 == enum("mb_write_flags")["MB_WRITE_PID1"]


def _child(sync_byte: bytes) -> SetupError | None:
    """A plain child (no namespaces) that waits for one sync byte, then runs /bin/true."""
    sync_r, sync_w = os.pipe()
    error_r, error_w = os.pipe()
    plan = spawn.ChildPlan(argv=["/bin/true"], envp=[], sync_fd=sync_r, error_fd=error_w)
    pid, pidfd = spawn.spawn(plan)
    os.close(sync_r)
    os.close(error_w)
    try:
        os.write(sync_w, sync_byte)
        return spawn.read_child_error(error_r, plan)
    finally:
        os.close(sync_w)
        os.close(error_r)
        os.waitpid(pid, 0)
        os.close(pidfd)


def test_the_child_runs_on_the_go_byte_and_refuses_any_other() -> None:
    assert _child(spawn.SYNC_GO) is None
    failure = _child(spawn.SYNC_MAPS_WRITTEN)   # the right byte at the wrong moment
    assert failure is not None and failure.step == "wait for parent" and failure.errno == errno.EPROTO


def test_execve_errors_map_once() -> None:
    for err in (errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR):
        assert isinstance(exec_failure("execve", err, "cmd"), CommandNotFoundError)
    assert exec_failure("execve", errno.ENOENT, "cmd").exit_status == 127
    assert exec_failure("execve", errno.EACCES, "cmd").exit_status == 126
    other = exec_failure("execve", errno.E2BIG, "cmd")
    assert type(other) is SetupError and other.errno == errno.E2BIG
    # the set of errnos is written once (errors.COMMAND_ERRNOS)
    assert len(re.findall(r"ENOENT, _?errno(?:_mod)?\.EACCES", PY_SOURCES)) == 1


def test_the_default_path_is_written_once() -> None:
    assert PY_SOURCES.count('"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"') == 1
    assert "/usr/bin:/bin" not in C_SOURCES


def test_the_c_mount_steps_are_built_once_per_distinct_plan() -> None:
    from minibox._native import ffi

    def targets(cplan: spawn._CPlan) -> list[str]:
        ops = cplan.c.ops
        return [ffi.string(ops[i].target).decode() for i in range(cplan.c.n_ops)]

    base = [rootfs.MountOp(rootfs.OP_MKDIR, "/a"), rootfs.MountOp(rootfs.OP_MKDIR, "/b", mode=0o700)]
    other = [rootfs.MountOp(rootfs.OP_MKDIR, "/a"), rootfs.MountOp(rootfs.OP_MKDIR, "/c", mode=0o700)]
    first = spawn._CPlan(spawn.ChildPlan(argv=["true"], envp=[], ops=base))
    again = spawn._CPlan(spawn.ChildPlan(argv=["true"], envp=[], ops=list(base)))
    changed = spawn._CPlan(spawn.ChildPlan(argv=["true"], envp=[], ops=other))
    assert first.c.ops == again.c.ops  # the same steps: the same C array, reused
    assert targets(first) == targets(again) == ["/a", "/b"]
    assert changed.c.ops != first.c.ops and targets(changed) == ["/a", "/c"]
    assert changed.c.ops[1].mode == 0o700
