"""First-use steps are reported through logging and callbacks, never on stdout; the CLI says them on stderr."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minibox import firstuse


def test_a_step_reports_start_and_end_through_logging_and_callbacks(
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    events: list[firstuse.StepEvent] = []
    firstuse.add_callback(events.append)
    try:
        with caplog.at_level(logging.INFO, logger="minibox"):
            with firstuse.step("thing", "building the thing", "things are needed; once") as s:
                s.size = 3 << 20
            with pytest.raises(OSError, match="disk full"), firstuse.step("other", "fetching", "why"):
                raise OSError("disk full")
    finally:
        firstuse.remove_callback(events.append)
    assert [(e.step, e.phase) for e in events] == [("thing", "start"), ("thing", "done"),
                                                   ("other", "start"), ("other", "failed")]
    assert events[1].size == 3 << 20 and events[1].elapsed >= 0
    assert events[3].detail == "disk full"
    messages = [r.getMessage() for r in caplog.records if r.name == "minibox"]
    assert messages[0] == "building the thing (things are needed; once)"
    assert messages[1].startswith("building the thing: done in ") and messages[1].endswith("3.0 MiB")
    assert caplog.records[-1].levelno == logging.WARNING and "failed" in messages[-1]
    assert capsys.readouterr().out == ""  # a library never prints


def test_the_cli_reporter_says_how_long_so_far() -> None:
    stream = io.StringIO()
    reporter = firstuse._Reporter(stream)
    reporter.LOG_TICK = 0.05
    firstuse.add_callback(reporter)
    try:
        with firstuse.step("slow", "downloading a kernel", "VMs need one"):
            time.sleep(0.3)
    finally:
        firstuse.remove_callback(reporter)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "minibox: first use: downloading a kernel (VMs need one)"
    assert any(line.startswith("minibox: first use: ... downloading a kernel: ") and line.endswith("s so far")
               for line in lines[1:-1])
    assert lines[-1].startswith("minibox: first use: downloading a kernel: done in 0.")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a container)")
def test_the_first_run_on_an_empty_state_dir_says_what_it_builds(tmp_path: Path) -> None:
    minibox = str(Path(sys.executable).with_name("minibox"))
    env = dict(os.environ, MINIBOX_STATE_DIR=str(tmp_path / "state"))
    first = subprocess.run([minibox, "run", "--init", "--", "echo", "hi"], capture_output=True, text=True,
                           env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "hi\n"  # the command's output, and only that
    for said in ("minibox: first use: building the busybox rootfs (", "building the busybox rootfs: done in ",
                 "compiling the static minibox-init", "minibox-init (csrc/init/init.c): done in "):
        assert said in first.stderr, first.stderr
    again = subprocess.run([minibox, "run", "--init", "--", "echo", "hi"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert again.stdout == "hi\n" and "first use" not in again.stderr  # cached: nothing to say
