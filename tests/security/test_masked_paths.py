"""Masked and read-only paths, checked from inside a container against a written-down list.

The lists are the OCI runtime's defaults (runc's and podman's ``maskedPaths``
and ``readonlyPaths``), written here rather than taken from minibox's own
tables, so that dropping an entry from minibox's policy fails this test.
A path this host's kernel does not have cannot leak anything and is not
checked (the test prints which).
"""

from __future__ import annotations

import os

import minibox
from minibox import Spec

from ..conftest import needs_root

pytestmark = needs_root

MASKED_FILES = ("/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug")
MASKED_DIRS = ("/proc/acpi", "/proc/scsi", "/sys/firmware", "/proc/asound")
READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def _mounts_inside() -> tuple[dict[str, set[str]], dict[str, str]]:
    """(mount point -> its per-mount options, path -> what reading it gives) inside a default container."""
    present = [p for p in (*MASKED_FILES, *MASKED_DIRS, *READONLY) if os.path.exists(p)]
    script = "cat /proc/self/mountinfo; echo ==; " + "; ".join(
        f"echo {p}=$(if [ -d {p} ]; then ls -A {p} | wc -l; else wc -c < {p}; fi)" for p in present)
    result = minibox.run(Spec(argv=["sh", "-c", script], timeout=60))
    assert result.exit_code == 0, result
    mountinfo, _, contents = result.stdout.decode().partition("==\n")
    options = {line.split()[4]: set(line.split()[5].split(",")) for line in mountinfo.splitlines()}
    seen = dict(line.split("=", 1) for line in contents.splitlines())
    print("not on this host's kernel, not checked:",
          sorted(set(MASKED_FILES + MASKED_DIRS + READONLY) - set(present)))
    return options, seen


def test_masked_paths_are_covered_and_empty_inside() -> None:
    options, seen = _mounts_inside()
    for path in (p for p in MASKED_FILES + MASKED_DIRS if os.path.exists(p)):
        assert path in options, f"{path} is not masked (no mount covers it)"
        assert seen[path].strip() == "0", f"{path} shows {seen[path]!r} inside"
    for path in (p for p in MASKED_DIRS if os.path.exists(p)):
        assert "ro" in options[path], f"{path}: {sorted(options[path])}"


def test_read_only_paths_are_read_only_mounts_inside() -> None:
    options, _ = _mounts_inside()
    for path in (p for p in READONLY if os.path.exists(p)):
        assert path in options and "ro" in options[path], f"{path} is not a read-only mount inside"
