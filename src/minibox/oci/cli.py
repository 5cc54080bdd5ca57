"""``minibox-oci``: the runc command line, so podman and containerd can drive minibox.

Spec: runc(8)'s interface as engines call it (podman through conmon,
containerd through its io.containerd.runc.v2 shim): global flags before the
verb, in both ``--flag=value`` and ``--flag value`` form (and Go's
single-dash ``-flag``), errors as one line on stderr and, with
``--log FILE --log-format json``, as ``{"level":"error","msg":...,"time":...}``
lines in the log the engine reads.  The import list stays short: a
``create``/``start``/``delete`` loads only what that verb needs.
"""

from __future__ import annotations

import os
import sys
import time

from .. import _json as json  # json's C half without re and enum: each verb is a fresh interpreter
from ..errors import MiniboxError
from .state import DEFAULT_ROOT, OCI_VERSION, OciError, Record

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from typing import Any

VERSION = "0.1.0"
INHERITED_FDS: frozenset[int] = frozenset()
# global flag -> takes a value
GLOBAL_FLAGS = {"root": True, "log": True, "log-format": True, "systemd-cgroup": False, "debug": False,
                "rootless": True, "criu": True, "help": False, "version": False}
# per verb: flag -> takes a value (short aliases map onto long names)
VERB_FLAGS: dict[str, dict[str, bool]] = {
    "create": {"bundle": True, "pid-file": True, "console-socket": True, "preserve-fds": True,
               "no-pivot": False, "no-new-keyring": False},
    "run": {"bundle": True, "pid-file": True, "console-socket": True, "preserve-fds": True,
            "no-pivot": False, "no-new-keyring": False, "detach": False, "keep": False},
    "start": {}, "state": {}, "pause": {}, "resume": {}, "features": {},
    "kill": {"all": False},
    "delete": {"force": False},
    "ps": {"format": True},
    "list": {"format": True, "quiet": False},
    "spec": {"bundle": True, "rootless": False},
    "exec": {"process": True, "detach": False, "pid-file": True, "tty": False, "console-socket": True,
             "env": True, "cwd": True, "user": True, "additional-gids": True, "cap": True,
             "no-new-privs": False, "preserve-fds": True, "process-label": True, "apparmor": True,
             "cgroup": True, "ignore-paused": False},
}
SHORT = {"b": "bundle", "f": "force", "a": "all", "d": "detach", "t": "tty", "e": "env", "u": "user",
         "p": "process", "c": "cap", "g": "additional-gids", "q": "quiet", "v": "version", "h": "help"}
REPEATED = ("env", "cap", "additional-gids")


class Log:
    """Where errors and warnings go: stderr, plus --log FILE in text or json."""

    def __init__(self, path: str | None, fmt: str, debug: bool) -> None:
        self.path = path
        self.fmt = fmt
        self.debug_on = debug

    def write(self, level: str, msg: str) -> None:
        if level == "error" or (not self.path and (level != "debug" or self.debug_on)):
            print(f"minibox-oci: {level}: {msg}" if level != "error" else f"minibox-oci: {msg}", file=sys.stderr)
        if not self.path or (level == "debug" and not self.debug_on):
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.fmt == "json":
            line = json.dumps({"level": level, "msg": msg, "time": stamp})
        else:
            line = f"time={json.dumps(stamp)} level={level} msg={json.dumps(msg)}"
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass  # the log is advisory; stderr has it already

    def error(self, msg: str) -> None:
        self.write("error", msg)

    def warn(self, msg: str) -> None:
        self.write("warning", msg)


def _parse(args: list[str], table: dict[str, bool], where: str) -> tuple[dict[str, Any], list[str]]:
    """Flags of ``table`` up to the first positional (or ``--``); the rest is positional."""
    opts: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.lstrip("-").partition("=")
        if not arg.startswith("--") and len(name) == 1:
            name = SHORT.get(name, name)
        if name not in table:
            raise OciError(f"{where}: unknown flag {arg.split('=')[0]}")
        if table[name]:
            if not eq:
                i += 1
                if i >= len(args):
                    raise OciError(f"{where}: flag --{name} needs a value")
                value = args[i]
            if name in REPEATED:
                opts.setdefault(name, []).append(value)
            else:
                opts[name] = value
        else:
            if eq and value.lower() not in ("true", "false", "1", "0"):
                raise OciError(f"{where}: flag --{name} is a switch; got {value!r}")
            opts[name] = not eq or value.lower() in ("true", "1")
        i += 1
    return opts, args[i:]


def _one_id(rest: list[str], verb: str) -> str:
    if len(rest) != 1:
        raise OciError(f"{verb}: expected exactly one container id, got {len(rest)} arguments")
    return rest[0]


def _int_flag(opts: dict[str, Any], name: str) -> int:
    try:
        return int(opts.get(name, 0))
    except ValueError as e:
        raise OciError(f"--{name}: expected a number, got {opts[name]!r}") from e


def _inherited_fds() -> frozenset[int]:
    """Which of fds 3.. were open when we started: only those may be --preserve-fds'ed
    (a closed one would be reused by our own files, the lock among them)."""
    from .runtime import MAX_PRESERVED_FDS

    found = set()
    for fd in range(3, 3 + MAX_PRESERVED_FDS):
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.add(fd)
    return frozenset(found)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    global INHERITED_FDS
    INHERITED_FDS = _inherited_fds()
    vm = os.path.basename(argv[0]).endswith("-vm")
    log = Log(None, "text", False)
    try:
        glob, rest = _parse(argv[1:], GLOBAL_FLAGS, "minibox-oci")
        log = Log(glob.get("log"), glob.get("log-format", "text"), bool(glob.get("debug")))
        if log.fmt not in ("text", "json"):
            log.fmt = "text"
            raise OciError(f"--log-format {glob.get('log-format')!r}: expected text or json")
        if glob.get("version"):
            print(f"minibox-oci version {VERSION}\nspec: {OCI_VERSION}")
            return 0
        if glob.get("systemd-cgroup"):
            raise OciError("--systemd-cgroup is not supported: minibox-oci manages cgroupfs only "
                           "(configure the engine with cgroup_manager = \"cgroupfs\")")
        if not rest or glob.get("help"):
            print("usage: minibox-oci [--root DIR] [--log FILE] [--log-format text|json] VERB [FLAGS] ID\n"
                  "verbs: " + " ".join(VERB_FLAGS))
            return 0 if glob.get("help") else 1
        verb, verb_args = rest[0], rest[1:]
        if verb not in VERB_FLAGS:
            raise OciError(f"unknown command {verb!r}; one of {', '.join(VERB_FLAGS)}")
        opts, positional = _parse(verb_args, VERB_FLAGS[verb], verb)
        root = os.path.abspath(glob.get("root") or DEFAULT_ROOT)
        return _dispatch(verb, opts, positional, root, log, vm)
    except (MiniboxError, OSError) as e:
        message = str(e) if isinstance(e, MiniboxError) else f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")
        log.error(" ".join(message.split("\n")))
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(verb: str, opts: dict[str, Any], rest: list[str], root: str, log: Log, vm: bool) -> int:
    from . import runtime

    if verb == "features":
        print(json.dumps(_features(), indent=2))
        return 0
    if verb == "spec":
        return _spec(opts)
    if verb == "list":
        from .state import list_ids

        ids = list_ids(root)
        if opts.get("quiet"):
            print("\n".join(ids))
        elif opts.get("format") == "json":
            print(json.dumps([Record(root, i).load().oci_state() for i in ids]))
        else:
            print("ID\tPID\tSTATUS\tBUNDLE")
            for i in ids:
                state = Record(root, i).load().oci_state()
                print(f"{i}\t{state['pid']}\t{state['status']}\t{state['bundle']}")
        return 0
    if verb in ("create", "run"):
        container_id = _one_id(rest, verb)
        record = runtime.create(root, container_id, opts.get("bundle") or os.getcwd(),
                                pid_file=opts.get("pid-file"), console_socket=opts.get("console-socket"),
                                preserve_fds=_int_flag(opts, "preserve-fds"), vm=vm, warn=log.warn)
        if verb == "create":
            return 0
        return _run(record, bool(opts.get("detach")), bool(opts.get("keep")), log)
    if verb == "exec":
        if not rest:
            raise OciError("exec: expected a container id")
        return _exec(Record(root, rest[0]), opts, rest[1:], log)
    if verb == "kill":
        if len(rest) not in (1, 2):
            raise OciError("kill: expected ID [SIGNAL]")
        sig = runtime.parse_signal(rest[1] if len(rest) == 2 else "TERM")
        runtime.kill(Record(root, rest[0]).load(), sig, bool(opts.get("all")))
        return 0
    record = Record(root, _one_id(rest, verb))
    if verb == "delete" and opts.get("force") and not os.path.exists(record.file) and (
            not os.path.exists(record.dir) or record.remove_unrecorded()):
        # runc's behaviour, which the engines' cleanup relies on: a forced
        # delete of what does not exist (a create that failed, or was killed
        # before it recorded anything) succeeds
        return 0
    if verb == "state":
        print(json.dumps(record.load().oci_state(), indent=2))
        return 0
    if verb == "ps":
        pids = runtime.processes(record.load())
        if opts.get("format") == "json":
            print(json.dumps(pids))
        else:
            print("PID\n" + "\n".join(str(p) for p in pids))
        return 0
    with record.locked():
        if verb == "start":
            runtime.start(record, warn=log.warn)
        elif verb == "delete":
            runtime.delete(record, bool(opts.get("force")), warn=log.warn)
        elif verb == "pause":
            runtime.pause(record)
        elif verb == "resume":
            runtime.resume(record)
    return 0


def _run(record: Record, detach: bool, keep: bool, log: Log) -> int:
    """``run``: create + start, then (unless --detach) wait for the init, our own child."""
    import signal as signal_mod

    from . import runtime

    pid = record.pid
    if not detach:
        def forward(number: int, _frame: object) -> None:
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass
        for sig in (signal_mod.SIGTERM, signal_mod.SIGINT, signal_mod.SIGHUP, signal_mod.SIGQUIT,
                    signal_mod.SIGUSR1, signal_mod.SIGUSR2):
            signal_mod.signal(sig, forward)
    with record.locked():
        runtime.start(record, warn=log.warn)
    if detach:
        return 0
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if not keep:
        with record.locked():
            runtime.delete(record, force=True, warn=log.warn)
    return 128 - code if code < 0 else code


def _exec(record: Record, opts: dict[str, Any], args: list[str], log: Log) -> int:
    from . import config as config_mod
    from .exec import exec_process

    record.load()
    if opts.get("process"):
        try:
            with open(opts["process"], "rb") as f:
                raw = json.loads(f.read())
        except (OSError, ValueError) as e:
            raise OciError(f"--process {opts['process']}: {e}") from e
        proc = config_mod.parse_process(raw, "process.")
        if proc.capabilities is None:
            # As runc: a process without "capabilities" runs with the container's set,
            # not with minibox-oci's own (every capability of the host's root).
            proc.capabilities = record.created_config().process.capabilities
    else:
        if not args:
            raise OciError("exec: give the command after the container id, or --process FILE")
        base = record.created_config().process
        env = list(base.env) + list(opts.get("env", []))
        user = opts.get("user")
        uid, gid = base.uid, base.gid
        if user:
            left, _, right = user.partition(":")
            if not left.isdigit() or (right and not right.isdigit()):
                raise OciError(f"--user {user!r}: expected UID[:GID] (numbers)")
            uid, gid = int(left), int(right) if right else 0
        groups = [int(g) for g in opts.get("additional-gids", []) if g.isdigit()] or list(base.groups)
        caps = None if base.capabilities is None else {k: list(v) for k, v in base.capabilities.items()}
        if caps is not None:
            for cap in opts.get("cap", []):
                for kind in ("bounding", "effective", "permitted"):
                    caps.setdefault(kind, []).append(cap)
        proc = config_mod.Process(args=args, env=env, cwd=opts.get("cwd") or base.cwd, uid=uid, gid=gid,
                                  groups=groups, umask=base.umask, terminal=bool(opts.get("tty")),
                                  capabilities=caps, rlimits=dict(base.rlimits),
                                  no_new_privileges=base.no_new_privileges or bool(opts.get("no-new-privs")))
    return exec_process(record, proc, detach=bool(opts.get("detach")), pid_file=opts.get("pid-file"),
                        console_socket=opts.get("console-socket"),
                        preserve_fds=_int_flag(opts, "preserve-fds"))


def _features() -> dict[str, Any]:
    from ..policy.capabilities import supported_capabilities
    from .config import NAMESPACE_TYPES
    from .mounts import FLAG_OPTIONS, PROPAGATION

    return {
        "ociVersionMin": "1.0.0", "ociVersionMax": OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": sorted([*FLAG_OPTIONS, *PROPAGATION, "bind", "rbind"]),
        "linux": {
            "namespaces": sorted(NAMESPACE_TYPES),
            "capabilities": sorted(supported_capabilities()),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": True},
            "apparmor": {"enabled": False}, "selinux": {"enabled": False},
        },
        "annotations": {"minibox.isolation": "container | vm (the default of minibox-oci-vm)"},
    }


def _spec(opts: dict[str, Any]) -> int:
    """Write a default config.json (runc spec's) into --bundle or the current directory."""
    from ..policy.capabilities import DEFAULT_CAPABILITIES
    from ..spec import DEFAULT_PATH

    caps = sorted(DEFAULT_CAPABILITIES)
    config = {
        "ociVersion": OCI_VERSION,
        "process": {"terminal": True, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
                    "env": [f"PATH={DEFAULT_PATH}", "TERM=xterm"],
                    "cwd": "/", "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                    "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "minibox",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                            "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }
    path = os.path.join(opts.get("bundle") or ".", "config.json")
    if os.path.exists(path):
        raise OciError(f"{path} already exists; remove it first")
    with open(path, "w") as f:
        f.write(json.dumps(config, indent=2))
    return 0


def entry_point() -> None:
    """The console script: run the verb, flush, and leave without tearing the interpreter down.

    An engine starts a fresh minibox-oci for every verb; finalizing its
    modules costs milliseconds that buy nothing: every file is closed by
    then, and the processes minibox-oci forks end with their own os._exit.
    """
    from .._lean import begin, leave

    begin()  # no cycle collection over the imports of a verb's few milliseconds (see begin)
    leave(main())
