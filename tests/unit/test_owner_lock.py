"""The owner's lock file: made with a process's first sandbox, kept until it exits (minibox/owner.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from minibox import owner


def test_one_lock_file_serves_sandboxes_one_after_another() -> None:
    first = owner.acquire()
    owner.release()
    # no sandbox now: the lock is still ours, held, for the next one
    assert owner.lock_held(first["lock"])
    second = owner.acquire()
    owner.release()
    assert second["lock"] == first["lock"]


def test_a_lock_file_removed_while_idle_is_made_anew() -> None:
    first = owner.acquire()
    owner.release()
    os.unlink(first["lock"])  # the runtime directory wiped, say
    second = owner.acquire()
    try:
        assert second["lock"] != first["lock"]
        assert os.path.exists(second["lock"]) and owner.lock_held(second["lock"])
    finally:
        owner.release()


def test_the_lock_file_goes_when_its_process_exits() -> None:
    code = "from minibox import owner; me = owner.acquire(); owner.release(); print(me['lock'])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    path = run.stdout.strip()
    assert path.endswith(".lock")
    assert not os.path.exists(path)
