"""minibox: isolation from its primitives.

Two ways to isolate a command, one API:

* ``isolation="container"`` -- :class:`Container`: new namespaces and
  cgroups on the host's kernel; the host kernel is the boundary.
* ``isolation="vm"`` -- :class:`VirtualMachine`: QEMU boots a guest kernel;
  the hypervisor is the boundary.

>>> import minibox
>>> result = minibox.run(minibox.Spec(argv=["uname", "-r"]))   # doctest: +SKIP
>>> result.stdout                                              # doctest: +SKIP
b'6.18.44\\n'

The heavy parts (the C core, QEMU control) are imported lazily, so that
``import minibox`` and the ``minibox`` command start fast.
"""

from __future__ import annotations

from .errors import (
    CommandNotFoundError,
    MiniboxError,
    PreflightError,
    ProtocolError,
    SetupError,
    SpecError,
    StateError,
)

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from typing import Any

    from .container.container import Container
    from .sandbox import Result, Sandbox, Stats, Usage
    from .spec import IdMap, Limits, Mount, Spec
    from .vm.virtual_machine import VirtualMachine

#: PEP 562 lazy attributes: name -> the module that defines it, imported on first use.
#: The errors above are cheap and imported at once; a ``minibox run`` that
#: never touches the API classes does not pay for them.
_LAZY = {
    "Spec": ".spec", "Limits": ".spec", "Mount": ".spec", "IdMap": ".spec",
    "Result": ".sandbox", "Sandbox": ".sandbox", "Stats": ".sandbox", "Usage": ".sandbox",
    "Container": ".container.container",
    "VirtualMachine": ".vm.virtual_machine",
}

__version__ = "0.1.0"

__all__ = [
    "run",
    "Spec",
    "Limits",
    "Mount",
    "IdMap",
    "Sandbox",
    "Container",
    "VirtualMachine",
    "Result",
    "Usage",
    "Stats",
    "MiniboxError",
    "SpecError",
    "SetupError",
    "PreflightError",
    "CommandNotFoundError",
    "StateError",
    "ProtocolError",
]

ISOLATIONS = ("container", "vm")


def run(spec: Spec, isolation: str = "container", **kwargs: Any) -> Result:
    """Run ``spec`` to completion in a sandbox and return its :class:`Result`.

    ``isolation`` is ``"container"`` (namespaces + cgroups, the host kernel)
    or ``"vm"`` (a QEMU microVM with its own kernel).  Keyword arguments
    (``stdin``, ``stdout``, ``stderr``) are passed to the sandbox; for a VM,
    ``template=False`` asks for a cold boot instead of a VM template
    (docs/vm.md, "Snapshots and templates").
    """
    if isolation == "container":
        from .container.container import run as run_container

        return run_container(spec, **kwargs)
    if isolation == "vm":
        from .vm import run_vm

        return run_vm(spec, **kwargs)
    raise SpecError("isolation", f"unknown isolation {isolation!r}; use 'container' or 'vm'")


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'minibox' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
