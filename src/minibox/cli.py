"""The ``minibox`` command: the Python API, spoken from a shell.

``minibox run`` follows the conventions of ``docker run`` and ``timeout(1)``
so its exit status can be used the same way:

====  ==========================================================
N     the command's own exit status
124   the --timeout passed and the sandbox was killed
125   minibox itself failed: bad flag or Spec, setup failure
126   the command exists but cannot be executed
127   the command was not found in the rootfs
137   killed by the OOM killer (the memory limit), with a message
128+N killed by signal N
====  ==========================================================

Imports are lazy: parsing flags must not pay for cffi, qemu.qmp or
pyroute2, so that the CLI starts almost as fast as the container does.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    import argparse
    import threading
    from collections.abc import Sequence
    from typing import Any, NoReturn


EXIT_SETUP_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_TIMEOUT = 124


class UsageError(Exception):
    """A flag's value is malformed; carries the flag's name."""


def _say(message: str) -> None:
    print(f"minibox: {message}", file=sys.stderr)


def _parse_volume(text: str) -> Any:
    from .spec import Mount

    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UsageError(f"-v {text!r}: expected SRC:DST or SRC:DST:ro")
    readonly = False
    if len(parts) == 3:
        if parts[2] not in ("ro", "rw"):
            raise UsageError(f"-v {text!r}: the third field must be 'ro' or 'rw'")
        readonly = parts[2] == "ro"
    return Mount.bind(os.path.abspath(parts[0]), parts[1], readonly=readonly)


def _parse_env(items: Sequence[str]) -> dict[str, str]:
    from .spec import DEFAULT_PATH

    env = {"PATH": DEFAULT_PATH}
    for item in items:
        if "=" in item:
            key, value = item.split("=", 1)
        else:  # -e NAME takes the value from minibox's own environment, as docker does
            key, value = item, os.environ.get(item, "")
        if not key:
            raise UsageError(f"-e {item!r}: expected NAME=VALUE")
        env[key] = value
    return env


def _parse_user(text: str) -> tuple[int, int]:
    try:
        if ":" in text:
            uid_text, gid_text = text.split(":", 1)
            return int(uid_text), int(gid_text)
        uid = int(text)
        return uid, uid
    except ValueError:
        raise UsageError(f"--user {text!r}: expected UID or UID:GID (numbers)") from None


def _parse_port(text: str) -> tuple[int, int]:
    try:
        host, inside = text.split(":", 1)
        return int(host), int(inside)
    except ValueError:
        raise UsageError(f"-p {text!r}: expected HOSTPORT:PORT") from None


def _number(flag: str, kind: type, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected a {'number' if kind is float else 'whole number'}") from None


def _parser_classes() -> tuple[type[argparse.ArgumentParser], type[argparse.HelpFormatter]]:
    """argparse's parser and formatter as ``minibox`` wants them (argparse imported here, on demand)."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        """argparse exits 2 on a bad flag and prints the whole usage block first;
        ``minibox run`` promises one line and 125, like ``docker run``."""

        def error(self, message: str) -> NoReturn:
            self.exit(EXIT_SETUP_FAILED, f"minibox: {message.splitlines()[0] if message else 'bad arguments'} "
                                         f"(see '{self.prog} --help')\n")

    class _Formatter(argparse.HelpFormatter):
        """argparse's formatter with the width from $COLUMNS: argparse would import
        shutil to ask the terminal, once for every argument added."""

        def __init__(self, prog: str) -> None:
            super().__init__(prog, width=int(os.environ.get("COLUMNS", "100")) - 2)

    return _Parser, _Formatter


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only``, just that subcommand's (building all costs ms)."""
    _Parser, _Formatter = _parser_classes()
    parser = _Parser(
        formatter_class=_Formatter,
        prog="minibox",
        description="Run commands in containers (namespaces + cgroups) or microVMs (QEMU), and compare the two.",
        epilog="See 'minibox COMMAND --help'. Docs: docs/README.md in the source tree.",
    )
    parser.add_argument("--version", action="version", version="minibox 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def wanted(name: str) -> bool:
        return only is None or only == name

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, formatter_class=_Formatter, **kwargs)
        return parser

    if wanted("run"):
        _add_run_parser(sub, _Formatter)
    if wanted("rootfs"):
        rootfs = add("rootfs", help="build a root file system")
        rootfs.add_argument("kind", choices=("busybox",), help="what to build it from")
        rootfs.add_argument("dir", metavar="DIR", help="where to build it (must not exist, or be empty)")
    if wanted("kernel"):
        add("kernel", help="locate or provision the guest kernel and print its path")
    if wanted("compare"):
        compare = add("compare", help="measure containers against VMs on this machine")
        compare.add_argument("--runs", type=int, default=5, help="start-to-exit runs per row (median)")
        compare.add_argument("--density", type=int, default=10, help="how many idle sandboxes to start")
        compare.add_argument("--peers", action="store_true", help="also measure crun, runc and bwrap when present")
        compare.add_argument("--json", action="store_true", help="machine-readable output")
        compare.add_argument("--markdown", action="store_true", help="a Markdown table")
        compare.add_argument("--wide", action="store_true",
                             help="the long form: every value with how it was measured (wider than 80 columns)")
        compare.add_argument("--plot", metavar="FILE",
                             help="also draw start times and memory into FILE (.svg or .png; needs matplotlib)")
    if wanted("demo"):
        demo = add("demo", help="list or run the teaching demos")
        demo.add_argument("name", nargs="?", help="the demo to run")
    if wanted("gc"):
        add("gc", help="remove what dead owners left behind (processes, cgroups, network, records)")
    if wanted("ps"):
        ps = add("ps", help="list the sandboxes minibox has records of, live or not")
        ps.add_argument("--json", action="store_true", help="machine-readable output")
    if wanted("kill"):
        kill = add("kill", help="send a signal to a sandbox by id (see 'minibox ps')")
        kill.add_argument("-s", "--signal", default="KILL", help="signal name or number (default: KILL)")
        kill.add_argument("id", metavar="ID", help="the sandbox's id, or a unique prefix of it")
    if wanted("preflight"):
        add("preflight", help="explain what this host allows and why")
    return parser


def _add_run_parser(sub: Any, _Formatter: type[argparse.HelpFormatter]) -> None:
    import argparse

    run = sub.add_parser("run", formatter_class=_Formatter, help="run a command in a sandbox",
                         description="Run CMD in a container (default) or a microVM, docker-style.")
    run.add_argument("--isolation", choices=("container", "vm"), default="container",
                     help="container: share the host kernel; vm: boot a guest kernel under QEMU")
    run.add_argument("--rootfs", metavar="DIR", help="root file system directory (default: built-in busybox)")
    run.add_argument("--hostname", default="minibox", help="host name inside (default: minibox)")
    run.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]",
                     help="bind-mount host path SRC at DST")
    run.add_argument("--tmpfs", action="append", default=[], metavar="DST", help="mount a tmpfs at DST")
    run.add_argument("--read-only", action="store_true", help="mount the rootfs read-only")
    run.add_argument("--rootfs-overlay", action="store_true",
                     help="write to a private, throw-away layer over --rootfs instead of the directory itself")
    run.add_argument("--rootfs-overlay-size", metavar="SIZE",
                     help="bound that layer (and the default image's), e.g. 64M; writes beyond fail with ENOSPC")
    run.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="set an environment variable")
    run.add_argument("-w", "--workdir", default="/", metavar="DIR", help="working directory inside")
    run.add_argument("--user", default="0:0", metavar="UID[:GID]", help="user and group ids inside")
    run.add_argument("--userns", action="store_true", help="also isolate user ids (a user namespace)")
    run.add_argument("--timeout", metavar="S", help="kill the sandbox after S seconds (exit 124)")
    run.add_argument("--memory", metavar="SIZE", help="memory limit, e.g. 64M")
    run.add_argument("--memory-swap", metavar="SIZE", help="memory+swap limit, e.g. 128M")
    run.add_argument("--cpus", metavar="N", help="CPU time limit in CPUs, e.g. 0.5")
    run.add_argument("--cpu-weight", metavar="W", help="relative CPU weight 1..10000")
    run.add_argument("--pids", metavar="N", help="maximum number of processes")
    run.add_argument("--cpuset", metavar="LIST", help="CPUs allowed, e.g. 0 or 0-1")
    run.add_argument("--net", choices=("none", "bridge", "host"), default="none", help="network mode")
    run.add_argument("-p", "--publish", action="append", default=[], metavar="HOSTPORT:PORT",
                     help="publish a port (bridge network)")
    run.add_argument("--ip", help="fixed address on the bridge")
    run.add_argument("--host-access", action="store_true",
                     help="let a bridged sandbox connect to the host's own addresses (off: other sandboxes only)")
    run.add_argument("--cap-add", action="append", default=[], metavar="CAP", help="add a capability")
    run.add_argument("--cap-drop", action="append", default=[], metavar="CAP", help="drop a capability")
    run.add_argument("--seccomp", default="default", metavar="default|unconfined|FILE.json",
                     help="seccomp profile")
    run.add_argument("--kernel", metavar="PATH", help="guest kernel (vm isolation)")
    run.add_argument("-t", "--tty", action="store_true", help="give the command a new pseudo-terminal")
    run.add_argument("--init", action="store_true",
                     help="run a minimal pid 1 that forwards signals and reaps zombies")
    run.add_argument("-i", "--interactive", action="store_true", help="pass minibox's stdin to the command")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD...", help="the command and its arguments")



# ``minibox run``'s flags once more, for the fast path: importing argparse and
# building its parser costs a CLI start milliseconds (argparse, gettext,
# locale, ~35 Action objects).  option strings -> (dest, kind, choices);
# kind is "value" (one argument), "flag" (store_true) or "append".
# tests/unit/test_import_budget.py checks this table against the argparse
# parser above, so the two cannot drift apart.
_RUN_FLAGS: dict[str, tuple[str, str, tuple[str, ...] | None]] = {}
_RUN_DEFAULTS: dict[str, Any] = {}
_RUN_APPEND: set[str] = set()
for _names, _dest, _kind, _default, _choices in (
    ("--isolation", "isolation", "value", "container", ("container", "vm")),
    ("--rootfs", "rootfs", "value", None, None),
    ("--hostname", "hostname", "value", "minibox", None),
    ("-v --volume", "volume", "append", None, None),
    ("--tmpfs", "tmpfs", "append", None, None),
    ("--read-only", "read_only", "flag", False, None),
    ("--rootfs-overlay", "rootfs_overlay", "flag", False, None),
    ("--rootfs-overlay-size", "rootfs_overlay_size", "value", None, None),
    ("-e --env", "env", "append", None, None),
    ("-w --workdir", "workdir", "value", "/", None),
    ("--user", "user", "value", "0:0", None),
    ("--userns", "userns", "flag", False, None),
    ("--timeout", "timeout", "value", None, None),
    ("--memory", "memory", "value", None, None),
    ("--memory-swap", "memory_swap", "value", None, None),
    ("--cpus", "cpus", "value", None, None),
    ("--cpu-weight", "cpu_weight", "value", None, None),
    ("--pids", "pids", "value", None, None),
    ("--cpuset", "cpuset", "value", None, None),
    ("--net", "net", "value", "none", ("none", "bridge", "host")),
    ("-p --publish", "publish", "append", None, None),
    ("--ip", "ip", "value", None, None),
    ("--host-access", "host_access", "flag", False, None),
    ("--cap-add", "cap_add", "append", None, None),
    ("--cap-drop", "cap_drop", "append", None, None),
    ("--seccomp", "seccomp", "value", "default", None),
    ("--kernel", "kernel", "value", None, None),
    ("-t --tty", "tty", "flag", False, None),
    ("--init", "init", "flag", False, None),
    ("-i --interactive", "interactive", "flag", False, None),
):
    for _name in _names.split():
        _RUN_FLAGS[_name] = (_dest, _kind, _choices)
    _RUN_DEFAULTS[_dest] = _default
    if _kind == "append":
        _RUN_APPEND.add(_dest)
del _names, _dest, _kind, _default, _choices, _name


class _Args:
    """Parsed flags as attributes, the shape of argparse.Namespace (types.SimpleNamespace is one import more)."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def _fast_run_args(argv: Sequence[str]) -> Any:
    """``minibox run``'s arguments parsed without argparse, or None to leave them to argparse.

    Only the plain forms are taken: exact option names (``--memory 64M``,
    ``--memory=64M``, ``-e A=1``), then the command.  Anything else --
    ``--help``, an abbreviation, ``-it``, a value that starts with '-', a
    choice argparse would refuse -- goes to argparse, which parses it or
    explains the error exactly as before.
    """
    values = {dest: [] if dest in _RUN_APPEND else default for dest, default in _RUN_DEFAULTS.items()}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--" or not token.startswith("-") or token == "-":
            break  # the command (argparse's REMAINDER keeps a leading '--'; _spec_from_args drops it)
        name, equals, attached = token.partition("=")
        if equals and not name.startswith("--"):
            return None
        known = _RUN_FLAGS.get(name)
        if known is None:
            return None
        dest, kind, choices = known
        if kind == "flag":
            if equals:
                return None
            values[dest] = True
            i += 1
            continue
        if equals:
            value = attached
            i += 1
        else:
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                return None
            value = argv[i + 1]
            i += 2
        if choices is not None and value not in choices:
            return None
        if kind == "append":
            values[dest].append(value)
        else:
            values[dest] = value
    return _Args(command="run", **values, cmd=list(argv[i:]))


def _spec_from_args(args: argparse.Namespace) -> Any:
    from .spec import Limits, Mount, Spec

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("run: no command given; usage: minibox run [OPTIONS] [--] CMD [ARG...]")
    limits = Limits(
        memory=args.memory,
        memory_swap=args.memory_swap,
        cpus=_number("--cpus", float, args.cpus),
        cpu_weight=_number("--cpu-weight", int, args.cpu_weight),
        pids=_number("--pids", int, args.pids),
        cpuset=args.cpuset,
    )
    mounts = [_parse_volume(v) for v in args.volume] + [Mount.tmpfs(t) for t in args.tmpfs]
    seccomp: Any = args.seccomp
    if seccomp not in ("default", "unconfined"):
        import json

        try:
            with open(seccomp) as f:
                seccomp = json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"--seccomp {args.seccomp!r}: {e}") from e
    namespaces = None
    if args.userns:
        from .spec import DEFAULT_NAMESPACES

        namespaces = ["user", *DEFAULT_NAMESPACES]
        if args.net == "host":
            namespaces.remove("net")
    return Spec(
        argv=cmd,
        rootfs=os.path.abspath(args.rootfs) if args.rootfs else None,
        env=_parse_env(args.env),
        cwd=args.workdir,
        hostname=args.hostname,
        user=_parse_user(args.user),
        limits=limits,
        network=args.net,
        mounts=mounts,
        readonly_rootfs=args.read_only,
        rootfs_overlay=args.rootfs_overlay,
        rootfs_overlay_size=args.rootfs_overlay_size,
        timeout=_number("--timeout", float, args.timeout),
        namespaces=namespaces,
        cap_add=args.cap_add,
        cap_drop=args.cap_drop,
        seccomp=seccomp,
        tty=args.tty,
        init=args.init,
        kernel=os.path.abspath(args.kernel) if args.kernel else None,
        ports=[_parse_port(p) for p in args.publish],
        ip=args.ip,
        host_access=args.host_access,
    )


_FLAG_OF_FIELD = {
    "limits.memory": "--memory", "limits.memory_swap": "--memory-swap", "limits.cpus": "--cpus",
    "limits.cpu_weight": "--cpu-weight", "limits.pids": "--pids", "limits.cpuset": "--cpuset",
    "rootfs": "--rootfs", "hostname": "--hostname", "cwd": "-w", "user": "--user", "timeout": "--timeout",
    "network": "--net", "ip": "--ip", "host_access": "--host-access", "kernel": "--kernel",
    "cap_add": "--cap-add", "cap_drop": "--cap-drop",
    "seccomp": "--seccomp", "argv": "CMD", "rootfs_overlay_size": "--rootfs-overlay-size",
}


def _flag_for(field: str) -> str:
    if field.startswith("mounts["):
        return "-v/--tmpfs"
    if field.startswith("ports["):
        return "-p"
    if field.startswith("env"):
        return "-e"
    return _FLAG_OF_FIELD.get(field, field)


def cmd_run(args: argparse.Namespace) -> int:
    from .errors import CommandNotFoundError, MiniboxError, SpecError

    try:
        spec = _spec_from_args(args)
    except UsageError as e:
        _say(str(e))
        return EXIT_SETUP_FAILED
    except SpecError as e:
        _say(f"{_flag_for(e.field)}: {e.message}")
        return EXIT_SETUP_FAILED
    except MiniboxError as e:
        _say(f"{type(e).__name__}: {e}")
        return EXIT_SETUP_FAILED
    stdin: Any = 0 if args.interactive or args.tty else None
    try:
        if args.isolation == "vm":
            from .vm import run_vm

            result = run_vm(spec, stdin=stdin, stdout=1, stderr=2, announce=True)
        else:
            result = _run_container(spec, stdin)
    except CommandNotFoundError as e:
        _say(f"{e}")
        return e.exit_status
    except SpecError as e:
        _say(f"{_flag_for(e.field)}: {e.message}")
        return EXIT_SETUP_FAILED
    except MiniboxError as e:
        _say(f"{type(e).__name__}: {e}")
        return EXIT_SETUP_FAILED
    except OSError as e:  # a bug if it happens: still one line and 125, not a traceback
        _say(f"{type(e).__name__}: {e}")
        return EXIT_SETUP_FAILED
    if result.reason == "oom":
        _say(f"the command was killed by the OOM killer: it hit the memory limit ({args.memory})")
        return 137
    if result.reason == "timeout":
        _say(f"the command ran past its --timeout of {args.timeout}s and was killed")
    return result.shell_status


class _Relay:
    """Pipes between the caller's terminal and a container started without ``-t``.

    Handing the terminal itself to the container would let it change the
    caller's terminal (tcsetattr(3): raw mode, echo off, a different speed)
    and read keystrokes meant for the shell.  Like ``docker run`` without
    ``-t``, the container gets pipes instead, and a thread per stream copies
    the bytes; an fd that is no terminal (a file, a pipe) is passed as is.
    """

    def __init__(self, fds: Sequence[int]) -> None:
        self.child: dict[int, int] = {}      # our fd -> the end the container gets
        self._ours: list[int] = []           # ends the container must not keep open through us
        self._threads: list[threading.Thread] = []
        self._outputs: list[threading.Thread] = []
        for fd in fds:
            if not os.isatty(fd):
                self.child[fd] = fd
                continue
            read_end, write_end = os.pipe()
            if fd == 0:  # terminal -> pipe; closing the pipe is the container's EOF
                self.child[fd] = read_end
                self._ours.append(read_end)
                copy = (fd, write_end, write_end)
            else:  # pipe -> terminal, until every process in the container closed it
                self.child[fd] = write_end
                self._ours.append(write_end)
                copy = (read_end, fd, read_end)
            import threading  # only with a terminal to relay: a start without one need not import it

            thread = threading.Thread(target=self._copy, args=copy, daemon=True)
            self._threads.append(thread)
            if fd != 0:
                self._outputs.append(thread)

    @staticmethod
    def _copy(source: int, target: int, pipe: int) -> None:
        try:
            while data := os.read(source, 65536):
                view = memoryview(data)
                while view:
                    view = view[os.write(target, view):]
        except OSError:
            pass  # the other side went away: nothing left to copy
        finally:
            os.close(pipe)

    def started(self) -> None:
        """The container holds its ends now: drop ours, so EOF can reach the readers."""
        for fd in self._ours:
            os.close(fd)
        self._ours = []
        for thread in self._threads:
            thread.start()

    def finish(self) -> None:
        """Wait (briefly) until the container's last output reached the terminal.

        The stdin thread is not waited for: it sits in read(0) until the
        user types, and the command exits without it.
        """
        for fd in self._ours:
            os.close(fd)
        self._ours = []
        for thread in self._outputs:
            if thread.ident is not None:
                thread.join(timeout=2)


def _run_container(spec: Any, stdin: Any) -> Any:
    """Run a container with the caller's stdio; relay a terminal through pipes, or a pty with -t."""
    from .container.container import Container

    if not spec.tty:
        relay = _Relay([0, 1, 2] if stdin == 0 else [1, 2])
        box = Container(spec, stdin=relay.child.get(0), stdout=relay.child[1], stderr=relay.child[2],
                        cgroup=False)
        try:
            with box:
                relay.started()
                return box.wait()
        finally:
            relay.finish()
    box = Container(spec, stdin=stdin, stdout=1, stderr=2, cgroup=False)
    import signal
    import termios
    import tty

    saved = termios.tcgetattr(0) if os.isatty(0) else None
    try:
        if saved is not None:
            tty.setraw(0)  # keystrokes go to the container's pty unchanged
        with box:
            signal.signal(signal.SIGWINCH, lambda *_: box.resize_tty(0))
            return box.wait()
    finally:
        signal.signal(signal.SIGWINCH, signal.SIG_DFL)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


def cmd_rootfs(args: argparse.Namespace) -> int:
    from .errors import MiniboxError
    from .images.busybox import build_busybox_rootfs

    try:
        path = build_busybox_rootfs(args.dir)
    except MiniboxError as e:
        _say(str(e))
        return EXIT_SETUP_FAILED
    except OSError as e:
        _say(f"cannot build {args.dir}: {e.strerror or e}")
        return EXIT_SETUP_FAILED
    print(path)
    return 0


def cmd_kernel(args: argparse.Namespace) -> int:
    from .errors import MiniboxError

    try:
        from .vm.kernel import ensure_kernel

        info = ensure_kernel()
    except MiniboxError as e:
        _say(str(e))
        return EXIT_SETUP_FAILED
    print(info.path)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from .errors import MiniboxError
    from .gc import collect

    try:
        report = collect()
    except MiniboxError as e:
        _say(f"{type(e).__name__}: {e}")
        return EXIT_SETUP_FAILED
    for line in report.lines():
        print(line)
    return 1 if report.failed else 0


def cmd_ps(args: argparse.Namespace) -> int:
    from .errors import MiniboxError
    from .gc import list_sandboxes

    try:
        rows = list_sandboxes()
    except MiniboxError as e:
        _say(f"{type(e).__name__}: {e}")
        return EXIT_SETUP_FAILED
    if args.json:
        import json

        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'ID':<14}{'KIND':<11}{'STATE':<7}{'PID':<9}{'OWNER':<9}{'DETACHED':<10}WHY")
    for row in rows:
        procs = row.get("processes") or [{}]
        owner: dict[str, Any] = row["owner"] if isinstance(row.get("owner"), dict) else {}
        print(f"{row['id']:<14}{row.get('kind')!s:<11}{'live' if row['alive'] else 'dead':<7}"
              f"{procs[0].get('pid', '-')!s:<9}{owner.get('pid', '-')!s:<9}"
              f"{'yes' if row.get('detached') else 'no':<10}{row['why']}")
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    import signal

    from .errors import MiniboxError
    from .gc import kill

    name = args.signal.upper().removeprefix("SIG")
    try:
        sig = int(name) if name.isdigit() else int(getattr(signal, f"SIG{name}"))
    except AttributeError:
        _say(f"--signal {args.signal!r}: not a signal name or number")
        return EXIT_SETUP_FAILED
    try:
        kill(args.id, sig)
    except MiniboxError as e:
        _say(str(e))
        return 1
    return 0


def cmd_preflight(args: argparse.Namespace) -> int:
    from .preflight import check

    report = check()
    print(report.format())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demos import DEMOS, run_demo

    if not args.name:
        print("Demos (run one with 'minibox demo NAME', as root):")
        for name, summary in DEMOS.items():
            print(f"  {name:<12} {summary}")
        return 0
    if args.name not in DEMOS:
        _say(f"no demo named {args.name!r}; choose one of: {', '.join(DEMOS)}")
        return 2
    return run_demo(args.name)


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare.command import main as compare_main

    return compare_main(args)


COMMANDS = {
    "run": cmd_run, "rootfs": cmd_rootfs, "kernel": cmd_kernel, "gc": cmd_gc, "ps": cmd_ps, "kill": cmd_kill,
    "preflight": cmd_preflight, "demo": cmd_demo, "compare": cmd_compare,
}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = args_list[0] if args_list and args_list[0] in COMMANDS else None
    args = _fast_run_args(args_list[1:]) if command == "run" else None
    if args is None:
        parser = build_parser(command)
        args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 0
    from .firstuse import cli_reporter

    try:
        with cli_reporter():  # first-use steps (rootfs, kernel, helpers) are said on stderr, never stdout
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130


def entry_point() -> None:
    """The console script: run, flush, and leave without tearing the interpreter down.

    Finalizing dozens of modules costs milliseconds a short-lived command
    does not need to spend; every file minibox opened is closed by then.
    The cycle collector runs at a short command's pace (:func:`minibox._lean.begin`).
    """
    from ._lean import begin, leave

    begin()
    leave(main())


if __name__ == "__main__":
    entry_point()
