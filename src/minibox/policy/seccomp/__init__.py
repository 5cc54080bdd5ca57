"""Seccomp: a filter on the system calls a container may make.

A process that installs a seccomp filter (seccomp(2), ``SECCOMP_SET_MODE_FILTER``)
hands the kernel a small classic-BPF program.  On every system call the
kernel runs it over ``struct seccomp_data`` -- the architecture (``arch``),
the syscall number (``nr``) and the six raw arguments -- and obeys the
verdict: allow, fail with an errno, kill, trap...  Filters are inherited
across fork and execve and can never be removed, only stacked, and
installing one without ``CAP_SYS_ADMIN`` requires ``PR_SET_NO_NEW_PRIVS``
(prctl(2)), which is why the child sets no_new_privs first.

This package *compiles* the filter in the parent, with libseccomp (reached
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

The package is split as the work is: :mod:`.profile` (the policy as data:
the denial table and the default profile), :mod:`.oci` (OCI profile
translation), :mod:`.compile` (libseccomp -> BPF) and :mod:`.cache` (the
default program on disk, so a cached start imports none of the others).
The names of all three are available here too, loaded on first use.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .compile import compile_bpf, compile_profile, instruction_count
    from .oci import translate_oci
    from .profile import (
        ACT_ALLOW,
        ACT_KILL_PROCESS,
        ALLOWED_PERSONALITIES,
        ARGUMENT_DENIALS,
        DENIED,
        X32_SYSCALL_BIT,
        Cond,
        Denial,
        Profile,
        Rule,
        act_errno,
        default_profile,
        native_arches,
    )

__all__ = [
    "ACT_ALLOW",
    "ACT_KILL_PROCESS",
    "ALLOWED_PERSONALITIES",
    "ARGUMENT_DENIALS",
    "DENIED",
    "X32_SYSCALL_BIT",
    "Cond",
    "Denial",
    "Profile",
    "Rule",
    "act_errno",
    "compile_bpf",
    "compile_profile",
    "default_profile",
    "instruction_count",
    "native_arches",
    "translate_oci",
]


def __getattr__(name: str) -> object:
    """Load the submodule that defines ``name`` on first use (PEP 562), keeping
    ``import minibox.policy.seccomp.cache`` free of the compiler."""
    from importlib import import_module

    for module in ("profile", "oci", "compile"):
        loaded = import_module(f"{__name__}.{module}")
        if hasattr(loaded, name):
            return getattr(loaded, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
