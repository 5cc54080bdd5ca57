"""The on-disk cache of the default seccomp program gives the compiler's bytes, or recompiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from minibox.policy import capabilities, seccomp
from minibox.policy.seccomp import cache as seccomp_cache


def test_cached_program_is_the_compiled_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIBOX_STATE_DIR", str(tmp_path))
    caps = frozenset(capabilities.DEFAULT_CAPABILITIES)
    compiled = seccomp.compile_profile("default", caps=caps)
    first = seccomp_cache.default_program(caps)          # a miss: compiles and stores
    files = list((tmp_path / "cache").glob("seccomp-*.bpf"))
    assert len(files) == 1 and files[0].read_bytes() == compiled
    assert seccomp_cache.default_program(caps) == first == compiled   # a hit
    other = seccomp_cache.default_program(caps | {"CAP_SYS_ADMIN"})    # other caps, other entry
    assert other != compiled and len(list((tmp_path / "cache").glob("seccomp-*.bpf"))) == 2


def test_a_damaged_cache_entry_is_recompiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIBOX_STATE_DIR", str(tmp_path))
    caps = frozenset(capabilities.DEFAULT_CAPABILITIES)
    seccomp_cache.default_program(caps)
    entry = next((tmp_path / "cache").glob("seccomp-*.bpf"))
    entry.write_bytes(b"\x00" * 13)  # not whole instructions
    assert seccomp_cache.default_program(caps) == seccomp.compile_profile("default", caps=caps)
