"""Static helper builds (minibox/_static.py): one per source version, shared by every minibox on the host.

Two minibox installations (two versions, two checkouts) share the state
directory.  A build of one must not delete the other's binary while it may
be in use: only builds nobody has rebuilt for a day go.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from minibox import _static

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="no C compiler to build a static helper")


def test_a_build_keeps_other_versions_in_use_and_removes_day_old_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIBOX_STATE_DIR", str(tmp_path))
    source = tmp_path / "src" / "hello.c"
    source.parent.mkdir()
    source.write_text("int main(void) { return 0; }\n")
    monkeypatch.setattr(_static, "source_path", lambda relative: source)
    recent = tmp_path / "hello-0000000000000001"    # another minibox's build, in use now
    old = tmp_path / "hello-0000000000000002"       # nobody's for two days
    for path in (recent, old):
        path.write_bytes(b"\x7fELF")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))

    built = _static.build_static("hello.c", "hello")

    assert built.parent == tmp_path and os.access(built, os.X_OK)
    assert recent.exists(), "a recent build of another source was deleted"
    assert not old.exists(), "a day-old build of another source was kept"
    assert _static.build_static("hello.c", "hello") == built  # built once per source version
