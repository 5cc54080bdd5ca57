"""The seccomp policy: what the default profile denies, and why, as data.

This is the *policy* part of minibox's seccomp support (see the package
docstring for the whole picture): the raw action values, the rule shapes
(:class:`Rule`, :class:`Cond`, :class:`Profile`), the table of denied system
calls with the reason for each (:data:`DENIED`), and
:func:`default_profile`, which turns the table into a :class:`Profile` for a
given capability set.  :mod:`.oci` translates OCI profiles into the same
shape; :mod:`.compile` turns a Profile into BPF; :mod:`.cache` keeps the
default program on disk.

Man pages: seccomp(2), seccomp_rule_add(3).  Spec: OCI runtime-spec
config-linux.md, "Seccomp".
"""

from __future__ import annotations

import errno as _errno
import platform
import re
from dataclasses import dataclass

from ..capabilities import normalize_name

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
OPS = {
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


def native() -> Any:
    """``(ffi, lib)`` of the C core, imported on first use so the rest of this module needs no build."""
    from ... import _native

    return _native


def native_arches() -> tuple[int, ...]:
    """libseccomp arch tokens the default filter covers: the native ABI and its compat ABIs."""
    lib = native().lib
    own = int(lib.seccomp_arch_native())
    subs = {
        int(lib.SCMP_ARCH_X86_64): (int(lib.SCMP_ARCH_X86), int(lib.SCMP_ARCH_X32)),
        int(lib.SCMP_ARCH_AARCH64): (int(lib.SCMP_ARCH_ARM),),
    }
    return (own, *subs.get(own, ()))


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
