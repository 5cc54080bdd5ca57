"""The soak, short: mixed runs with killed callers, one gc, and nothing unexpected or left behind.

bench/soak.py is the long version (10,000 container and 200 VM runs, see
docs/benchmarks.md); this runs the same code with 60 container runs and 2
VM runs, 10 % of them made by callers killed with SIGKILL at a random
moment, two callers at a time.  It asserts what the soak's user checks: no
run ended other than its scenario says, and after one ``minibox gc`` the
host's inventory (cgroups, mounts, links, nft tables, processes, state and
temp files) is what it was before.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"

pytestmark = [
    pytest.mark.root, pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (cgroups, bridge networking, virtiofsd)"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64"),
]


def test_short_soak_has_no_unexpected_failure_and_no_leak(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(SOAK), "--runs", "60", "--vm-runs", "2", "--kill-fraction", "0.1",
                           "--concurrency", "2", "--seed", "15", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert out.exists(), f"no report; stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert report["unexpected"] == [], proc.stdout[-3000:]
    assert report["leaks"] == {}, proc.stdout[-3000:]
    assert sum(report["completed"].values()) + sum(report["killed"].values()) == 62
    assert report["killed"], "the seed kills some callers"  # seed 15: a few runs are killed
    assert report["gc"]["status"] == 0
    assert proc.returncode == 0, proc.stdout[-3000:]
