"""Hardening: capabilities, no_new_privs, seccomp, masked paths, rlimits (issue 4).

Two halves:

* unit tests of ``minibox.policy.capabilities``, ``.seccomp`` and
  ``.rlimits`` that need no container.  The seccomp program is checked by
  running it through a small classic-BPF interpreter (below) on synthetic
  ``struct seccomp_data``, for every ABI of this machine, and once by
  installing it in a throw-away subprocess and making harmless calls;
* container tests: a static C probe (probe.c) is copied into a busybox
  rootfs and run with ``minibox.run``; it reports from inside what the
  process holds and the outcome of each forbidden action.

The probe is only ever executed inside a container (it refuses to run in
the host's pid or mount namespace).
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import struct
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import prctl  # python-prctl: used here only to read sets and map names
import pytest

import minibox
from minibox import Spec, SpecError
from minibox.policy import capabilities, rlimits, seccomp

HERE = Path(__file__).resolve().parent

# ------------------------------------------------------------------ a classic-BPF interpreter

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
EPERM_ACTION = seccomp.act_errno(errno.EPERM)
ENOSYS_ACTION = seccomp.act_errno(errno.ENOSYS)


def seccomp_data(nr: int, arch: int, args: tuple[int, ...] = ()) -> bytes:
    """``struct seccomp_data``: int nr, u32 arch, u64 instruction_pointer, u64 args[6]."""
    full = tuple(args) + (0,) * (6 - len(args))
    return struct.pack("<iIQ6Q", nr, arch, 0, *full)


def run_bpf(program: bytes, data: bytes) -> int:
    """Evaluate a classic-BPF program the way the kernel's seccomp does; return the action."""
    insns = [struct.unpack_from("<HBBI", program, off) for off in range(0, len(program), 8)]
    a = x = 0
    mem = [0] * 16
    pc = 0
    for _ in range(100_000):
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # BPF_LD
            mode = code & 0xE0
            if mode == 0x20:  # ABS, 32-bit words only in seccomp
                a = struct.unpack_from("<I", data, k)[0]
            elif mode == 0x00:  # IMM
                a = k
            elif mode == 0x60:  # MEM
                a = mem[k]
            else:
                raise AssertionError(f"unsupported ld {code:#x}")
        elif cls == 0x01:  # BPF_LDX
            x = mem[k] if code & 0xE0 == 0x60 else k
        elif cls == 0x02:  # BPF_ST
            mem[k] = a
        elif cls == 0x03:  # BPF_STX
            mem[k] = x
        elif cls == 0x04:  # BPF_ALU
            op, operand = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x50:
                a &= operand
            elif op == 0x40:
                a |= operand
            elif op == 0x00:
                a = (a + operand) & 0xFFFFFFFF
            elif op == 0x10:
                a = (a - operand) & 0xFFFFFFFF
            elif op == 0xA0:
                a ^= operand
            elif op == 0x60:
                a = (a << operand) & 0xFFFFFFFF
            elif op == 0x70:
                a >>= operand
            else:
                raise AssertionError(f"unsupported alu {code:#x}")
        elif cls == 0x05:  # BPF_JMP
            op, operand = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:  # JA
                pc += k
                continue
            cond = {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand, 0x40: bool(a & operand)}[op]
            pc += jt if cond else jf
        elif cls == 0x06:  # BPF_RET
            return k if not code & 0x10 else a
        elif cls == 0x07:  # BPF_MISC
            if code == 0x07:
                x = a
            else:
                a = x
        else:
            raise AssertionError(f"unknown class {code:#x}")
    raise AssertionError("program did not terminate")


def nr(name: str, arch: int | None = None) -> int:
    from minibox._native import lib

    token = lib.seccomp_arch_native() if arch is None else arch
    number = int(lib.seccomp_syscall_resolve_name_arch(token, name.encode()))
    assert number >= 0, f"{name} does not exist on arch {token:#x}"
    return number


@pytest.fixture(scope="module")
def default_bpf() -> bytes:
    program = seccomp.compile_profile("default", caps=capabilities.DEFAULT_CAPABILITIES)
    assert program is not None
    return program


# ------------------------------------------------------------------ capabilities


def test_capability_table_matches_the_kernel_headers() -> None:
    for name in prctl.ALL_CAP_NAMES:
        if name.startswith("unknown") or name == "last_cap":  # python-prctl's alias for the highest one
            continue
        assert capabilities.CAPABILITIES["CAP_" + name.upper()] == getattr(prctl, "CAP_" + name.upper())
    assert capabilities.cap_last_cap() == int(Path("/proc/sys/kernel/cap_last_cap").read_text())


@pytest.mark.parametrize("spelling", ["CAP_NET_ADMIN", "net_admin", "Net_Admin", "cap_net_admin", " NET_ADMIN "])
def test_capability_names_any_spelling(spelling: str) -> None:
    assert capabilities.normalize_name(spelling) == "CAP_NET_ADMIN"


@pytest.mark.parametrize("field", ["cap_add", "cap_drop"])
def test_unknown_capability_is_a_spec_error(field: str) -> None:
    spec = Spec(argv=["true"], **{field: ["NET_ADMN"]})  # type: ignore[arg-type]
    with pytest.raises(SpecError) as info:
        capabilities.capability_masks(spec)
    assert info.value.field == field
    assert "NET_ADMN" in str(info.value)


def test_default_masks_for_root() -> None:
    masks = capabilities.capability_masks(Spec(argv=["true"]))
    expected = sum(1 << getattr(prctl, name) for name in capabilities.DEFAULT_CAPABILITIES)
    # podman's default set (containers.conf default_capabilities): Docker's 14 without
    # NET_RAW (packet forging on the bridge), MKNOD and AUDIT_WRITE
    assert capabilities.DEFAULT_CAPABILITIES == {
        "CAP_" + name for name in ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE",
                                   "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT")}
    assert masks.bounding == masks.effective == masks.permitted == expected
    assert masks.inheritable == masks.ambient == 0
    assert masks.names == capabilities.DEFAULT_CAPABILITIES


def test_non_root_user_gets_bounding_only() -> None:
    masks = capabilities.capability_masks(Spec(argv=["true"], user=(1000, 1000), cap_add=["NET_ADMIN"]))
    assert "CAP_NET_ADMIN" in masks.names
    assert masks.effective == masks.permitted == masks.inheritable == masks.ambient == 0


def test_add_and_drop_follow_docker() -> None:
    caps = capabilities.resolve(cap_add=["net_admin"], cap_drop=["CHOWN", "kill"])
    assert caps == (capabilities.DEFAULT_CAPABILITIES - {"CAP_CHOWN", "CAP_KILL"}) | {"CAP_NET_ADMIN"}
    # an add wins over a drop of the same name
    assert "CAP_CHOWN" in capabilities.resolve(cap_add=["CHOWN"], cap_drop=["CHOWN"])
    assert capabilities.resolve(cap_drop=["ALL"], cap_add=["chown"]) == {"CAP_CHOWN"}
    everything = capabilities.resolve(cap_add=["ALL"], cap_drop=["SYS_ADMIN"])
    assert "CAP_SYS_ADMIN" not in everything
    assert len(everything) == capabilities.cap_last_cap()  # all known caps but one
    assert capabilities.resolve(cap_drop=["ALL"]) == frozenset()


def test_capabilities_beyond_the_kernel_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "cap_last_cap", lambda: 37)
    with pytest.raises(SpecError, match="CAP_BPF"):
        capabilities.resolve(cap_add=["BPF"])
    assert "CAP_BPF" not in capabilities.resolve(cap_add=["ALL"])
    capabilities.resolve(cap_drop=["BPF"])  # dropping what the kernel lacks is fine


# ------------------------------------------------------------------ rlimits


def test_rlimits_parse() -> None:
    parsed = rlimits.parse_rlimits({"RLIMIT_NOFILE": (64, 128), "core": 0, "RLIMIT_STACK": "unlimited",
                                    "rlimit_cpu": (10, resource.RLIM_INFINITY)})
    inf = rlimits.RLIM_INFINITY_U64
    assert (resource.RLIMIT_NOFILE, 64, 128) in parsed
    assert (resource.RLIMIT_CORE, 0, 0) in parsed
    assert (resource.RLIMIT_STACK, inf, inf) in parsed
    assert (resource.RLIMIT_CPU, 10, inf) in parsed
    assert [r.resource for r in parsed] == sorted(r.resource for r in parsed)
    assert rlimits.parse_rlimits({}) == []


@pytest.mark.parametrize("bad, words", [
    ({"RLIMIT_NOPE": 1}, "unknown limit"),
    ({"RLIMIT_NOFILE": (10, 5)}, "above the hard limit"),
    ({"RLIMIT_NOFILE": -5}, "negative"),
    ({"RLIMIT_NOFILE": (1, 2, 3)}, "soft, hard"),
    ({"RLIMIT_NOFILE": 1.5}, "expected an int"),
    ({"RLIMIT_NOFILE": True}, "expected an int"),
    ({"nofile": 1, "RLIMIT_NOFILE": 2}, "twice"),
    ({"RLIMIT_NOFILE": 2**40}, "nr_open"),
    ({"RLIMIT_CORE": (5, "unlimited"), "RLIMIT_AS": ("unlimited", 5)}, "above the hard limit"),
])
def test_rlimits_errors(bad: dict[str, object], words: str) -> None:
    with pytest.raises(SpecError, match=words) as info:
        rlimits.parse_rlimits(bad)
    assert info.value.field.startswith("rlimits")


# ------------------------------------------------------------------ seccomp: the program


def test_unconfined_is_no_filter() -> None:
    assert seccomp.compile_profile("unconfined", caps=frozenset()) is None
    assert seccomp.instruction_count(None) == 0


def test_default_profile_is_cached_and_well_formed(default_bpf: bytes) -> None:
    again = seccomp.compile_profile("default", caps=capabilities.DEFAULT_CAPABILITIES)
    assert again is default_bpf
    assert len(default_bpf) % 8 == 0
    assert 0 < seccomp.instruction_count(default_bpf) <= 4096


def test_program_starts_with_the_architecture_check(default_bpf: bytes) -> None:
    code, _, _, k = struct.unpack_from("<HBBI", default_bpf, 0)
    assert (code, k) == (0x20, 4), "first instruction must load seccomp_data.arch"
    compared = {struct.unpack_from("<HBBI", default_bpf, off)[3]
                for off in range(0, len(default_bpf), 8)
                if struct.unpack_from("<HBBI", default_bpf, off)[0] == 0x15}
    assert {AUDIT_ARCH_X86_64, AUDIT_ARCH_I386} <= compared
    # x32 is told apart from x86_64 by __X32_SYSCALL_BIT
    # (libseccomp: "A &= 0x40000000; if A == 0x40000000 goto x32") inside the x86_64 branch
    assert any(struct.unpack_from("<HBBI", default_bpf, off)[0] in (0x54, 0x25, 0x35, 0x45)
               and struct.unpack_from("<HBBI", default_bpf, off)[3] in (0x3FFFFFFF, seccomp.X32_SYSCALL_BIT)
               for off in range(0, len(default_bpf), 8))


def test_foreign_architecture_is_killed(default_bpf: bytes) -> None:
    assert run_bpf(default_bpf, seccomp_data(0, AUDIT_ARCH_AARCH64)) == seccomp.ACT_KILL_PROCESS
    assert run_bpf(default_bpf, seccomp_data(39, 0xDEADBEEF)) == seccomp.ACT_KILL_PROCESS


def test_every_denied_call_is_denied_on_every_abi(default_bpf: bytes) -> None:
    from minibox._native import lib

    abis = [(lib.SCMP_ARCH_X86_64, AUDIT_ARCH_X86_64), (lib.SCMP_ARCH_X86, AUDIT_ARCH_I386),
            (lib.SCMP_ARCH_X32, AUDIT_ARCH_X86_64)]
    checked = 0
    for denial in seccomp.DENIED:
        if set(denial.unless_caps) & capabilities.DEFAULT_CAPABILITIES:
            continue
        for name in denial.names:
            for token, audit in abis:
                number = int(lib.seccomp_syscall_resolve_name_arch(token, name.encode()))
                if number < 0:
                    continue  # no such call on this ABI
                assert run_bpf(default_bpf, seccomp_data(number, audit)) == EPERM_ACTION, (name, hex(token))
                checked += 1
    assert checked > 150


def test_x32_numbers_are_filtered(default_bpf: bytes) -> None:
    from minibox._native import lib

    x32 = lib.SCMP_ARCH_X32
    kexec = nr("kexec_load", x32)
    keyctl = nr("keyctl", x32)
    assert kexec & seccomp.X32_SYSCALL_BIT and keyctl & seccomp.X32_SYSCALL_BIT
    assert run_bpf(default_bpf, seccomp_data(kexec, AUDIT_ARCH_X86_64)) == EPERM_ACTION
    assert run_bpf(default_bpf, seccomp_data(keyctl, AUDIT_ARCH_X86_64)) == EPERM_ACTION
    # the same call by its plain x86_64 number is denied too, and ordinary x32 calls pass
    assert run_bpf(default_bpf, seccomp_data(nr("keyctl"), AUDIT_ARCH_X86_64)) == EPERM_ACTION
    assert run_bpf(default_bpf, seccomp_data(nr("getpid", x32), AUDIT_ARCH_X86_64)) == seccomp.ACT_ALLOW


def test_i386_numbers_are_filtered(default_bpf: bytes) -> None:
    from minibox._native import lib

    i386 = lib.SCMP_ARCH_X86
    assert nr("kexec_load", i386) == 283 and nr("kexec_load") == 246
    assert run_bpf(default_bpf, seccomp_data(283, AUDIT_ARCH_I386)) == EPERM_ACTION
    # 246 on i386 is not kexec_load: the arch check keeps the tables apart
    assert run_bpf(default_bpf, seccomp_data(nr("getpid", i386), AUDIT_ARCH_I386)) == seccomp.ACT_ALLOW


def test_ordinary_calls_are_allowed(default_bpf: bytes) -> None:
    for name in ("read", "write", "openat", "execve", "getpid", "mmap", "ptrace", "chown", "bind", "adjtimex"):
        assert run_bpf(default_bpf, seccomp_data(nr(name), AUDIT_ARCH_X86_64)) == seccomp.ACT_ALLOW, name


def test_argument_filters(default_bpf: bytes) -> None:
    def verdict(name: str, *args: int) -> int:
        return run_bpf(default_bpf, seccomp_data(nr(name), AUDIT_ARCH_X86_64, args))

    sigchld = 17
    assert verdict("clone", seccomp.CLONE_NEWUSER | sigchld) == EPERM_ACTION
    assert verdict("clone", seccomp.CLONE_NEWNET | sigchld) == EPERM_ACTION
    assert verdict("clone", 0x003D0F00) == seccomp.ACT_ALLOW  # pthread_create's flags
    assert verdict("clone", sigchld) == seccomp.ACT_ALLOW     # fork
    assert verdict("unshare", seccomp.CLONE_NEWUSER) == EPERM_ACTION
    assert verdict("unshare", 0x00000200) == seccomp.ACT_ALLOW  # CLONE_FS
    assert verdict("clone3", 0) == ENOSYS_ACTION
    assert verdict("ioctl", 0, seccomp.TIOCSTI) == EPERM_ACTION
    assert verdict("ioctl", 0, 0xDEAD_0000_0000 | seccomp.TIOCSTI) == EPERM_ACTION  # high bits ignored
    assert verdict("ioctl", 0, seccomp.TIOCLINUX) == EPERM_ACTION
    assert verdict("ioctl", 0, 0x5401) == seccomp.ACT_ALLOW  # TCGETS
    for value in seccomp.ALLOWED_PERSONALITIES:
        assert verdict("personality", value) == seccomp.ACT_ALLOW, hex(value)
    for value in (0x0040000, 0x0400000, 1, 0x20009, 0x80000000, 0xFFFFFFFE, 0x7FFFFFFF):
        assert verdict("personality", value) == EPERM_ACTION, hex(value)
    assert verdict("mknod", 0, 0o060600, 0x801) == EPERM_ACTION
    assert verdict("mknodat", 0, 0, 0o060600, 0x801) == EPERM_ACTION
    assert verdict("mknod", 0, 0o020600, 0x101) == seccomp.ACT_ALLOW  # char devices: the devices cgroup's job
    assert verdict("mknod", 0, 0o010600, 0) == seccomp.ACT_ALLOW       # FIFOs


def test_personality_filter_exhaustively_on_low_bits() -> None:
    program = seccomp.compile_bpf(seccomp.Profile(
        seccomp.ACT_ALLOW, seccomp.native_arches()[:1], tuple(seccomp._personality_rules(EPERM_ACTION))))
    number = nr("personality")
    for value in [*range(0, 1 << 18), 0xFFFFFFFF, 0xFFFFFFF7, 0x80020008]:
        expected = seccomp.ACT_ALLOW if value in seccomp.ALLOWED_PERSONALITIES else EPERM_ACTION
        if value % 97 and value not in seccomp.ALLOWED_PERSONALITIES and value > 0x20010:
            continue  # sample the large range to keep the test fast
        assert run_bpf(program, seccomp_data(number, AUDIT_ARCH_X86_64, (value,))) == expected, hex(value)


def test_capabilities_lift_denials() -> None:
    with_admin = seccomp.compile_profile("default", caps=capabilities.DEFAULT_CAPABILITIES | {"CAP_SYS_ADMIN"})
    assert with_admin is not None
    mount = nr("mount")
    assert run_bpf(with_admin, seccomp_data(mount, AUDIT_ARCH_X86_64)) == seccomp.ACT_ALLOW
    assert run_bpf(with_admin, seccomp_data(nr("clone"), AUDIT_ARCH_X86_64, (seccomp.CLONE_NEWUSER,))) \
        == seccomp.ACT_ALLOW
    # but never kexec or the keyring
    assert run_bpf(with_admin, seccomp_data(nr("kexec_load"), AUDIT_ARCH_X86_64)) == EPERM_ACTION
    assert run_bpf(with_admin, seccomp_data(nr("keyctl"), AUDIT_ARCH_X86_64)) == EPERM_ACTION
    boot = seccomp.compile_profile("default", caps=frozenset({"sys_boot"}))
    assert boot is not None
    assert run_bpf(boot, seccomp_data(nr("reboot"), AUDIT_ARCH_X86_64)) == seccomp.ACT_ALLOW
    assert run_bpf(boot, seccomp_data(mount, AUDIT_ARCH_X86_64)) == EPERM_ACTION


# ------------------------------------------------------------------ seccomp: OCI profiles


def test_oci_profile_translates() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [
            {"names": ["keyctl", "getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]},
            # the same index twice: ORed, as runc does
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"},
                      {"index": 0, "value": 17, "op": "SCMP_CMP_EQ"}]},
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},  # same as default: dropped
        ],
    }
    program = seccomp.compile_profile(profile, caps=frozenset())
    assert program is not None

    def verdict(name: str, *args: int) -> int:
        return run_bpf(program, seccomp_data(nr(name), AUDIT_ARCH_X86_64, args))

    assert verdict("keyctl") == ENOSYS_ACTION
    assert verdict("getcwd") == ENOSYS_ACTION
    assert verdict("kill", 1, 9) == EPERM_ACTION
    assert verdict("kill", 1, 15) == seccomp.ACT_ALLOW
    assert verdict("socket", 16) == EPERM_ACTION
    assert verdict("socket", 17) == EPERM_ACTION
    assert verdict("socket", 2) == seccomp.ACT_ALLOW
    assert run_bpf(program, seccomp_data(288, AUDIT_ARCH_I386)) == ENOSYS_ACTION  # i386 keyctl


def test_oci_default_deny_profile() -> None:
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.ENOSYS,
               "syscalls": [{"names": ["read", "write", "exit_group", "minibox_future_call"],
                             "action": "SCMP_ACT_ALLOW"}]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        program = seccomp.compile_profile(profile, caps=frozenset())
    assert program is not None
    assert any("minibox_future_call" in str(w.message) for w in caught)
    assert run_bpf(program, seccomp_data(nr("read"), AUDIT_ARCH_X86_64)) == seccomp.ACT_ALLOW
    assert run_bpf(program, seccomp_data(nr("getpid"), AUDIT_ARCH_X86_64)) == ENOSYS_ACTION
    # no i386 in "architectures": 32-bit calls are killed, not let through
    assert run_bpf(program, seccomp_data(3, AUDIT_ARCH_I386)) == seccomp.ACT_KILL_PROCESS


@pytest.mark.parametrize("profile, words", [
    ({"syscalls": []}, "defaultAction is required"),
    ({"defaultAction": "SCMP_ACT_MAYBE"}, "unknown action"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "archMap": []}, "archMap"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}, "architecture"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["keyctl"]}]}, "action is required"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]}, "names"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["no_such_call"], "action": "SCMP_ACT_ERRNO"}]},
     "unknown system call 'no_such_call'"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "op": "SCMP_CMP_EQ"}]}]},
     "index"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "op": "SCMP_CMP_LIKE"}]}]},
     "operator"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]},
     "unsigned 64-bit"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}, "errnoRet"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_NOTIFY"}]}, "NOTIFY"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO", "includes": {}}]}, "includes"),
])
def test_bad_oci_profiles(profile: dict[str, object], words: str) -> None:
    with pytest.raises(SpecError, match=words) as info:
        seccomp.compile_profile(profile, caps=frozenset())
    assert info.value.field == "seccomp"


def test_unknown_capability_in_caps_argument() -> None:
    with pytest.raises(SpecError):
        seccomp.compile_profile("default", caps=frozenset({"CAP_FLY"}))


# ------------------------------------------------------------------ seccomp: the real kernel

_INSTALL_AND_TRY = textwrap.dedent("""
    import ctypes, errno, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    prog = open(sys.argv[1], "rb").read()
    buf = ctypes.create_string_buffer(prog, len(prog))
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
    assert libc.prctl(38, 1, 0, 0, 0) == 0                       # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, FILTER
    def call(nr, *args):
        r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
        return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
    print("keyctl", call(250, 0, -3, 0))            # KEYCTL_GET_KEYRING_ID
    print("keyctl_x32", call(0x40000000 | 250, 0, -3, 0))
    print("unshare_user", call(272, 0x10000000))
    print("personality", call(135, 0x0040000))
    print("personality_query", call(135, 0xffffffff))
    print("clone3", call(435, 0, 0))
    print("ioctl_tiocsti", call(16, 0, 0x5412, 0))
    print("getpid", call(39))
    with open("/proc/self/status") as f:
        print("seccomp", [l.split()[1] for l in f if l.startswith("Seccomp:")][0])
""")


def test_filter_installs_and_denies_in_a_subprocess(default_bpf: bytes, tmp_path: Path) -> None:
    """Install the real program in a throw-away process; only harmless calls are made."""
    program = tmp_path / "filter.bpf"
    program.write_bytes(default_bpf)
    out = subprocess.run([sys.executable, "-c", _INSTALL_AND_TRY, str(program)], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert seen == {"keyctl": "EPERM", "keyctl_x32": "EPERM", "unshare_user": "EPERM", "personality": "EPERM",
                    "personality_query": "ok", "clone3": "ENOSYS", "ioctl_tiocsti": "EPERM", "getpid": "ok",
                    "seccomp": "2"}


# ------------------------------------------------------------------ container tests: the probe


@pytest.fixture(scope="session")
def probe_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "probe"
    subprocess.run(["cc", "-static", "-O2", "-Wall", "-o", str(out), str(HERE / "probe.c")], check=True)
    return out


@pytest.fixture(scope="session")
def probe_rootfs(tmp_path_factory: pytest.TempPathFactory, probe_binary: Path) -> Path:
    """A busybox rootfs (our own, built here) with /probe in it."""
    root = tmp_path_factory.mktemp("rootfs")
    root.chmod(0o755)  # pytest makes it 0700; a non-root user inside must be able to enter /
    busybox = shutil.which("busybox") or "/bin/busybox"
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "mnt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = root / applet
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nuser:x:1000:\n")
    shutil.copy2(probe_binary, root / "probe")
    return root


@pytest.fixture(scope="session")
def host_marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    marker = tmp_path_factory.mktemp("host-only") / "minibox-host-marker"
    marker.write_text("if you can read this from a container, it escaped\n")
    return marker


@pytest.fixture(scope="module")
def host_process() -> Iterator[int]:
    """A process of ours on the host, for the probe to try to ptrace."""
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def run_probe(rootfs: Path, marker: Path, host_pid: int, *checks: str, **spec_fields: object) -> dict[str, str]:
    argv = ["/probe", str(os.stat("/proc/self/ns/pid").st_ino), str(os.stat("/proc/self/ns/mnt").st_ino),
            str(host_pid), str(marker), *checks]
    spec = Spec(argv=argv, rootfs=str(rootfs), timeout=60, **spec_fields)  # type: ignore[arg-type]
    result = minibox.run(spec)
    text = result.stdout.decode(errors="replace")
    assert result.exit_code == 0, f"probe failed: {result!r}\n{text}\n{result.stderr.decode(errors='replace')}"
    report = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert report.get("done") == "1", text
    return report


@pytest.fixture(scope="module")
def default_report(probe_rootfs: Path, host_marker: Path, host_process: int) -> dict[str, str]:
    return run_probe(probe_rootfs, host_marker, host_process)


def _mask(report: dict[str, str], key: str) -> int:
    return int(report[key], 16)


def test_probe_capability_sets(default_report: dict[str, str]) -> None:
    expected = capabilities.mask_of(capabilities.DEFAULT_CAPABILITIES)
    assert _mask(default_report, "cap_bnd") == expected
    assert _mask(default_report, "cap_eff") == expected
    assert _mask(default_report, "cap_prm") == expected
    assert _mask(default_report, "cap_inh") == 0
    assert _mask(default_report, "cap_amb") == 0
    # python-prctl names the same bits
    names = {name for name in prctl.ALL_CAP_NAMES if name != "last_cap"
             and _mask(default_report, "cap_eff") >> getattr(prctl, "CAP_" + name.upper()) & 1}
    assert names == {n[4:].lower() for n in capabilities.DEFAULT_CAPABILITIES}


def test_probe_no_new_privs_and_seccomp_mode(default_report: dict[str, str]) -> None:
    assert default_report["no_new_privs"] == "1"
    assert default_report["seccomp"] == "2"  # SECCOMP_MODE_FILTER
    assert default_report["uid"] == "0"


@pytest.mark.parametrize("check", [
    "mount_tmpfs", "umount_root", "init_module", "finit_module", "delete_module", "reboot", "kexec_load",
    "keyctl", "add_key", "bpf", "perf_event_open", "userfaultfd", "open_by_handle_at", "iopl",
    "swapoff", "clock_settime", "syslog_read", "io_uring_setup", "personality_no_aslr", "unshare_user",
    "unshare_net", "clone_user", "setns", "tiocsti", "tiocsti_highbits", "tioclinux", "mknod_block",
])
def test_probe_forbidden_action_gets_eperm(default_report: dict[str, str], check: str) -> None:
    assert default_report[check] == "EPERM", f"{check}={default_report[check]}"


def test_probe_32bit_and_x32_entries_are_filtered(default_report: dict[str, str]) -> None:
    assert default_report["keyctl_x32"] == "EPERM"
    # int $0x80 keyctl: EPERM from the filter's i386 branch (or a signal if the
    # kernel was booted without ia32 emulation -- either way the call did not run).
    assert default_report["keyctl_i386"] == "EPERM" or default_report["keyctl_i386"].startswith("signal:")


def test_probe_clone3_falls_back(default_report: dict[str, str]) -> None:
    assert default_report["clone3"] == "ENOSYS"
    assert default_report["personality_query"] == "ok"


def test_probe_cannot_reach_host_processes(default_report: dict[str, str]) -> None:
    assert default_report["host_pid_visible"] == "no" or default_report["ptrace_outside"] != "ok"
    assert default_report["ptrace_outside"] in ("ESRCH", "EPERM")


def test_probe_devices(default_report: dict[str, str]) -> None:
    assert default_report["mknod_block"] == "EPERM"
    assert "open_block" not in default_report
    assert default_report["open_dev_sda"] != "ok"
    assert default_report["open_dev_mem"] != "ok"
    # CAP_MKNOD is not a default capability; a char node that exists anyway (cap_add)
    # must never open: the devices cgroup (or a nodev mount) refuses host devices
    assert default_report.get("open_mem_node", "EPERM") != "ok"
    assert default_report["open_tty1_node"] != "ok"
    assert default_report["open_kvm_node"] != "ok"


def test_probe_proc_is_masked(default_report: dict[str, str]) -> None:
    # ENOENT: kernels without CONFIG_PROC_KCORE / CONFIG_MAGIC_SYSRQ (this host's) have no such files
    assert default_report["kcore_bytes"] in ("0", "EPERM", "EACCES", "ENOENT")
    assert default_report["sysrq_open_write"] in ("EROFS", "EACCES", "EPERM", "ENOENT")
    assert default_report["proc_sys_open_write"] in ("EROFS", "EACCES", "EPERM")
    assert default_report["proc_keys_bytes"] in ("0", "EPERM", "EACCES", "ENOENT")


def test_probe_chroot_escape_stays_inside(default_report: dict[str, str]) -> None:
    assert default_report["chroot_escape"] == "contained"
    assert default_report["marker_visible"] == "no"


def test_probe_default_capabilities_still_work(default_report: dict[str, str]) -> None:
    assert default_report["chown"] == "ok"
    assert default_report["bind_port_80"] == "ok"
    assert default_report["fork"] == "ok"
    assert default_report["ptrace_sibling"] == "ok"  # Docker allows ptrace inside on kernels >= 4.8


def test_probe_cap_drop_and_add(probe_rootfs: Path, host_marker: Path, host_process: int) -> None:
    report = run_probe(probe_rootfs, host_marker, host_process, "status", "allowed",
                       cap_drop=["CHOWN", "net_bind_service"], cap_add=["NET_ADMIN"])
    eff = _mask(report, "cap_eff")
    assert eff >> prctl.CAP_NET_ADMIN & 1
    assert not eff >> prctl.CAP_CHOWN & 1
    assert report["chown"] == "EPERM"
    assert report["bind_port_80"] == "EACCES"


def test_probe_non_root_user(probe_rootfs: Path, host_marker: Path, host_process: int) -> None:
    report = run_probe(probe_rootfs, host_marker, host_process, "status", "keys", user=(1000, 1000))
    assert report["uid"] == "1000"
    assert _mask(report, "cap_bnd") == capabilities.mask_of(capabilities.DEFAULT_CAPABILITIES)
    for key in ("cap_eff", "cap_prm", "cap_inh", "cap_amb"):
        assert _mask(report, key) == 0, key
    assert report["no_new_privs"] == "1"
    assert report["keyctl"] == "EPERM"


def test_probe_rlimits(probe_rootfs: Path, host_marker: Path, host_process: int) -> None:
    report = run_probe(probe_rootfs, host_marker, host_process, "rlimits",
                       rlimits={"RLIMIT_NOFILE": (64, 128), "core": 0})
    assert report["rlimit_nofile"] == "64:128"
    assert report["rlimit_core"] == "0:0"


def test_probe_unconfined_and_nnp_off(probe_rootfs: Path, host_marker: Path, host_process: int) -> None:
    # Capabilities stay dropped: the probe's checks remain harmless.
    report = run_probe(probe_rootfs, host_marker, host_process, "status", "bpf",
                       seccomp="unconfined", no_new_privileges=False)
    assert report["seccomp"] == "0"
    assert report["no_new_privs"] == "0"
    assert report["bpf"] != "ok"  # still refused by the kernel: no CAP_SYS_ADMIN / CAP_BPF


def test_probe_oci_profile(probe_rootfs: Path, host_marker: Path, host_process: int) -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}]}
    report = run_probe(probe_rootfs, host_marker, host_process, "status", "keys", seccomp=profile)
    assert report["seccomp"] == "2"
    assert report["keyctl"] == "ENOSYS"
    # only x86_64 was named, so the i386 and x32 entries are killed outright
    assert report["keyctl_i386"].startswith("signal:")  # SIGSYS (or SIGSEGV without ia32 emulation)
    assert report["keyctl_x32"] == "signal:SYS"


def test_bad_capability_is_refused_before_anything_runs(probe_rootfs: Path) -> None:
    with pytest.raises(SpecError) as info:
        minibox.run(Spec(argv=["/bin/true"], rootfs=str(probe_rootfs), cap_add=["CAP_TELEPORT"]))
    assert info.value.field == "cap_add"



# ------------------------------------------------------------------ preflight


def test_preflight_reports_this_host() -> None:
    from minibox import preflight

    report = preflight.check()
    names = [f.name for f in report]
    for expected in ("namespaces", "unprivileged user namespaces", "subordinate ids", "cgroups",
                     "cgroup delegation", "seccomp", "/dev/kvm", "qemu"):
        assert expected in names
    assert report["namespaces"].ok
    assert report["seccomp"].ok
    assert report["qemu"].ok == (shutil.which("qemu-system-x86_64") is not None)
    assert "hybrid" in report["cgroups"].detail or "v2" in report["cgroups"].detail or "v1" in report["cgroups"].detail
    text = report.format()
    assert len(text.splitlines()) == len(report.findings)
    assert all(line[:2] in ("ok", "NO") for line in text.splitlines())


def test_preflight_subordinate_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from minibox import preflight

    real_read = preflight._read
    files = {"/etc/subuid": "alice:100000:65536\n4242:200000:65536\n", "/etc/subgid": "4242:200000:65536\n"}
    monkeypatch.setattr(preflight, "_read", lambda path: files.get(path, real_read(path)))
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    found = preflight.check_subordinate_ids(4242)
    assert found.ok and "200000+65536" in found.detail
    missing = preflight.check_subordinate_ids(4343)
    assert not missing.ok and "no /etc/subuid entry" in missing.detail


def test_preflight_as_root_does_not_warn_about_subordinate_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root needs no /etc/subuid range: no NO line for it, under sudo the user's state in the detail."""
    from minibox import preflight

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.setattr(preflight, "_read", lambda path: "" if path in ("/etc/subuid", "/etc/subgid") else None)
    monkeypatch.delenv("SUDO_UID", raising=False)
    alone = preflight.check_subordinate_ids()
    assert alone.ok and "not needed as root" in alone.detail
    monkeypatch.setenv("SUDO_UID", "4343")
    under_sudo = preflight.check_subordinate_ids()
    assert under_sudo.ok and "not ready" in under_sudo.detail and "no /etc/subuid entry" in under_sudo.detail
    assert not preflight.check_subordinate_ids(4343).ok  # asked about that user: still a NO
