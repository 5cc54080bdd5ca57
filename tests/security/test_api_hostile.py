"""Probes of the Python API's container path by a hostile process inside it.

minibox's users sandbox code they do not trust: what runs inside may try to
exhaust the host through the container's own resources, or to make the
caller's :meth:`Container.exec` and :meth:`Container.wait` hang, leak or
lie.  Each test here fails if the hole it names were open; what it tries
runs inside the container only.  Probes that held are kept, so a change
that opens one again is caught.
"""

from __future__ import annotations

import pytest

import minibox
from minibox import Spec
from minibox.container.plan import DEFAULT_LAYER_SIZE

from ..conftest import needs_root

pytestmark = needs_root


def _df_kib(result: minibox.Result) -> dict[str, int]:
    """``{mount point: size in KiB}`` from the output of ``df -k``."""
    sizes = {}
    for line in result.stdout.decode().splitlines()[1:]:
        fields = line.split()
        sizes[fields[-1]] = int(fields[1])
    return sizes


# -- the default container's writable layer and /tmp are host memory ---------------------------

def test_the_default_layer_and_tmp_are_bounded_without_limits() -> None:
    # A default container has no cgroup: its tmpfs pages are charged to no
    # bound of its own.  Unbounded, each tmpfs offered half the host's RAM
    # (12 GiB of 24 here) to 'head -c 20G /dev/zero > /tmp/f'.
    result = minibox.run(Spec(argv=["df", "-k", "/", "/tmp"], timeout=10))
    assert result.exit_code == 0, result.stderr
    sizes = _df_kib(result)
    assert sizes["/"] * 1024 <= DEFAULT_LAYER_SIZE
    assert sizes["/tmp"] * 1024 <= DEFAULT_LAYER_SIZE


@pytest.mark.parametrize("where", ["/tmp/fill", "/fill"])
def test_filling_the_layer_or_tmp_stops_at_the_bound(where: str) -> None:
    script = f"head -c 16777216 /dev/zero > {where}; echo rc=$?; wc -c < {where}"
    result = minibox.run(Spec(argv=["sh", "-c", script], rootfs_overlay_size="4M", timeout=10))
    lines = result.stdout.decode().split()
    assert lines[0] == "rc=1", result.stderr  # the write failed (ENOSPC) ...
    assert int(lines[1]) <= 4 << 20  # ... at the bound
