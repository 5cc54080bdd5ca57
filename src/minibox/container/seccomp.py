"""Seccomp: a filter on the system calls a container may make.

A process that installs a seccomp filter (seccomp(2), ``SECCOMP_SET_MODE_FILTER``)
hands the kernel a small classic-BPF program.  On every system call the
kernel runs it over ``struct seccomp_data`` -- the architecture (``arch``),
the syscall number (``nr``) and the six raw arguments -- and obeys the
verdict: allow, fail with an errno, kill, trap...  Filters are inherited
across fork and execve and can never be removed, only stacked, and
installing one without ``CAP_SYS_ADMIN`` requires ``PR_SET_NO_NEW_PRIVS``
(prctl(2)), which is why the child sets no_new_privs first.

This module *compiles* the filter in the parent, with libseccomp (reached
through ``minibox._native``), and returns the raw program: ``struct
sock_filter`` instructions, 8 bytes each.  The C child installs it as its
very last step before execve (``MB_STEP_SECCOMP``).

What the default profile does (``Spec.seccomp="default"``), and why, is in
docs/hardening.md; in short:

* **a deny list, default allow**: everything not listed is allowed, the
  listed calls fail with ``EPERM`` -- the calls Docker's default profile
  leaves out, with the same capability exceptions (``mount`` is allowed when
  ``CAP_SYS_ADMIN`` was added, ``reboot`` with ``CAP_SYS_BOOT``...);
* **architecture check**: the program first compares ``seccomp_data.arch``.
  The native ABI and its compat ABIs are each filtered with the same list:
  on x86_64 that is x86_64, i386 (``int $0x80`` and ``sysenter``, whose
  numbers differ: ``kexec_load`` is 246 on x86_64 and 283 on i386) and x32
  (x86_64's ILP32 ABI: same ``AUDIT_ARCH_X86_64`` but numbers with bit
  ``0x40000000`` set).  Keeping x32 (as Docker does) rather than killing it
  means libseccomp filters x32 numbers by name like the others; no x32
  number can slip past the x86_64 table because libseccomp splits the two on
  that bit.  Any other architecture is killed (``SCMP_ACT_KILL_PROCESS``);
* **argument filters** where the name alone is too coarse: ``clone`` and
  ``unshare`` with a ``CLONE_NEW*`` flag, ``ioctl`` with ``TIOCSTI`` or
  ``TIOCLINUX`` (only the low 32 bits of the command are compared, as the
  kernel does, so setting high bits cannot dodge the rule), ``mknod`` of a
  block device (stricter than Docker, which leaves that to the devices
  cgroup), ``personality``
  other than the values Docker allows.  ``clone3`` fails with ``ENOSYS``:
  its flags sit in memory a filter cannot read, and ENOSYS makes glibc fall
  back to ``clone``, whose flags it can.

``Spec.seccomp`` may also be ``"unconfined"`` (no filter) or a profile in the
OCI ``linux.seccomp`` shape, translated with runc's conventions.

Man pages: seccomp(2), seccomp_rule_add(3), seccomp_export_bpf(3),
prctl(2) (PR_SET_NO_NEW_PRIVS), syscall(2).  Spec: OCI runtime-spec
config-linux.md, "Seccomp".
"""

from __future__ import annotations

import errno as _errno
import functools
import os
import platform
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import SpecError
from .capabilities import normalize_name

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from typing import Any

#: struct sock_filter is {u16 code; u8 jt; u8 jf; u32 k}: 8 bytes.
SOCK_FILTER_SIZE = 8
#: The kernel's BPF_MAXINSNS.
MAX_INSTRUCTIONS = 4096

# Raw action values (linux/seccomp.h); ERRNO and TRACE carry 16 bits of data.
ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_ERRNO_BASE = 0x00050000
ACT_TRACE_BASE = 0x7FF00000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000

# libseccomp comparison operators (enum scmp_compare).
CMP_NE, CMP_LT, CMP_LE, CMP_EQ, CMP_GE, CMP_GT, CMP_MASKED_EQ = 1, 2, 3, 4, 5, 6, 7
_OPS = {
    "SCMP_CMP_NE": CMP_NE, "SCMP_CMP_LT": CMP_LT, "SCMP_CMP_LE": CMP_LE, "SCMP_CMP_EQ": CMP_EQ,
    "SCMP_CMP_GE": CMP_GE, "SCMP_CMP_GT": CMP_GT, "SCMP_CMP_MASKED_EQ": CMP_MASKED_EQ,
}

# Values the default profile's argument filters use.
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC,
                   CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET)
TIOCSTI = 0x5412
S_IFMT = 0o170000
S_IFBLK = 0o060000
TIOCLINUX = 0x541C
#: personality(2) values Docker allows: PER_LINUX, PER_LINUX32, UNAME26,
#: UNAME26|PER_LINUX32, and 0xffffffff (query the current personality).
ALLOWED_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
#: x32 system call numbers are the x86_64 ones with this bit set.
X32_SYSCALL_BIT = 0x40000000


def act_errno(err: int) -> int:
    """``SCMP_ACT_ERRNO(err)``: fail the call with ``err`` (a C macro, so computed here)."""
    return ACT_ERRNO_BASE | (err & 0xFFFF)


def act_trace(msg: int) -> int:
    """``SCMP_ACT_TRACE(msg)``: notify a ptrace tracer (ENOSYS when there is none)."""
    return ACT_TRACE_BASE | (msg & 0xFFFF)


@dataclass(frozen=True)
class Cond:
    """One argument comparison (``struct scmp_arg_cmp``): ``args[index] op a`` (``& a == b`` for MASKED_EQ)."""

    index: int
    op: int
    a: int
    b: int = 0


@dataclass(frozen=True)
class Rule:
    """``action`` for the calls ``names`` when every one of ``conds`` holds (at most one per argument)."""

    names: tuple[str, ...]
    action: int
    conds: tuple[Cond, ...] = ()
    #: True: a name libseccomp does not know is a SpecError; False: it is skipped.
    strict: bool = True


@dataclass(frozen=True)
class Profile:
    """A whole filter before compilation: default action, architectures, rules (first match wins per call)."""

    default_action: int
    arches: tuple[int, ...]
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Denial:
    """One entry of the default profile's deny list, with the reason docs/hardening.md prints."""

    names: tuple[str, ...]
    reason: str
    #: Any of these capabilities in the container's set lifts the denial (Docker's "includes.caps").
    unless_caps: tuple[str, ...] = ()
    err: int = _errno.EPERM


# The deny list.  Each reason is one sentence; docs/hardening.md is generated from the same words.
DENIED: tuple[Denial, ...] = (
    Denial(("kexec_load", "kexec_file_load"),
           "Loads a new kernel to boot into, replacing the host's kernel."),
    Denial(("init_module", "finit_module", "delete_module"),
           "Loads or unloads kernel modules: arbitrary code in the host kernel.", ("CAP_SYS_MODULE",)),
    Denial(("create_module", "get_kernel_syms", "query_module"),
           "The pre-2.6 module interface; gone from the kernel, refused to be safe on old ones."),
    Denial(("reboot",),
           "Reboots or halts the machine (in a pid namespace, with CAP_SYS_BOOT, it only ends the container).",
           ("CAP_SYS_BOOT",)),
    Denial(("mount", "umount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick",
            "move_mount", "open_tree", "mount_setattr"),
           "Changes the mount table: could uncover host paths or undo read-only and masked paths.",
           ("CAP_SYS_ADMIN",)),
    Denial(("swapon", "swapoff"),
           "Swap is host-wide: adding or removing it changes every process's memory.", ("CAP_SYS_ADMIN",)),
    Denial(("keyctl", "add_key", "request_key"),
           "The kernel keyring is not namespaced: a container could read or fill keys of the host and of others."),
    Denial(("bpf",),
           "Loads eBPF programs into the kernel: can read kernel memory and is a large attack surface.",
           ("CAP_SYS_ADMIN", "CAP_BPF")),
    Denial(("perf_event_open",),
           "Performance monitoring can observe other processes and the kernel, and has a record of bugs.",
           ("CAP_SYS_ADMIN", "CAP_PERFMON")),
    Denial(("userfaultfd",),
           "Lets a process stall kernel page faults at will, the classic tool to win kernel race conditions."),
    Denial(("io_uring_setup", "io_uring_enter", "io_uring_register"),
           "A large, fast-moving kernel interface with a record of privilege escalations (Docker >= 25 blocks it)."),
    Denial(("open_by_handle_at",),
           "Opens files by handle, bypassing path lookup: the 'shocker' escape from a container.",
           ("CAP_DAC_READ_SEARCH",)),
    Denial(("name_to_handle_at",),
           "The other half of open_by_handle_at: leaks file handles usable outside the container.",
           ("CAP_SYS_ADMIN",)),
    Denial(("iopl", "ioperm"),
           "Direct access to hardware I/O ports.", ("CAP_SYS_RAWIO",)),
    Denial(("acct",),
           "Process accounting is host-wide: it would switch accounting of every process on or off.",
           ("CAP_SYS_PACCT",)),
    Denial(("settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64"),
           "The clock is not namespaced: setting it changes the host's time.", ("CAP_SYS_TIME",)),
    Denial(("setns",),
           "Joins another namespace, the opposite of isolation.", ("CAP_SYS_ADMIN",)),
    Denial(("quotactl", "quotactl_fd"),
           "Disk quotas are per file system, shared with the host.", ("CAP_SYS_ADMIN",)),
    Denial(("lookup_dcookie",),
           "A profiling interface that reveals kernel paths.", ("CAP_SYS_ADMIN",)),
    Denial(("fanotify_init",),
           "Watches file access system-wide.", ("CAP_SYS_ADMIN",)),
    Denial(("syslog",),
           "The kernel log is not namespaced and leaks kernel addresses.", ("CAP_SYSLOG",)),
    Denial(("vhangup",),
           "Hangs up the current terminal, which may be the caller's.", ("CAP_SYS_TTY_CONFIG",)),
    Denial(("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev"),
           "Inspects or changes another process's memory or files.", ("CAP_SYS_PTRACE",)),
    Denial(("get_mempolicy", "set_mempolicy", "mbind", "move_pages", "migrate_pages"),
           "NUMA memory placement affects the whole host's memory.", ("CAP_SYS_NICE",)),
    Denial(("nfsservctl", "uselib", "ustat", "sysfs", "_sysctl", "vm86", "vm86old"),
           "Obsolete interfaces (removed or legacy) kept only by old kernels; nothing needs them, bugs remain."),
)

# Denials with argument filters; reasons for docs/hardening.md.
ARGUMENT_DENIALS: tuple[tuple[str, str], ...] = (
    ("clone, unshare with CLONE_NEW*",
     "Creating namespaces (a user namespace above all) hands the container a fresh root with every "
     "capability inside it, the door to most kernel exploits; allowed with CAP_SYS_ADMIN, as in Docker."),
    ("clone3 (ENOSYS)",
     "Its flags live in memory a filter cannot read, so it cannot be checked like clone; ENOSYS makes "
     "glibc fall back to clone."),
    ("ioctl TIOCSTI, TIOCLINUX",
     "TIOCSTI pushes characters into a terminal's input queue -- typed as the user if the terminal is the "
     "caller's; TIOCLINUX can do the same through the console's selection buffer."),
    ("mknod, mknodat of a block device",
     "Stricter than Docker (which relies on the devices cgroup): a block device node on a writable "
     "rootfs would give raw access to a host disk, and no container workload needs one."),
    ("personality other than 0, 8, 0x20000, 0x20008, 0xffffffff",
     "Other execution domains can turn off address-space randomisation (ADDR_NO_RANDOMIZE) or make "
     "data executable (READ_IMPLIES_EXEC)."),
    ("ptrace (only on kernels before 4.8)",
     "Before 4.8 a traced process could skip the seccomp filter; on newer kernels ptrace is allowed as "
     "in Docker, and the pid namespace plus the missing CAP_SYS_PTRACE keep it inside the container."),
)


def _kernel_version() -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", platform.release())
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _native() -> Any:
    """``(ffi, lib)`` of the C core, imported on first use so the rest of this module needs no build."""
    from .. import _native

    return _native


def native_arches() -> tuple[int, ...]:
    """libseccomp arch tokens the default filter covers: the native ABI and its compat ABIs."""
    lib = _native().lib
    native = int(lib.seccomp_arch_native())
    subs = {
        int(lib.SCMP_ARCH_X86_64): (int(lib.SCMP_ARCH_X86), int(lib.SCMP_ARCH_X32)),
        int(lib.SCMP_ARCH_AARCH64): (int(lib.SCMP_ARCH_ARM),),
    }
    return (native, *subs.get(native, ()))


def default_profile(caps: frozenset[str]) -> Profile:
    """The default profile (see the module docstring) for a container keeping ``caps``."""
    caps = frozenset(normalize_name(c, "cap_add") for c in caps)
    eperm = act_errno(_errno.EPERM)
    rules: list[Rule] = []
    for denial in DENIED:
        if denial.unless_caps and caps & set(denial.unless_caps):
            continue
        # Names absent from this libseccomp (very new calls) are skipped: kernels it
        # does not know cannot be handled by it either, and Docker does the same.
        rules.append(Rule(denial.names, act_errno(denial.err), strict=False))
    if "CAP_SYS_ADMIN" not in caps:
        # clone(flags, ...) and unshare(flags): flags is argument 0 on x86 and arm.
        for flag in NAMESPACE_FLAGS:
            cond = (Cond(0, CMP_MASKED_EQ, flag, flag),)
            rules.append(Rule(("clone",), eperm, cond))
            rules.append(Rule(("unshare",), eperm, cond))
        rules.append(Rule(("clone3",), act_errno(_errno.ENOSYS), strict=False))
    if _kernel_version() < (4, 8) and "CAP_SYS_PTRACE" not in caps:
        rules.append(Rule(("ptrace",), eperm))
    for cmd in (TIOCSTI, TIOCLINUX):
        rules.append(Rule(("ioctl",), eperm, (Cond(1, CMP_MASKED_EQ, 0xFFFFFFFF, cmd),)))
    # mknod(path, mode, dev) and mknodat(dirfd, path, mode, dev) of a block device.
    rules.append(Rule(("mknod",), eperm, (Cond(1, CMP_MASKED_EQ, S_IFMT, S_IFBLK),)))
    rules.append(Rule(("mknodat",), eperm, (Cond(2, CMP_MASKED_EQ, S_IFMT, S_IFBLK),)))
    rules.extend(_personality_rules(eperm))
    return Profile(default_action=ACT_ALLOW, arches=native_arches(), rules=tuple(rules))


def _personality_rules(action: int) -> list[Rule]:
    """Deny personality(p) unless p is one of :data:`ALLOWED_PERSONALITIES`.

    libseccomp accepts one comparison per argument in a rule, and rules are
    ORed, so "p not in the set" is spelled as a union of masked patterns,
    each disjoint from the allowed set (the kernel reads p as a 32-bit int):

    * bit 31 clear and some bit b outside {3, 17} set -- not 0/8/0x20000/0x20008;
    * bit 31 set and some bit c in 0..30 clear -- not 0xffffffff.
    """
    rules: list[Rule] = []
    top = 1 << 31
    for bit in range(31):
        if bit in (3, 17):
            continue
        rules.append(Rule(("personality",), action, (Cond(0, CMP_MASKED_EQ, top | 1 << bit, 1 << bit),)))
    for bit in range(31):
        rules.append(Rule(("personality",), action, (Cond(0, CMP_MASKED_EQ, top | 1 << bit, top),)))
    return rules


# ---------------------------------------------------------------- OCI translation

_ACTIONS = {
    "SCMP_ACT_KILL": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": ACT_TRAP,
    "SCMP_ACT_ERRNO": ACT_ERRNO_BASE,
    "SCMP_ACT_TRACE": ACT_TRACE_BASE,
    "SCMP_ACT_LOG": ACT_LOG,
    "SCMP_ACT_ALLOW": ACT_ALLOW,
}
_PERMISSIVE = (ACT_ALLOW, ACT_LOG)
_TOP_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "flags", "syscalls",
             "listenerPath", "listenerMetadata"}
_CALL_KEYS = {"names", "name", "action", "errnoRet", "args", "comment"}
_ARG_KEYS = {"index", "value", "valueTwo", "op"}


def _u64(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise SpecError("seccomp", f"{where}: expected an unsigned 64-bit integer, got {value!r}")
    return value


def _action(name: object, errno_ret: object, where: str) -> int:
    if name == "SCMP_ACT_NOTIFY":
        raise SpecError("seccomp", f"{where}: SCMP_ACT_NOTIFY needs a seccomp agent; minibox has none")
    if not isinstance(name, str) or name not in _ACTIONS:
        raise SpecError("seccomp", f"{where}: unknown action {name!r}; use one of {', '.join(_ACTIONS)}")
    base = _ACTIONS[name]
    if base in (ACT_ERRNO_BASE, ACT_TRACE_BASE):
        data = _errno.EPERM if errno_ret is None else errno_ret
        if isinstance(data, bool) or not isinstance(data, int) or not 0 <= data <= 0xFFFF:
            raise SpecError("seccomp", f"{where}: errnoRet must be an int 0..65535, got {data!r}")
        return base | data
    if errno_ret is not None:
        raise SpecError("seccomp", f"{where}: errnoRet applies to SCMP_ACT_ERRNO and SCMP_ACT_TRACE only")
    return base


def _arch_token(name: object, where: str) -> int:
    lib = _native().lib
    if not isinstance(name, str) or not name.startswith("SCMP_ARCH_"):
        raise SpecError("seccomp", f"{where}: expected an architecture like 'SCMP_ARCH_X86_64', got {name!r}")
    token = int(lib.seccomp_arch_resolve_name(name[len("SCMP_ARCH_"):].lower().encode()))
    if token == 0:
        raise SpecError("seccomp", f"{where}: libseccomp does not know architecture {name!r}")
    return token


def translate_oci(profile: Mapping[str, Any]) -> Profile:
    """An OCI ``linux.seccomp`` mapping -> :class:`Profile`, with runc's conventions.

    * ``architectures`` are added to the native one (which is always
      filtered); any other architecture is killed.
    * Several ``args`` on the *same* index are ORed (one rule each), as runc
      and Docker's profiles assume; args on different indexes are ANDed.
    * A rule whose action equals the default action is dropped (it would
      change nothing; libseccomp refuses it).
    * A syscall name libseccomp does not know is an error when the rule is
      stricter than an allowing default (skipping it would silently allow
      the call); otherwise it is skipped with a warning, as runc does, since
      profiles list calls of kernels newer than this one.
    """
    if not isinstance(profile, Mapping):
        raise SpecError("seccomp", "expected 'default', 'unconfined' or an OCI linux.seccomp mapping")
    unknown = set(profile) - _TOP_KEYS
    if unknown:
        hint = " ('archMap' is Docker's format, not OCI: list 'architectures')" if "archMap" in unknown else ""
        raise SpecError("seccomp", f"unknown key(s) {', '.join(sorted(map(str, unknown)))}{hint}")
    if "defaultAction" not in profile:
        raise SpecError("seccomp", "defaultAction is required (e.g. 'SCMP_ACT_ERRNO')")
    if profile.get("listenerPath"):
        raise SpecError("seccomp", "listenerPath (SCMP_ACT_NOTIFY agents) is not supported")
    if profile.get("flags"):
        raise SpecError("seccomp", f"flags {profile['flags']!r} are not supported; remove them")
    default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"), "defaultAction")
    arches = list(native_arches()[:1])
    raw_arches = profile.get("architectures") or []
    if isinstance(raw_arches, str) or not isinstance(raw_arches, Sequence):
        raise SpecError("seccomp", "architectures: expected a list like ['SCMP_ARCH_X86_64']")
    for i, name in enumerate(raw_arches):
        token = _arch_token(name, f"architectures[{i}]")
        if token not in arches:
            arches.append(token)
    raw_calls = profile.get("syscalls") or []
    if isinstance(raw_calls, (str, Mapping)) or not isinstance(raw_calls, Sequence):
        raise SpecError("seccomp", "syscalls: expected a list of {names, action, args}")
    rules: list[Rule] = []
    for i, call in enumerate(raw_calls):
        where = f"syscalls[{i}]"
        if not isinstance(call, Mapping):
            raise SpecError("seccomp", f"{where}: expected a mapping with names and action")
        extra = set(call) - _CALL_KEYS
        if extra:
            hint = " (Docker's includes/excludes are not OCI)" if extra & {"includes", "excludes"} else ""
            raise SpecError("seccomp", f"{where}: unknown key(s) {', '.join(sorted(map(str, extra)))}{hint}")
        names = call.get("names", [call["name"]] if "name" in call else None)
        if (not names or isinstance(names, str) or not isinstance(names, Sequence)
                or not all(isinstance(n, str) and re.fullmatch(r"[a-z0-9_]+", n) for n in names)):
            raise SpecError("seccomp", f"{where}.names: expected a non-empty list of system call names, got {names!r}")
        if "action" not in call:
            raise SpecError("seccomp", f"{where}: action is required")
        action = _action(call["action"], call.get("errnoRet"), f"{where}.action")
        if action == default:
            continue
        conds: list[Cond] = []
        raw_args = call.get("args") or []
        if isinstance(raw_args, (str, Mapping)) or not isinstance(raw_args, Sequence):
            raise SpecError("seccomp", f"{where}.args: expected a list of {{index, value, valueTwo, op}}")
        for j, arg in enumerate(raw_args):
            awhere = f"{where}.args[{j}]"
            if not isinstance(arg, Mapping):
                raise SpecError("seccomp", f"{awhere}: expected a mapping")
            extra = set(arg) - _ARG_KEYS
            if extra:
                raise SpecError("seccomp", f"{awhere}: unknown key(s) {', '.join(sorted(map(str, extra)))}")
            index = arg.get("index")
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 5:
                raise SpecError("seccomp", f"{awhere}.index: expected 0..5 (system calls have six arguments)")
            op = arg.get("op")
            if op not in _OPS:
                raise SpecError("seccomp", f"{awhere}.op: unknown operator {op!r}; use one of {', '.join(_OPS)}")
            conds.append(Cond(index, _OPS[str(op)], _u64(arg.get("value", 0), f"{awhere}.value"),
                              _u64(arg.get("valueTwo", 0), f"{awhere}.valueTwo")))
        strict = default in _PERMISSIVE and action not in _PERMISSIVE
        indexes = [c.index for c in conds]
        if len(set(indexes)) != len(indexes):
            rules.extend(Rule(tuple(names), action, (c,), strict) for c in conds)
        else:
            rules.append(Rule(tuple(names), action, tuple(conds), strict))
    return Profile(default_action=default, arches=tuple(arches), rules=tuple(rules))


# ---------------------------------------------------------------- compilation

def _check(rc: int, what: str) -> None:
    if rc < 0:
        err = -rc
        raise SpecError("seccomp", f"{what}: {os.strerror(err)}") from OSError(err, os.strerror(err))


def compile_bpf(profile: Profile) -> bytes:
    """Compile ``profile`` with libseccomp; return ``struct sock_filter[]`` as bytes."""
    native = _native()
    ffi, lib = native.ffi, native.lib
    ctx = lib.seccomp_init(profile.default_action)
    if ctx == ffi.NULL:
        raise SpecError("seccomp", f"libseccomp refused default action {profile.default_action:#x}")
    try:
        _check(lib.seccomp_attr_set(ctx, lib.SCMP_FLTATR_ACT_BADARCH, ACT_KILL_PROCESS), "bad-arch action")
        # The C child sets no_new_privs itself (and we only export, never load).
        _check(lib.seccomp_attr_set(ctx, lib.SCMP_FLTATR_CTL_NNP, 0), "no_new_privs attribute")
        for arch in profile.arches:
            if lib.seccomp_arch_exist(ctx, arch) != 0:
                _check(lib.seccomp_arch_add(ctx, arch), f"adding architecture {arch:#x}")
        for rule in profile.rules:
            cmps = ffi.new("struct scmp_arg_cmp[]", max(1, len(rule.conds)))
            for i, cond in enumerate(rule.conds):
                cmps[i].arg = cond.index
                cmps[i].op = cond.op
                cmps[i].datum_a = cond.a
                cmps[i].datum_b = cond.b
            for name in rule.names:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == -1:  # __NR_SCMP_ERROR: no architecture has this name
                    if rule.strict:
                        raise SpecError(
                            "seccomp",
                            f"unknown system call {name!r}: libseccomp cannot resolve it, so it cannot be "
                            f"denied; fix the name or drop the rule",
                        )
                    if profile.default_action not in _PERMISSIVE or rule.action in _PERMISSIVE:
                        warnings.warn(f"seccomp: skipping unknown system call {name!r}", stacklevel=3)
                    continue
                _check(lib.seccomp_rule_add_array(ctx, rule.action, nr, len(rule.conds), cmps),
                       f"rule for {name!r} (action {rule.action:#x})")
        fd = os.memfd_create("minibox-seccomp", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "exporting the BPF program")
            size = os.lseek(fd, 0, os.SEEK_END)
            program = os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    if not program or len(program) % SOCK_FILTER_SIZE:
        raise SpecError("seccomp", f"libseccomp produced a malformed program ({len(program)} bytes)")
    if len(program) // SOCK_FILTER_SIZE > MAX_INSTRUCTIONS:
        raise SpecError("seccomp", f"the profile compiles to {len(program) // SOCK_FILTER_SIZE} instructions; "
                                   f"the kernel accepts at most {MAX_INSTRUCTIONS}")
    return program


@functools.lru_cache(maxsize=32)
def _compile_default(caps: frozenset[str]) -> bytes:
    """The default profile's program for a capability set (see seccomp_cache.py for the disk cache)."""
    return compile_bpf(default_profile(caps))


def compile_profile(spec_seccomp: str | Mapping[str, Any], *, caps: frozenset[str]) -> bytes | None:
    """``Spec.seccomp`` -> the BPF program for ``plan.seccomp_filter`` (None: no filter).

    ``caps`` are the capability names the container keeps
    (``capabilities.capability_set(spec)``): they lift the matching denials
    of the default profile, as in Docker.  The default profile is compiled
    once per capability set and cached.  ``len(result) // 8`` is
    ``plan.seccomp_len``.
    """
    if spec_seccomp == "unconfined":
        return None
    if spec_seccomp == "default":
        return _compile_default(frozenset(normalize_name(c, "cap_add") for c in caps))
    if isinstance(spec_seccomp, Mapping):
        return compile_bpf(translate_oci(spec_seccomp))
    raise SpecError("seccomp", f"unknown profile {spec_seccomp!r}; use 'default', 'unconfined' or a mapping")


def instruction_count(program: bytes | None) -> int:
    """``plan.seccomp_len`` for a program from :func:`compile_profile` (0 = no filter)."""
    return 0 if program is None else len(program) // SOCK_FILTER_SIZE


__all__ = [
    "ACT_ALLOW",
    "ACT_KILL_PROCESS",
    "ALLOWED_PERSONALITIES",
    "ARGUMENT_DENIALS",
    "DENIED",
    "Cond",
    "Denial",
    "Profile",
    "Rule",
    "X32_SYSCALL_BIT",
    "act_errno",
    "compile_bpf",
    "compile_profile",
    "default_profile",
    "instruction_count",
    "native_arches",
    "translate_oci",
]
