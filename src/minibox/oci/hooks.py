"""OCI hooks: programs the runtime runs at fixed points of a container's life.

Spec: config.md#posix-platform-hooks.  Each hook is a host program (path,
args, env, timeout) that receives the container's state JSON on stdin.
``prestart``/``createRuntime`` run in ``create`` once the namespaces exist
(a network hook finds /proc/PID/ns/net), ``poststart`` after ``start``,
``poststop`` in ``delete``.  A failing create-time hook fails the create
(and everything is undone); poststart and poststop failures are only
logged, as the spec says.  Hooks meant to run inside the container
(createContainer, startContainer) are refused in oci/config.py.
"""

from __future__ import annotations

from .. import _json as json  # json's C half without re and enum: each verb is a fresh interpreter
from .state import OciError

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .state import Record


def run_hooks(kind: str, hooks: list[dict[str, Any]], state: dict[str, Any]) -> None:
    """Run each hook of ``kind`` in order; raise OciError naming the first that fails."""
    if not hooks:
        return
    import subprocess

    payload = json.dumps(state).encode()
    for i, hook in enumerate(hooks):
        env = dict(entry.split("=", 1) for entry in hook.get("env") or [] if "=" in entry)
        try:
            done = subprocess.run(hook.get("args") or [hook["path"]], executable=hook["path"], env=env,
                                  input=payload, capture_output=True, timeout=hook.get("timeout"), check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise OciError(f"hooks.{kind}[{i}] {hook['path']}: {e}") from e
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise OciError(f"hooks.{kind}[{i}] {hook['path']} exited with status {done.returncode}"
                           + (f": {err[-1]}" if err else ""))


def run_recorded_hooks(kind: str, record: Record, state: dict[str, Any],
                       warn: Callable[[str], None] | None) -> None:
    """poststart/poststop: the hooks ``create`` recorded; a failure is only logged (``warn``), as the spec says."""
    try:
        run_hooks(kind, record.data.get("hooks", {}).get(kind, []), state)
    except OciError as e:
        if warn is not None:
            warn(str(e))
