"""Choosing the accelerator: KVM when it really works, TCG otherwise.

KVM (Documentation/virt/kvm/api.rst) runs guest code on the CPU; TCG,
QEMU's Tiny Code Generator, translates it, ten to fifty times slower.  A
``/dev/kvm`` that opens and answers ``KVM_GET_API_VERSION`` is necessary but
not sufficient: on these machines it belongs to a nested software hypervisor
that hangs a stock guest kernel early in boot, and QEMU's own
``-accel kvm:tcg`` fallback does not notice, because KVM initialised fine.

So the verdict is decided the only reliable way: cheap checks first, then a
real boot with KVM of the very kernel we will use, whose init (the guest
agent in probe mode) must print a marker on the serial console within a few
seconds.  The verdict is cached in ``state_dir()/accel.json`` per host boot
(``/proc/sys/kernel/random/boot_id``), QEMU version and kernel, so the
probe runs once per boot.  ``MINIBOX_ACCEL=kvm|tcg`` overrides it all.
"""

from __future__ import annotations

import fcntl
import json
import os
import selectors
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..paths import state_dir
from .kernel import KernelInfo

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
#: How long the probe boot may take to print its marker under KVM.
PROBE_SECONDS = 5.0
PROBE_MARKER = b"MINIBOX-PROBE-OK"


@dataclass(frozen=True)
class Verdict:
    accelerator: str  # "kvm" | "tcg"
    reason: str


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def kvm_device_problem() -> str | None:
    """Why /dev/kvm cannot be used at all, or None when it opens and speaks API 12."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return "/dev/kvm does not exist (no KVM on this host)"
    except OSError as e:
        return f"cannot open /dev/kvm: {e.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as e:
        return f"/dev/kvm does not answer KVM_GET_API_VERSION: {e.strerror}"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return f"/dev/kvm speaks API {version}, not {KVM_API_VERSION}"
    return None


def _cache_key(qemu_version: str, kernel: KernelInfo) -> str:
    st = kernel.path.stat()
    return f"{boot_id()} qemu-{qemu_version} {kernel.path}:{st.st_size}:{st.st_mtime_ns}"


def probe_boot(qemu_argv: list[str], console: socket.socket, timeout: float = PROBE_SECONDS) -> bool:
    """Run a probe VM (already set up to print PROBE_MARKER) and report whether it did in time.

    ``qemu_argv`` must route the serial console to the peer of ``console``.
    QEMU is killed before this returns, whatever happens.
    """
    proc = subprocess.Popen(qemu_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, close_fds=True, pass_fds=_fds_in(qemu_argv),
                            start_new_session=True)
    seen = b""
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(console, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while PROBE_MARKER not in seen:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return False
                chunk = console.recv(65536)
                if not chunk:
                    return False
                seen = (seen + chunk)[-4096:]
            return True
    finally:
        proc.kill()
        proc.wait()


def _fds_in(argv: list[str]) -> tuple[int, ...]:
    fds = []
    for arg in argv:
        for part in arg.split(","):
            if part.startswith("fd="):
                fds.append(int(part[3:]))
        if arg.startswith("/dev/fd/"):
            fds.append(int(arg[len("/dev/fd/"):]))
    return tuple(fds)


def choose(kernel: KernelInfo, qemu_version: str, run_probe: Callable[[], bool], cache: Path | None = None) -> Verdict:
    """Decide between KVM and TCG for ``kernel``; see the module docstring.

    ``run_probe()`` boots the probe VM under KVM and returns whether the
    marker appeared (virtual_machine.py supplies it: it knows how to build
    an initramfs).  ``cache`` defaults to ``state_dir()/accel.json``.
    """
    forced = os.environ.get("MINIBOX_ACCEL")
    if forced in ("kvm", "tcg"):
        return Verdict(forced, f"forced by MINIBOX_ACCEL={forced}")
    problem = kvm_device_problem()
    if problem is not None:
        return Verdict("tcg", f"using TCG (software emulation): {problem}")
    cache = cache or state_dir() / "accel.json"
    key = _cache_key(qemu_version, kernel)
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if key in known:
        verdict = known[key]
        return Verdict(verdict["accelerator"], verdict["reason"] + " (cached for this boot)")
    from ..firstuse import step

    with step("accelerator", "probing /dev/kvm with a test boot",
              "a KVM that cannot run this kernel would hang every VM; the verdict is kept until reboot"):
        booted = run_probe()
    if booted:
        verdict = Verdict("kvm", "using KVM: a probe guest booted under it")
    else:
        verdict = Verdict(
            "tcg",
            f"using TCG (software emulation): /dev/kvm opens, but a probe guest did not "
            f"finish booting under it within {PROBE_SECONDS:g} s (a nested hypervisor that "
            f"cannot run this kernel?)",
        )
    # keep only this boot's entries
    mine = {k: v for k, v in known.items() if k.startswith(boot_id())}
    mine[key] = {"accelerator": verdict.accelerator, "reason": verdict.reason}
    tmp = cache.with_name(cache.name + f".{os.getpid()}")
    tmp.write_text(json.dumps(mine, indent=1))
    tmp.replace(cache)
    return verdict
