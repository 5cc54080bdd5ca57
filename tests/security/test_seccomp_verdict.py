"""The kernel's seccomp verdict, read from inside real containers, for a fixed list.

The list below is written down here, from Docker's and podman's default
profile (moby profiles/seccomp/default.json: calls outside its allow list,
or allowed only with a capability the default set lacks), not taken from
minibox's own ``DENIED`` table: removing a call from minibox's policy must
make this test fail.

Each call is made by a small static probe (sysprobe.c) with arguments that
are harmless when the call is allowed, twice: in a container with the
default profile and in one with ``seccomp="unconfined"`` and otherwise the
same Spec.  For the first group the unconfined answer is *not* EPERM, so an
EPERM under the default profile can only come from the filter.  The second
group needs a capability the container does not have, so the kernel says
EPERM either way.  To read the *filter's* verdict on those too, the last
test has the kernel run minibox's compiled default program with its EPERM
answers relabelled to an errno nothing else returns (ENOTUNIQ): every call
on the written list must come back ENOTUNIQ.
"""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

import minibox
from minibox import Spec

from ..conftest import needs_root

pytestmark = needs_root

HERE = Path(__file__).parent
UFFD_USER_MODE_ONLY = 1
CLONE_NEWUSER = 0x10000000
ADDR_NO_RANDOMIZE = 0x0040000
TIOCSTI = 0x5412

# name: x86_64 number and arguments.  Without the filter the kernel answers
# something other than EPERM here (a value, EBADF, EFAULT, EINVAL, ENOSYS).
FILTER_ONLY = {
    "keyctl": "250:0:-1:0",                   # KEYCTL_GET_KEYRING_ID, thread keyring
    "add_key": "248:0:0:0:0:0",               # NULL type: EFAULT
    "request_key": "249:0:0:0:0",
    "io_uring_setup": "425:0:0",              # 0 entries: EINVAL
    "io_uring_enter": "426:-1:0:0:0:0:0",     # EBADF
    "io_uring_register": "427:-1:0:0:0",
    "userfaultfd": f"323:{UFFD_USER_MODE_ONLY}",
    "perf_event_open": "298:0:0:-1:-1:0",     # NULL attr: EFAULT
    "name_to_handle_at": "303:-100:0:0:0:0",
    "setns": "308:-1:0",                      # EBADF
    "quotactl_fd": "443:-1:0:0:0",
    "kcmp": "312:pid:pid:0:0:0",              # KCMP_FILE of fd 0 with itself
    "pidfd_getfd": "438:-1:0:0",
    "process_madvise": "440:-1:0:0:0:0",
    "process_vm_readv": "310:pid:0:0:0:0:0",
    "process_vm_writev": "311:pid:0:0:0:0:0",
    "get_mempolicy": "239:0:0:0:0:0",
    "set_mempolicy": "238:0:0:0",             # MPOL_DEFAULT
    "mbind": "237:0:0:0:0:0:0",
    "move_pages": "279:0:0:0:0:0:0",
    "migrate_pages": "256:0:0:0:0",
    "uselib": "134:0",
    "ustat": "136:0:0",
    "sysfs": "139:3",                         # number of file system types
    "nfsservctl": "180:0:0:0",
    "create_module": "174:0:0",
    "get_kernel_syms": "177:0",
    "query_module": "178:0:0:0:0:0",
    "unshare(CLONE_NEWUSER)": f"272:{CLONE_NEWUSER}",
    "personality(ADDR_NO_RANDOMIZE)": f"135:{ADDR_NO_RANDOMIZE}",
    "ioctl(TIOCSTI)": f"16:1:{TIOCSTI}:0",     # on a pipe: ENOTTY
}
# clone3's flags sit in memory a filter cannot read: it fails with ENOSYS so
# that libc falls back to clone(), whose flags the filter can read.
ENOSYS_INSTEAD = {"clone3": "435:0:0"}
# Denied by the profile, and by the kernel too without the capability.
CAPABILITY_GATED = {
    "kexec_load": "246:0:0:0:0", "init_module": "175:0:0:0", "finit_module": "313:-1:0:0",
    "delete_module": "176:0:0", "reboot": "169:0:0:0:0", "mount": "165:0:0:0:0:0",
    "umount2": "166:0:0", "pivot_root": "155:0:0", "swapon": "167:0:0", "swapoff": "168:0",
    "open_by_handle_at": "304:-1:0:0", "iopl": "172:3", "ioperm": "173:0:1:1", "acct": "163:0",
    "settimeofday": "164:0:0", "clock_settime": "227:1:0", "clock_adjtime": "305:0:0",
    "lookup_dcookie": "212:0:0:0", "syslog": "103:3:0:0", "vhangup": "153", "bpf": "321:0:0:0",
    "fsopen": "430:0:0", "fsmount": "432:-1:0:0", "fspick": "433:-1:0:0", "fanotify_init": "300:0:0",
}


@pytest.fixture(scope="module")
def probe_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from minibox.images.busybox import build_busybox_rootfs

    root = Path(build_busybox_rootfs(tmp_path_factory.mktemp("verdict") / "rootfs"))
    subprocess.run(["cc", "-static", "-O2", "-Wall", "-o", str(root / "sysprobe"), str(HERE / "sysprobe.c")],
                   check=True)
    return root


def verdicts(root: Path, calls: dict[str, str], seccomp: str) -> dict[str, str]:
    argv = ["/sysprobe", *(f"{name}:{call}" for name, call in calls.items())]
    result = minibox.run(Spec(argv=argv, rootfs=str(root), seccomp=seccomp, timeout=60))
    text = result.stdout.decode(errors="replace")
    assert result.exit_code == 0, (result, text, result.stderr)
    report = dict(line.split("=", 1) for line in text.splitlines())
    assert report.pop("done") == "1" and set(report) == set(calls), text  # every call answered
    return report


def test_filter_only_denials_are_the_filters_doing(probe_root: Path) -> None:
    unconfined = verdicts(probe_root, FILTER_ONLY, "unconfined")
    confined = verdicts(probe_root, FILTER_ONLY, "default")
    # Without the filter the kernel lets each of these through to its own checks...
    assert {name: v for name, v in unconfined.items() if v == "EPERM"} == {}
    # ...and with the default profile every one is refused before it runs.
    assert {name: v for name, v in confined.items() if v != "EPERM"} == {}


def test_clone3_fails_with_enosys_so_libc_falls_back(probe_root: Path) -> None:
    assert verdicts(probe_root, ENOSYS_INSTEAD, "unconfined")["clone3"] != "ENOSYS"
    assert verdicts(probe_root, ENOSYS_INSTEAD, "default") == {"clone3": "ENOSYS"}


def test_capability_gated_calls_are_refused_and_the_caller_survives(probe_root: Path) -> None:
    confined = verdicts(probe_root, CAPABILITY_GATED, "default")
    assert {name: v for name, v in confined.items() if v != "EPERM"} == {}


def _relabelled(program: bytes, old_errno: int, new_errno: int) -> bytes:
    """The same program with every ``ret ERRNO(old)`` answering ``ERRNO(new)`` instead."""
    import struct

    bpf_ret_k = 0x06  # BPF_RET | BPF_K
    out = bytearray(program)
    for offset in range(0, len(out), 8):
        code, jt, jf, k = struct.unpack_from("=HBBI", out, offset)
        if code == bpf_ret_k and k == 0x00050000 | old_errno:
            struct.pack_into("=HBBI", out, offset, code, jt, jf, 0x00050000 | new_errno)
    return bytes(out)


def test_the_kernel_running_the_default_program_denies_every_written_down_call(probe_root: Path) -> None:
    from minibox.policy import capabilities
    from minibox.policy.seccomp.compile import compile_profile

    program = compile_profile("default", caps=frozenset(capabilities.DEFAULT_CAPABILITIES))
    assert program is not None
    (probe_root / "default.bpf").write_bytes(_relabelled(program, errno.EPERM, errno.ENOTUNIQ))
    calls = {**FILTER_ONLY, **CAPABILITY_GATED}
    argv = ["/sysprobe", "--filter", "/default.bpf", *(f"{name}:{call}" for name, call in calls.items())]
    # unconfined: the only filter is the one the probe installs itself
    result = minibox.run(Spec(argv=argv, rootfs=str(probe_root), seccomp="unconfined", timeout=60))
    text = result.stdout.decode(errors="replace")
    assert result.exit_code == 0, (result, text)
    report = dict(line.split("=", 1) for line in text.splitlines())
    assert report.pop("done") == "1" and set(report) == set(calls), text
    assert {name: v for name, v in report.items() if v != "ENOTUNIQ"} == {}

