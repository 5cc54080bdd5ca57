"""A container's mounts never propagate back to its caller, even from a shared mount tree.

On hosts whose root mount is *shared* (systemd makes it so), a new mount
namespace starts as a peer of its parent: a mount made inside would appear
outside too.  The child's first mount step makes its whole tree private
(``MS_REC | MS_PRIVATE``; mount_namespaces(7), "Shared subtrees").  This
host's root is private, so the test builds the dangerous case itself: the
caller runs in a private mount namespace of its own whose tree is shared
(``unshare -m --propagation shared``), starts a container with a tmpfs and
a bind, and looks at its own mount table while the container runs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from ..conftest import needs_root

pytestmark = needs_root

CALLER = textwrap.dedent("""
    import sys, time
    import minibox
    from minibox import Container, Mount, Spec

    def ours():
        with open("/proc/self/mountinfo") as f:
            return [line for line in f if "minibox" in line or "/scratch" in line or "/data" in line]

    before = ours()
    spec = Spec(argv=["sleep", "30"], mounts=[Mount.tmpfs("/scratch"), Mount.bind("/etc", "/data", readonly=True)])
    with Container(spec) as box:
        time.sleep(0.5)
        during = ours()
        box.kill()
    print("NEW", len([m for m in during if m not in before]))
    print("SHARED", sum(" shared:" in line for line in open("/proc/self/mountinfo")))
""")


def test_mounts_made_inside_do_not_appear_in_a_shared_caller_namespace() -> None:
    out = subprocess.run(["unshare", "-m", "--propagation", "shared", "--", sys.executable, "-c", CALLER],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = dict(line.split() for line in out.stdout.splitlines())
    assert int(report["SHARED"]) > 0  # the dangerous case really was built
    assert report["NEW"] == "0", out.stdout
