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
    monkeypatch.setattr(seccomp_cache, "_loaded", {})  # a new process: only the file remains
    assert seccomp_cache.default_program(caps) == seccomp.compile_profile("default", caps=caps)


# -- a profile given as a mapping (OCI's linux.seccomp, Spec(seccomp={...})) ------------------------

PROFILE = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": ["SCMP_ARCH_X86_64"],
           "syscalls": [{"names": ["read", "write", "exit_group", "execve"], "action": "SCMP_ACT_ALLOW"}]}


@pytest.fixture
def cold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty state directory, and nothing remembered in this process: every look-up goes to disk."""
    monkeypatch.setenv("MINIBOX_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(seccomp_cache, "_loaded", {})
    return tmp_path / "cache"


def _compiles(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Count the compiler's calls (the cache imports it from its module at each miss)."""
    from minibox.policy.seccomp import compile as compile_mod

    calls: list[object] = []
    real = compile_mod.compile_profile

    def counting(profile: object, *, caps: frozenset[str]) -> bytes | None:
        calls.append(profile)
        return real(profile, caps=caps)  # type: ignore[arg-type]

    monkeypatch.setattr(compile_mod, "compile_profile", counting)
    return calls


def test_a_mapping_is_compiled_once_then_read_back(cold: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = seccomp.compile_profile(PROFILE, caps=frozenset())
    calls = _compiles(monkeypatch)
    assert seccomp_cache.program_for(PROFILE, frozenset()) == compiled
    monkeypatch.setattr(seccomp_cache, "_loaded", {})  # a new process: only the file remains
    assert seccomp_cache.program_for(PROFILE, frozenset()) == compiled
    assert len(calls) == 1
    files = list(cold.glob("seccomp-profile-*.bpf"))
    assert len(files) == 1 and files[0].read_bytes() == compiled


def test_another_mapping_is_another_program(cold: Path) -> None:
    stricter = {**PROFILE, "syscalls": [{"names": ["exit_group"], "action": "SCMP_ACT_ALLOW"}]}
    one = seccomp_cache.program_for(PROFILE, frozenset())
    two = seccomp_cache.program_for(stricter, frozenset())
    assert one != two and two == seccomp.compile_profile(stricter, caps=frozenset())
    assert len(list(cold.glob("seccomp-profile-*.bpf"))) == 2


@pytest.mark.parametrize("damage", ["group-writable", "world-writable", "not whole instructions", "a symlink",
                                    "a directory others may write"])
def test_an_entry_that_is_not_trustworthy_is_ignored(cold: Path, monkeypatch: pytest.MonkeyPatch,
                                                     damage: str) -> None:
    compiled = seccomp_cache.program_for(PROFILE, frozenset())
    entry = next(cold.glob("seccomp-profile-*.bpf"))
    planted = seccomp.compile_profile("unconfined", caps=frozenset()) or b"\x06\x00\x00\x00\x00\x00\xff\x7f"
    if damage == "group-writable":
        entry.write_bytes(planted)
        entry.chmod(0o664)
    elif damage == "world-writable":
        entry.write_bytes(planted)
        entry.chmod(0o646)
    elif damage == "not whole instructions":
        entry.write_bytes(compiled[:-3])  # type: ignore[index]
    elif damage == "a directory others may write":
        entry.write_bytes(planted)  # as if another user had renamed another entry to this name
        cold.chmod(0o777)
    else:
        decoy = cold.parent / "decoy.bpf"
        decoy.write_bytes(planted)
        entry.unlink()
        entry.symlink_to(decoy)
    monkeypatch.setattr(seccomp_cache, "_loaded", {})
    assert seccomp_cache.program_for(PROFILE, frozenset()) == compiled


def test_a_mapping_that_warns_is_compiled_every_time_and_warns_every_time(
        cold: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    odd = {**PROFILE, "syscalls": [{"names": ["read", "no_such_call_xyz"], "action": "SCMP_ACT_ALLOW"}]}
    for _ in range(2):
        with pytest.warns(UserWarning, match="no_such_call_xyz"):
            seccomp_cache.program_for(odd, frozenset())
    assert list(cold.glob("seccomp-profile-*.bpf")) == []


def test_a_bad_mapping_raises_every_time(cold: Path) -> None:
    from minibox import SpecError

    bad = {**PROFILE, "defaultAction": "SCMP_ACT_WHATEVER"}
    for _ in range(2):
        with pytest.raises(SpecError):
            seccomp_cache.program_for(bad, frozenset())
    assert not cold.exists() or list(cold.glob("seccomp-profile-*.bpf")) == []


def test_the_cache_keeps_a_bounded_number_of_programs(cold: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp_cache, "MAX_ENTRIES", 4)
    for errno_ret in range(1, 10):
        seccomp_cache.program_for({**PROFILE, "defaultErrnoRet": errno_ret}, frozenset())
    assert len(list(cold.glob("seccomp-*.bpf"))) <= 4
