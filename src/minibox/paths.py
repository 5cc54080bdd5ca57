"""Where minibox keeps things on the host.

* ``state_dir()``  -- ``/var/lib/minibox`` (root) or ``$XDG_DATA_HOME/minibox``:
  things worth keeping across boots: the default busybox rootfs, the guest
  kernel, the compiled guest agent, the KVM verdict cache.
* ``runtime_dir()`` -- ``/run/minibox`` (root) or ``$XDG_RUNTIME_DIR/minibox``:
  one state file per live sandbox (its pid, start time, cgroup paths,
  network leases), so ``minibox gc`` can clean up after a caller that was
  killed.  /run is a tmpfs: a reboot empties it, as it empties the cgroups.

``MINIBOX_STATE_DIR`` and ``MINIBOX_RUNTIME_DIR`` override both (tests use
this to stay out of the host's directories).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings


if TYPE_CHECKING:
    from pathlib import Path


def state_dir_name() -> str:
    """The state directory's path, not created (cheap: no pathlib, no syscalls)."""
    override = os.environ.get("MINIBOX_STATE_DIR")
    if override:
        return override
    if os.geteuid() == 0:
        return "/var/lib/minibox"
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "minibox")


def state_dir() -> Path:
    """Persistent state: rootfs, kernels, caches.  Created on demand."""
    from pathlib import Path

    path = Path(state_dir_name())
    path.mkdir(parents=True, exist_ok=True, mode=0o755)
    return path


def runtime_dir_name() -> str:
    """The runtime directory's path, not created (cheap: no pathlib)."""
    override = os.environ.get("MINIBOX_RUNTIME_DIR")
    if override:
        return override
    if os.geteuid() == 0:
        return "/run/minibox"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(xdg, "minibox") if xdg else f"/tmp/minibox-{os.geteuid()}"


def runtime_dir() -> Path:
    """Per-boot state of live sandboxes.  Created on demand, mode 0700."""
    from pathlib import Path

    path = Path(runtime_dir_name())
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
