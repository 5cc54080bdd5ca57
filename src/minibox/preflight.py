"""Preflight: what this host lets minibox do, and why.

Isolation is built from kernel features that may be compiled out, switched
off by a sysctl, restricted by a security module or simply not delegated to
the calling user.  This module looks -- without changing anything -- and
reports each fact as a :class:`Finding` with a reason in words, so that
``minibox preflight`` can explain a refusal before a sandbox fails half way.

What it checks, and where the kernel documents it:

* namespaces: the entries of ``/proc/self/ns`` (namespaces(7));
* unprivileged user namespaces: ``user.max_user_namespaces``, Debian's
  ``kernel.unprivileged_userns_clone`` and Ubuntu's AppArmor
  ``kernel.apparmor_restrict_unprivileged_userns`` (user_namespaces(7));
* subordinate ids for rootless mode: ``newuidmap``/``newgidmap`` and the
  caller's lines in ``/etc/subuid`` and ``/etc/subgid`` (subuid(5),
  newuidmap(1));
* cgroups: v1, v2 or hybrid, and whether the caller's own cgroup is
  writable, i.e. delegated (cgroups(7), the kernel's cgroup-v2.rst,
  "Delegation");
* seccomp: kernel support and the libseccomp that compiles minibox's
  filters (seccomp(2));
* the VM path: ``/dev/kvm`` present and accessible (whether KVM can really
  boot a Linux guest is decided by the VM path's own probe, not here), and
  ``qemu-system-x86_64``.

``check()`` returns a :class:`Report`; ``Report.format()`` is the text the
CLI prints.
"""

from __future__ import annotations

import ctypes.util
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

from .spec import NAMESPACES


@dataclass(frozen=True)
class Finding:
    """One fact about the host: ``ok`` says whether it helps minibox, ``detail`` why."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Report:
    """Every finding of one :func:`check` run, in a fixed order."""

    findings: tuple[Finding, ...] = field(default_factory=tuple)

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.findings)

    def __getitem__(self, name: str) -> Finding:
        for finding in self.findings:
            if finding.name == name:
                return finding
        raise KeyError(name)

    @property
    def ok(self) -> bool:
        """True when every finding is ok."""
        return all(f.ok for f in self.findings)

    def format(self) -> str:
        """Human-readable text: one line per finding, ``ok`` or ``NO``, the name, the reason."""
        width = max((len(f.name) for f in self.findings), default=0)
        lines = [f"{'ok' if f.ok else 'NO':>2}  {f.name:<{width}}  {f.detail}" for f in self.findings]
        return "\n".join(lines)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


# ---------------------------------------------------------------- the checks


def check_namespaces() -> Finding:
    try:
        present = set(os.listdir("/proc/self/ns"))
    except OSError as e:
        return Finding("namespaces", False, f"cannot list /proc/self/ns: {e.strerror}")
    # /proc/self/ns uses the same short names as Spec.namespaces
    missing = [ns for ns in NAMESPACES if ns not in present]
    available = [ns for ns in NAMESPACES if ns not in missing]
    if missing:
        return Finding("namespaces", False,
                       f"available: {', '.join(available)}; missing: {', '.join(missing)} (kernel built without them)")
    return Finding("namespaces", True, f"all available: {', '.join(available)}")


def check_user_namespaces() -> Finding:
    """Can an *unprivileged* user create a user namespace (the basis of rootless mode)?"""
    reasons: list[str] = []
    max_userns = _read("/proc/sys/user/max_user_namespaces")
    if max_userns is not None and max_userns.isdigit() and int(max_userns) == 0:
        reasons.append("user.max_user_namespaces is 0")
    debian = _read("/proc/sys/kernel/unprivileged_userns_clone")
    if debian == "0":
        reasons.append("kernel.unprivileged_userns_clone is 0 (Debian switch)")
    apparmor = _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    if apparmor == "1":
        reasons.append("AppArmor restricts them (kernel.apparmor_restrict_unprivileged_userns=1): "
                       "unconfined programs get a namespace without capabilities")
    if not os.path.exists("/proc/self/ns/user"):
        reasons.append("the kernel has no user namespaces")
    unshare = shutil.which("unshare")
    if not reasons and os.geteuid() != 0 and unshare:
        # Not root: simply try (util-linux unshare(1)), which also catches LSM refusals.
        try:
            tried = subprocess.run([unshare, "--user", "true"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as e:
            reasons.append(f"trying 'unshare --user true' failed: {e}")
        else:
            if tried.returncode != 0:
                reasons.append(f"'unshare --user true' was refused: {tried.stderr.strip() or tried.returncode}")
    if reasons:
        return Finding("unprivileged user namespaces", False, "; ".join(reasons))
    detail = "allowed"
    if max_userns is not None:
        detail += f" (user.max_user_namespaces={max_userns}"
        detail += f", kernel.unprivileged_userns_clone={debian})" if debian is not None else ")"
    return Finding("unprivileged user namespaces", True, detail)


def _subid_ranges(path: str, uid: int, name: str | None) -> list[tuple[int, int]]:
    text = _read(path)
    ranges: list[tuple[int, int]] = []
    for line in (text or "").splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (str(uid), name):
            continue
        try:
            ranges.append((int(parts[1]), int(parts[2])))
        except ValueError:
            continue
    return ranges


def check_subordinate_ids(uid: int | None = None) -> Finding:
    """newuidmap/newgidmap and /etc/subuid, /etc/subgid ranges for the (invoking) user.

    Only rootless mode needs them: root writes any uid_map itself
    (user_namespaces(7), "Defining user and group ID mappings").  So when
    root asks about itself, a missing range is no problem and is not
    reported as one; under sudo the detail still says what the invoking
    user would have for rootless use.
    """
    as_root = uid is None and os.geteuid() == 0
    if uid is None:
        sudo_uid = os.environ.get("SUDO_UID")
        uid = int(sudo_uid) if os.geteuid() == 0 and sudo_uid and sudo_uid.isdigit() else os.getuid()
    if as_root and uid == 0:
        return Finding("subordinate ids", True, "not needed as root (root maps any ids itself); "
                                                "rootless users need /etc/subuid and /etc/subgid ranges")
    found = _subordinate_ids_of(uid)
    if as_root:
        state = "ready" if found.ok else "not ready"
        return Finding("subordinate ids", True, f"not needed as root; for rootless use, {state}: {found.detail}")
    return found


def _subordinate_ids_of(uid: int) -> Finding:
    name = _user_name(uid)
    who = f"{name or 'uid'} ({uid})"
    tools = {tool: shutil.which(tool) for tool in ("newuidmap", "newgidmap")}
    missing_tools = [tool for tool, path in tools.items() if path is None]
    subuid = _subid_ranges("/etc/subuid", uid, name)
    subgid = _subid_ranges("/etc/subgid", uid, name)
    problems: list[str] = []
    if missing_tools:
        problems.append(f"{' and '.join(missing_tools)} not installed (Debian: apt-get install uidmap)")
    if not subuid:
        problems.append(f"no /etc/subuid entry for {who}")
    if not subgid:
        problems.append(f"no /etc/subgid entry for {who}")
    if problems:
        return Finding("subordinate ids", False,
                       "; ".join(problems) + " -- rootless containers map only the user's own id (as root inside)")
    return Finding("subordinate ids", True,
                   f"{who}: subuid {subuid[0][0]}+{subuid[0][1]}, subgid {subgid[0][0]}+{subgid[0][1]}, "
                   f"newuidmap/newgidmap present")


def check_cgroups() -> list[Finding]:
    """The cgroup layout, and whether the caller's own cgroups are writable (delegated)."""
    from .container.cgroups import layout as cgroup_layout
    from .errors import PreflightError

    try:
        found = cgroup_layout.detect_layout()
    except PreflightError as e:
        return [Finding("cgroups", False, f"{e}; limits cannot be enforced")]
    own = cgroup_layout.own_cgroups(found.proc_cgroup)
    v1 = {c: h.mountpoint for c, h in found.hierarchies.items()} if found.kind == "v1" else {}
    unified = found.unified.mountpoint if found.unified is not None else None
    v2_controllers = list(found.unified.controllers) if found.unified is not None else []
    if v1 and unified:
        layout = (f"hybrid: v1 controllers {', '.join(sorted(v1))}; cgroup2 at {unified} "
                  f"with {', '.join(v2_controllers) or 'no controllers'}")
    elif v1:
        layout = f"v1 only: {', '.join(sorted(v1))}"
    else:
        layout = f"v2 (unified) at {unified}: {', '.join(v2_controllers) or 'no controllers'}"
    findings = [Finding("cgroups", True, layout)]

    # Delegation: can we create a child cgroup where our process lives?
    wanted = ("memory", "pids", "cpu")
    writable: list[str] = []
    refused: list[str] = []
    if v1:
        for controller in wanted:
            mount = v1.get(controller)
            if mount is None:
                continue
            path = os.path.join(mount, own.get(controller, "/").lstrip("/"))
            (writable if os.access(path, os.W_OK) else refused).append(f"{controller} ({path})")
    elif unified:
        path = os.path.join(unified, own.get("", "/").lstrip("/"))
        subtree = (_read(os.path.join(path, "cgroup.controllers")) or "").split()
        if os.access(path, os.W_OK):
            writable.append(f"{path} [{' '.join(subtree) or 'no controllers'}]")
        else:
            refused.append(path)
    if refused:
        findings.append(Finding("cgroup delegation", False,
                                f"not writable by uid {os.geteuid()}: {', '.join(refused)}; limits needing them "
                                f"fail with a clear error (ask systemd for a delegated scope: "
                                f"systemd-run --user --scope -p Delegate=yes)"))
    else:
        findings.append(Finding("cgroup delegation", bool(writable),
                                f"writable: {', '.join(writable)}" if writable else "no usable controller found"))
    return findings


def check_seccomp() -> Finding:
    status = _read("/proc/self/status") or ""
    if "Seccomp:" not in status:
        return Finding("seccomp", False, "the kernel has no seccomp (CONFIG_SECCOMP off); filters cannot be used")
    actions = (_read("/proc/sys/kernel/seccomp/actions_avail") or "").split()
    library = ctypes.util.find_library("seccomp")
    try:
        from . import _native

        compiled = bool(_native.lib.seccomp_arch_native())
    except Exception as e:  # the C core may not be built
        return Finding("seccomp", False, f"kernel supports filters, but minibox's C core with libseccomp "
                                         f"is unavailable: {e}")
    if "kill_process" not in actions and actions:
        return Finding("seccomp", False, f"kernel lacks SECCOMP_RET_KILL_PROCESS (has: {' '.join(actions)})")
    return Finding("seccomp", compiled,
                   f"kernel filters ({' '.join(actions) or 'actions unknown'}); libseccomp {library or 'linked'}")


def check_kvm() -> Finding:
    path = "/dev/kvm"
    if not os.path.exists(path):
        return Finding("/dev/kvm", False, "absent: VMs run under TCG (software emulation, slower)")
    if not os.access(path, os.R_OK | os.W_OK):
        return Finding("/dev/kvm", False, f"present but not read/writable by uid {os.geteuid()} "
                                          f"(add the user to group 'kvm'); VMs fall back to TCG")
    return Finding("/dev/kvm", True, "present and accessible (whether it boots a Linux guest is "
                                     "probed by the VM path on first use)")


def check_qemu() -> Finding:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return Finding("qemu", False, "qemu-system-x86_64 not found; isolation='vm' is unavailable "
                                      "(Debian: apt-get install qemu-system-x86)")
    return Finding("qemu", True, qemu)


def check_ip_forwarding() -> Finding:
    """Whether the host routes between its interfaces (``net.ipv4.ip_forward``); see docs/networking.md."""
    value = (_read("/proc/sys/net/ipv4/ip_forward") or "").strip()
    if value == "0":
        return Finding("ip forwarding", True, "off: nothing is routed off the minibox bridge")
    # Still ok: every bridge port's forward rules (network/guard.py) drop what would be routed.
    return Finding("ip forwarding", True, f"on (ip_forward={value or '?'}): the host routes between its "
                                          "interfaces; minibox's forward rules keep bridged sandboxes' "
                                          "traffic on the bridge")


def check_privileges() -> Finding:
    if os.geteuid() == 0:
        return Finding("privileges", True, "running as root: full containers (cgroups, bridge networking)")
    return Finding("privileges", True, f"running as uid {os.geteuid()}: rootless mode through a user namespace")


def check() -> Report:
    """Look at this host and report what minibox can do here, and why."""
    findings: list[Finding] = [check_privileges(), check_namespaces(), check_user_namespaces(),
                               check_subordinate_ids()]
    findings.extend(check_cgroups())
    findings.extend([check_seccomp(), check_kvm(), check_qemu(), check_ip_forwarding()])
    return Report(tuple(findings))


__all__ = ["Finding", "Report", "check"]
