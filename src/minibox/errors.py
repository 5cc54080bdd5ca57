"""The minibox error tree.

Every failure minibox reports is a :class:`MiniboxError`, so callers can catch
one class.  The subclasses say *when* it went wrong, which tells the caller
what to fix:

* :class:`SpecError`     -- the request is invalid; nothing was created.
  It names the Spec field and the fix.
* :class:`PreflightError` -- the request is valid, but this host cannot do it
  (no qemu, no kernel, cgroup not delegated...).  Nothing was created.
* :class:`SetupError`    -- the sandbox was being built and a named setup step
  failed with an errno, like ``SetupError: pivot_root: Invalid argument``.
  Everything created up to that point has been removed again.
* :class:`StateError`    -- a verb was called on a sandbox in the wrong
  state (``resume()`` on one that is not paused, ``exec()`` after its command
  ended, anything but ``close()`` after ``close()``).  It names the verb and
  the state; nothing was changed.

Errors raised because of an OS error keep it as ``__cause__`` and keep its
errno, in the spirit of ``OSError``.
"""

from __future__ import annotations

import errno as _errno
import os


class MiniboxError(Exception):
    """Base class of every error minibox raises on purpose."""


class SpecError(MiniboxError, ValueError):
    """An invalid :class:`minibox.Spec` field, detected before anything exists.

    ``field`` is the dotted name of the offending field (``"limits.memory"``),
    ``message`` says what is wrong and how to fix it.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class PreflightError(MiniboxError):
    """This host lacks something the request needs (a program, a device, a permission)."""


class SetupError(MiniboxError):
    """A named setup step failed while the sandbox was being built.

    ``step`` is the step's name (``"pivot_root"``, ``"mount"``, ``"execve"``...),
    ``errno`` the error number the kernel returned (or ``None``), ``detail``
    an optional object of the step (the mount target, the program name).
    """

    def __init__(self, step: str, errno: int | None = None, detail: str | None = None) -> None:
        self.step = step
        self.errno = errno
        self.detail = detail
        text = step
        if detail:
            text += f" {detail}"
        if errno is not None:
            text += f": {os.strerror(errno)}"
            name = _errno.errorcode.get(errno)
            if name:
                text += f" ({name})"
        super().__init__(text)


class CommandNotFoundError(SetupError):
    """The command could not be executed inside the sandbox (ENOENT/EACCES at execve).

    The CLI exits 127 for "not found" and 126 for "not executable", like a
    shell and like ``docker run``.
    """

    @property
    def exit_status(self) -> int:
        return 127 if self.errno == _errno.ENOENT else 126


# execve(2) errors that mean "this command cannot run here" (missing, not
# executable, not a program, a path through a non-directory) rather than a
# failed setup step; both isolations map them through exec_failure().
COMMAND_ERRNOS = frozenset({_errno.ENOENT, _errno.EACCES, _errno.ENOEXEC, _errno.ENOTDIR})


def exec_failure(step: str, err: int, detail: str | None) -> SetupError:
    """The error for a failed execve of ``detail``: CommandNotFoundError or SetupError."""
    if err in COMMAND_ERRNOS:
        return CommandNotFoundError(step, err, detail)
    return SetupError(step, err, detail)


class ProtocolError(SetupError):
    """A VM guest broke the guest agent's protocol (docs/vm.md, "The control protocol").

    The guest is untrusted: an oversized or malformed frame on the agent's
    channel ends the VM.  ``detail`` names the violation.
    """

    def __init__(self, violation: str) -> None:
        super().__init__("agent protocol", None, violation)


class StateError(MiniboxError):
    """A :class:`minibox.Sandbox` verb called in a state that does not allow it.

    ``verb`` is the method (``"resume"``), ``state`` the sandbox's state at
    the time (``"created"``, ``"running"``, ``"paused"``, ``"exited"`` or
    ``"closed"``; see ``minibox.sandbox``), ``message`` what to do instead.
    Containers and virtual machines raise it for the same verb in the same
    state.  It is also what a verb raises when the sandbox's host state is
    gone from under it (``stats()`` on a container whose cgroup was removed).
    """

    def __init__(self, verb: str, state: str, message: str) -> None:
        self.verb = verb
        self.state = state
        self.message = message
        super().__init__(f"{verb}(): {message}")


__all__ = [
    "MiniboxError",
    "SpecError",
    "PreflightError",
    "SetupError",
    "CommandNotFoundError",
    "StateError",
    "ProtocolError",
]
