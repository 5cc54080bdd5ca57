"""Every Sandbox verb, in every state, the same on both paths.

The states and what each verb may do in them are ``minibox.sandbox.ALLOWED``;
a verb in the wrong state raises :class:`StateError` naming the verb and
the state, on a container exactly as on a virtual machine.
"""

from __future__ import annotations

import signal
import time

import pytest

from minibox import Result, Sandbox, Spec, SpecError, StateError
from minibox.sandbox import ALLOWED

from .conftest import make


def refused(box: Sandbox, verb: str, state: str, *args: object) -> StateError:
    with pytest.raises(StateError) as info:
        getattr(box, verb)(*args)
    assert (info.value.verb, info.value.state) == (verb, state)
    return info.value


def test_the_whole_life_of_a_sandbox(isolation: str) -> None:
    box = make(isolation, Spec(argv=["sleep", "600"]))
    try:
        assert box.state == "created"
        error = refused(box, "wait", "created")
        assert "call start() or use the context manager" in str(error)  # wait() never starts it
        for verb in ("exec", "kill", "pause", "resume", "stats"):
            refused(box, verb, "created", *((["true"],) if verb == "exec" else ()))

        box.start()
        assert box.state == "running" and box.pid is not None
        refused(box, "start", "running")
        assert "not paused" in str(refused(box, "resume", "running"))
        box.pause()
        assert box.state == "paused"
        refused(box, "pause", "paused")
        refused(box, "exec", "paused", ["true"])
        assert box.stats().cpu_seconds is not None
        box.resume()
        assert box.state == "running"
        ran = box.exec(["true"], timeout=120)
        assert ran.ok and ran.usage.cpu_seconds is not None and ran.usage.memory_peak_bytes

        box.kill(signal.SIGKILL)
        result = box.wait(timeout=120)
        assert (result.reason, result.signal, result.exit_code) == ("signaled", signal.SIGKILL, None)
        assert box.state == "exited"
        assert box.wait() is result
        for verb in ("exec", "kill", "pause", "resume", "stats", "start"):
            refused(box, verb, "exited", *((["true"],) if verb == "exec" else ()))
    finally:
        box.close()
    assert box.state == "closed"
    box.close()  # idempotent
    assert box.wait() is result  # the Result outlives the resources
    for verb in ("exec", "kill", "pause", "resume", "stats", "start"):
        refused(box, verb, "closed", *((["true"],) if verb == "exec" else ()))


def test_exec_after_the_command_ended_is_a_state_error(isolation: str) -> None:
    with make(isolation, Spec(argv=["true"])) as box:
        deadline = time.monotonic() + 120
        while True:  # until the sandbox notices "true" is gone (it ends at once)
            try:
                box.exec(["true"], timeout=60)
            except StateError as e:
                assert (e.verb, e.state) == ("exec", "exited")
                break
            assert time.monotonic() < deadline, "exec kept working after the command ended"
            time.sleep(0.1)
        assert box.wait(timeout=120).exit_code == 0


def test_close_before_start(isolation: str) -> None:
    box = make(isolation, Spec(argv=["true"]))
    box.close()
    assert box.state == "closed"
    refused(box, "wait", "closed")
    refused(box, "start", "closed")


def test_the_state_table_covers_every_verb() -> None:
    assert set(ALLOWED) == {"start", "wait", "kill", "exec", "pause", "resume", "stats"}


# -- exec: the same arguments and the same Result on both --------------------------


def test_exec_arguments(box: Sandbox) -> None:
    result = box.exec(["sh", "-c", 'cat; echo "$EXTRA $CONTRACT"; pwd; id -u'], stdin=b"fed\n",
                      env={"EXTRA": "added"}, cwd="/scratch", user=(0, 0), timeout=120)
    assert isinstance(result, Result)
    assert result.stdout == b"fed\nadded yes\n/scratch\n0\n", result
    assert result.reason == "exited" and result.duration > 0
    assert result.usage.cpu_seconds is not None and result.usage.memory_peak_bytes


def test_exec_with_a_tty(box: Sandbox) -> None:
    result = box.exec(["sh", "-c", "tty; echo to-stderr >&2"], tty=True, timeout=120)
    lines = result.stdout.replace(b"\r", b"").splitlines()
    assert lines[0].startswith(b"/dev/pts/") and lines[1] == b"to-stderr"  # a terminal has one output
    assert result.stderr == b""


def test_exec_timeout_kills_only_the_exec(box: Sandbox) -> None:
    result = box.exec(["sleep", "600"], timeout=1)
    assert (result.reason, result.exit_code, result.signal) == ("timeout", None, signal.SIGKILL)
    assert box.exec(["true"], timeout=120).ok  # the sandbox lives on


def test_exec_failures(box: Sandbox) -> None:
    from minibox import CommandNotFoundError

    with pytest.raises(SpecError) as info:
        box.exec([])
    assert info.value.field == "argv"
    with pytest.raises(SpecError) as info:
        box.exec(["true"], cwd="relative")
    assert info.value.field == "cwd"
    with pytest.raises(SpecError) as info:
        box.exec(["true"], user=(-1, 0))
    assert info.value.field == "user"
    with pytest.raises(CommandNotFoundError):
        box.exec(["/no/such/program"], timeout=120)
