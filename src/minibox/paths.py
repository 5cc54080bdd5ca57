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
from pathlib import Path


def _user_dir(env_var: str, xdg_var: str, root_default: str, xdg_fallback: str) -> Path:
    override = os.environ.get(env_var)
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return Path(root_default)
    base = os.environ.get(xdg_var) or os.path.expanduser(xdg_fallback)
    return Path(base) / "minibox"


def state_dir() -> Path:
    """Persistent state: rootfs, kernels, caches.  Created on demand."""
    path = _user_dir("MINIBOX_STATE_DIR", "XDG_DATA_HOME", "/var/lib/minibox", "~/.local/share")
    path.mkdir(parents=True, exist_ok=True, mode=0o755)
    return path


def runtime_dir() -> Path:
    """Per-boot state of live sandboxes.  Created on demand, mode 0700."""
    fallback = f"/tmp/minibox-{os.geteuid()}"
    override = os.environ.get("MINIBOX_RUNTIME_DIR")
    if override:
        path = Path(override)
    elif os.geteuid() == 0:
        path = Path("/run/minibox")
    else:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        path = Path(xdg) / "minibox" if xdg else Path(fallback)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
