"""OCI seccomp profiles (runtime-spec config-linux.md, "Seccomp") -> a :class:`.profile.Profile`.

The OCI ``linux.seccomp`` object is what Docker, podman and runc read:
``defaultAction``, ``architectures`` and ``syscalls`` entries with names,
an action and argument comparisons.  This module validates one (every key
and type, naming what is wrong) and translates it with runc's conventions.
"""

from __future__ import annotations

import errno as _errno
import re
from collections.abc import Mapping, Sequence

from ...errors import SpecError
from .profile import (
    ACT_ALLOW,
    ACT_ERRNO_BASE,
    ACT_KILL_PROCESS,
    ACT_KILL_THREAD,
    ACT_LOG,
    ACT_TRACE_BASE,
    ACT_TRAP,
    OPS,
    Cond,
    Profile,
    Rule,
    native,
    native_arches,
)

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from typing import Any


_ACTIONS = {
    "SCMP_ACT_KILL": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": ACT_TRAP,
    "SCMP_ACT_ERRNO": ACT_ERRNO_BASE,
    "SCMP_ACT_TRACE": ACT_TRACE_BASE,
    "SCMP_ACT_LOG": ACT_LOG,
    "SCMP_ACT_ALLOW": ACT_ALLOW,
}
PERMISSIVE = (ACT_ALLOW, ACT_LOG)
_TOP_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "flags", "syscalls",
             "listenerPath", "listenerMetadata"}
_CALL_KEYS = {"names", "name", "action", "errnoRet", "args", "comment"}
_ARG_KEYS = {"index", "value", "valueTwo", "op"}


def _u64(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise SpecError("seccomp", f"{where}: expected an unsigned 64-bit integer, got {value!r}")
    return value


def _action(name: object, errno_ret: object, where: str) -> int:
    if name == "SCMP_ACT_NOTIFY":
        raise SpecError("seccomp", f"{where}: SCMP_ACT_NOTIFY needs a seccomp agent; minibox has none")
    if not isinstance(name, str) or name not in _ACTIONS:
        raise SpecError("seccomp", f"{where}: unknown action {name!r}; use one of {', '.join(_ACTIONS)}")
    base = _ACTIONS[name]
    if base in (ACT_ERRNO_BASE, ACT_TRACE_BASE):
        data = _errno.EPERM if errno_ret is None else errno_ret
        if isinstance(data, bool) or not isinstance(data, int) or not 0 <= data <= 0xFFFF:
            raise SpecError("seccomp", f"{where}: errnoRet must be an int 0..65535, got {data!r}")
        return base | data
    if errno_ret is not None:
        raise SpecError("seccomp", f"{where}: errnoRet applies to SCMP_ACT_ERRNO and SCMP_ACT_TRACE only")
    return base


def _arch_token(name: object, where: str) -> int:
    lib = native().lib
    if not isinstance(name, str) or not name.startswith("SCMP_ARCH_"):
        raise SpecError("seccomp", f"{where}: expected an architecture like 'SCMP_ARCH_X86_64', got {name!r}")
    token = int(lib.seccomp_arch_resolve_name(name[len("SCMP_ARCH_"):].lower().encode()))
    if token == 0:
        raise SpecError("seccomp", f"{where}: libseccomp does not know architecture {name!r}")
    return token


def translate_oci(profile: Mapping[str, Any]) -> Profile:
    """An OCI ``linux.seccomp`` mapping -> :class:`Profile`, with runc's conventions.

    * ``architectures`` are added to the native one (which is always
      filtered); any other architecture is killed.
    * Several ``args`` on the *same* index are ORed (one rule each), as runc
      and Docker's profiles assume; args on different indexes are ANDed.
    * A rule whose action equals the default action is dropped (it would
      change nothing; libseccomp refuses it).
    * A syscall name libseccomp does not know is an error when the rule is
      stricter than an allowing default (skipping it would silently allow
      the call); otherwise it is skipped with a warning, as runc does, since
      profiles list calls of kernels newer than this one.
    """
    if not isinstance(profile, Mapping):
        raise SpecError("seccomp", "expected 'default', 'unconfined' or an OCI linux.seccomp mapping")
    unknown = set(profile) - _TOP_KEYS
    if unknown:
        hint = " ('archMap' is Docker's format, not OCI: list 'architectures')" if "archMap" in unknown else ""
        raise SpecError("seccomp", f"unknown key(s) {', '.join(sorted(map(str, unknown)))}{hint}")
    if "defaultAction" not in profile:
        raise SpecError("seccomp", "defaultAction is required (e.g. 'SCMP_ACT_ERRNO')")
    if profile.get("listenerPath"):
        raise SpecError("seccomp", "listenerPath (SCMP_ACT_NOTIFY agents) is not supported")
    if profile.get("flags"):
        raise SpecError("seccomp", f"flags {profile['flags']!r} are not supported; remove them")
    default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"), "defaultAction")
    arches = list(native_arches()[:1])
    raw_arches = profile.get("architectures") or []
    if isinstance(raw_arches, str) or not isinstance(raw_arches, Sequence):
        raise SpecError("seccomp", "architectures: expected a list like ['SCMP_ARCH_X86_64']")
    for i, name in enumerate(raw_arches):
        token = _arch_token(name, f"architectures[{i}]")
        if token not in arches:
            arches.append(token)
    raw_calls = profile.get("syscalls") or []
    if isinstance(raw_calls, (str, Mapping)) or not isinstance(raw_calls, Sequence):
        raise SpecError("seccomp", "syscalls: expected a list of {names, action, args}")
    rules: list[Rule] = []
    for i, call in enumerate(raw_calls):
        where = f"syscalls[{i}]"
        if not isinstance(call, Mapping):
            raise SpecError("seccomp", f"{where}: expected a mapping with names and action")
        extra = set(call) - _CALL_KEYS
        if extra:
            hint = " (Docker's includes/excludes are not OCI)" if extra & {"includes", "excludes"} else ""
            raise SpecError("seccomp", f"{where}: unknown key(s) {', '.join(sorted(map(str, extra)))}{hint}")
        names = call.get("names", [call["name"]] if "name" in call else None)
        if (not names or isinstance(names, str) or not isinstance(names, Sequence)
                or not all(isinstance(n, str) and re.fullmatch(r"[a-z0-9_]+", n) for n in names)):
            raise SpecError("seccomp", f"{where}.names: expected a non-empty list of system call names, got {names!r}")
        if "action" not in call:
            raise SpecError("seccomp", f"{where}: action is required")
        action = _action(call["action"], call.get("errnoRet"), f"{where}.action")
        if action == default:
            continue
        conds: list[Cond] = []
        raw_args = call.get("args") or []
        if isinstance(raw_args, (str, Mapping)) or not isinstance(raw_args, Sequence):
            raise SpecError("seccomp", f"{where}.args: expected a list of {{index, value, valueTwo, op}}")
        for j, arg in enumerate(raw_args):
            awhere = f"{where}.args[{j}]"
            if not isinstance(arg, Mapping):
                raise SpecError("seccomp", f"{awhere}: expected a mapping")
            extra = set(arg) - _ARG_KEYS
            if extra:
                raise SpecError("seccomp", f"{awhere}: unknown key(s) {', '.join(sorted(map(str, extra)))}")
            index = arg.get("index")
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 5:
                raise SpecError("seccomp", f"{awhere}.index: expected 0..5 (system calls have six arguments)")
            op = arg.get("op")
            if op not in OPS:
                raise SpecError("seccomp", f"{awhere}.op: unknown operator {op!r}; use one of {', '.join(OPS)}")
            conds.append(Cond(index, OPS[str(op)], _u64(arg.get("value", 0), f"{awhere}.value"),
                              _u64(arg.get("valueTwo", 0), f"{awhere}.valueTwo")))
        strict = default in PERMISSIVE and action not in PERMISSIVE
        indexes = [c.index for c in conds]
        if len(set(indexes)) != len(indexes):
            rules.extend(Rule(tuple(names), action, (c,), strict) for c in conds)
        else:
            rules.append(Rule(tuple(names), action, tuple(conds), strict))
    return Profile(default_action=default, arches=tuple(arches), rules=tuple(rules))


