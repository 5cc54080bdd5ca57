"""Reading a bundle's config.json: the OCI runtime spec, validated, as plain data.

Spec: the OCI runtime specification (config.md, config-linux.md), versions
1.0 to 1.1.  An engine (podman, containerd) writes a *bundle*: a directory
holding ``config.json`` and, usually, the root file system.  This module
turns that JSON into :class:`Config` -- checked field by field before
anything exists, so that a malformed bundle fails with one line naming the
field (``SpecError("config.json: linux.namespaces[2].type", ...)``) and
leaves nothing behind.  What minibox cannot honour is refused the same way,
never silently ignored; the few things that are only advisory (an AppArmor
profile on a host without AppArmor) are returned as ``warnings``.

The translation into the C child's plan lives in oci/create.py; the mount
list in oci/mounts.py.
"""

from __future__ import annotations

import os

from .. import _json as json  # json's C half without re and enum: each verb is a fresh interpreter
from .._record import field, record
from ..errors import SpecError
from ..spec import DEFAULT_PATH, IdMap, Limits

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from typing import Any

_SYSCTL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


def _valid_sysctl_name(key: str) -> bool:
    # Was the regular expression "^[a-z0-9_.-]+$" (importing re costs each
    # verb ~3 ms), whose "$" let a final newline through too; not any more:
    # the name becomes a path under /proc/sys.
    return bool(key) and _SYSCTL_CHARS.issuperset(key)

# config-linux.md namespace types -> the names of /proc/PID/ns
NAMESPACE_TYPES = {"pid": "pid", "network": "net", "mount": "mnt", "ipc": "ipc", "uts": "uts",
                   "user": "user", "cgroup": "cgroup", "time": "time"}
# Namespaces that a process can join right after the clone (csrc/spawn.c's
# join_fds).  The others -- pid, user, mnt, time -- are joined before it by an
# intermediate process (setns_fds): a pid or time namespace takes only the
# joiner's children, a user or mount namespace only a process that shares
# nothing with another.
JOINABLE_AFTER_CLONE = ("net", "ipc", "uts", "cgroup")
NS_GET_NSTYPE = 0xB703  # ioctl_ns(2): _IO(0xb7, 0x3), the CLONE_NEW* flag of a namespace fd
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


def field_error(where: str, message: str) -> SpecError:
    return SpecError(f"config.json: {where}", message)


def _get(obj: Any, key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    """``obj[key]`` checked to be of ``kind``; ``default`` when absent or null."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise field_error(f"{where}{key}", f"expected {names}, got {type(value).__name__} {value!r}")
    return value


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise field_error(where, f"expected a list of strings, got {value!r}")
    return list(value)


def _int(value: Any, where: str, low: int = 0, high: int = (1 << 32) - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise field_error(where, f"expected an integer within {low}..{high}, got {value!r}")
    return value


@record()
class Process:
    """``process`` (config.md#process): what runs, as whom, with which privileges."""

    args: list[str]
    env: list[str]
    cwd: str
    uid: int = 0
    gid: int = 0
    groups: list[int] = field(default_factory=list)
    umask: int | None = None
    terminal: bool = False
    # capability sets by name; None: the process keeps what it has (runc's behaviour)
    capabilities: dict[str, list[str]] | None = None
    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    no_new_privileges: bool = False
    oom_score_adj: int | None = None

    @property
    def path(self) -> str:
        for entry in reversed(self.env):
            if entry.startswith("PATH="):
                return entry[5:]
        return DEFAULT_PATH


def parse_process(obj: Any, where: str = "process.", warnings: list[str] | None = None) -> Process:
    """Validate a ``process`` object (also the file of ``exec --process``)."""
    if not isinstance(obj, dict):
        raise field_error(where.rstrip("."), "expected an object")
    args = _strings(obj.get("args"), f"{where}args")
    if not args or not args[0]:
        raise field_error(f"{where}args", "must name the program to run (a non-empty list)")
    if obj.get("commandLine") is not None:
        raise field_error(f"{where}commandLine", "is for Windows; use process.args")
    env = _strings(obj.get("env"), f"{where}env")
    for i, entry in enumerate(env):
        if "=" not in entry or "\x00" in entry:
            raise field_error(f"{where}env[{i}]", f"expected KEY=VALUE, got {entry!r}")
    cwd = _get(obj, "cwd", str, where, "/")
    if not cwd.startswith("/"):
        raise field_error(f"{where}cwd", f"must be an absolute path inside the container, got {cwd!r}")
    user = _get(obj, "user", dict, where, {})
    if user.get("username") is not None:
        raise field_error(f"{where}user.username", "is for Windows; give uid and gid")
    uid = _int(user.get("uid", 0), f"{where}user.uid")
    gid = _int(user.get("gid", 0), f"{where}user.gid")
    groups = [_int(g, f"{where}user.additionalGids[{i}]") for i, g in enumerate(user.get("additionalGids") or [])]
    if len(groups) > 64:
        raise field_error(f"{where}user.additionalGids", "at most 64 groups are supported")
    umask = user.get("umask")
    if umask is not None:
        umask = _int(umask, f"{where}user.umask", 0, 0o777)
    terminal = _get(obj, "terminal", bool, where, False)
    caps_obj = _get(obj, "capabilities", dict, where)
    capabilities: dict[str, list[str]] | None = None
    if caps_obj is not None:
        from ..policy.capabilities import CAPABILITIES

        capabilities = {}
        for kind in ("bounding", "effective", "permitted", "inheritable", "ambient"):
            names = _strings(caps_obj.get(kind), f"{where}capabilities.{kind}")
            for name in names:
                if name not in CAPABILITIES:
                    raise field_error(f"{where}capabilities.{kind}",
                                      f"unknown capability {name!r} (names are CAP_... as in capabilities(7))")
            capabilities[kind] = names
    rlimits: dict[str, tuple[int, int]] = {}
    for i, item in enumerate(_get(obj, "rlimits", list, where, [])):
        at = f"{where}rlimits[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise field_error(at, "expected {type, soft, hard}")
        rlimits[item["type"]] = (_int(item.get("soft"), f"{at}.soft", 0, (1 << 64) - 1),
                                 _int(item.get("hard"), f"{at}.hard", 0, (1 << 64) - 1))
    no_new = _get(obj, "noNewPrivileges", bool, where, False)
    oom = obj.get("oomScoreAdj")
    if oom is not None:
        oom = _int(oom, f"{where}oomScoreAdj", -1000, 1000)
    for advisory in ("apparmorProfile", "selinuxLabel"):
        if obj.get(advisory) and warnings is not None:
            warnings.append(f"{where}{advisory} is ignored: this host enforces no LSM profile for minibox")
    return Process(args=args, env=env, cwd=cwd, uid=uid, gid=gid, groups=groups, umask=umask,
                   terminal=terminal, capabilities=capabilities, rlimits=rlimits,
                   no_new_privileges=no_new, oom_score_adj=oom)


@record()
class OciMount:
    destination: str
    type: str
    source: str | None
    options: list[str]


@record()
class Device:
    path: str
    type: str          # c, b, u, p
    major: int
    minor: int
    mode: int
    uid: int
    gid: int


@record()
class Hook:
    path: str
    args: list[str]
    env: list[str]
    timeout: int | None


@record()
class Config:
    """A validated config.json, with the root resolved to an absolute host path."""

    bundle: str
    oci_version: str
    root: str
    readonly: bool
    process: Process
    hostname: str | None
    domainname: str | None
    mounts: list[OciMount]
    namespaces: dict[str, str | None]          # /proc/PID/ns name -> path to join, or None: new
    uid_map: list[IdMap]
    gid_map: list[IdMap]
    limits: Limits
    cgroups_path: str | None
    devices: list[Device]
    masked_paths: list[str]
    readonly_paths: list[str]
    seccomp: dict[str, Any] | None
    sysctl: dict[str, str]
    propagation: str | None
    hooks: dict[str, list[Hook]]
    annotations: dict[str, str]
    warnings: list[str] = field(default_factory=list)


def load(bundle: str, created: bool = False) -> Config:
    """Read and validate ``bundle``/config.json; raise SpecError naming the field.

    ``created``: the container exists already, so the namespaces it joined
    by path are not checked again: the process that held one (a pod's infra
    container) may have gone since.
    """
    return load_text(bundle, created)[0]


def load_text(bundle: str, created: bool = False, path: str | None = None) -> tuple[Config, bytes]:
    """:func:`load`, and the exact bytes it parsed (``create`` keeps them for ``exec``).

    ``path``: read this file instead of the bundle's config.json (``exec``
    reads the copy ``create`` saved in the container's state directory).
    """
    bundle = os.path.abspath(bundle)
    path = path or os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            text = f.read()
        raw = json.loads(text)
    except FileNotFoundError as e:
        raise SpecError("bundle", f"{path} does not exist: no such file or directory") from e
    except (OSError, ValueError) as e:
        raise SpecError("config.json", f"cannot be read as JSON: {e}") from e
    if not isinstance(raw, dict):
        raise field_error("(top)", "expected a JSON object")
    return parse(raw, bundle, check_namespace_paths=not created), text


def parse(raw: dict[str, Any], bundle: str, check_namespace_paths: bool = True) -> Config:
    warnings: list[str] = []
    version = _get(raw, "ociVersion", str, "", "1.0.0")
    if not version.startswith("1."):
        raise field_error("ociVersion", f"{version!r} is not supported; minibox reads 1.0 to 1.1")
    root_obj = _get(raw, "root", dict, "")
    if root_obj is None:
        raise field_error("root", "missing: name the root file system (root.path)")
    root_path = _get(root_obj, "path", str, "root.")
    if not root_path:
        raise field_error("root.path", "missing")
    root = os.path.normpath(os.path.join(bundle, root_path))
    if not os.path.isabs(root_path) and os.path.commonpath([root, bundle]) != bundle:
        raise field_error("root.path", f"{root_path!r} leads outside the bundle {bundle}")
    if not os.path.isdir(root):
        raise field_error("root.path", f"{root} is not a directory: no such file or directory")
    root = os.path.realpath(root)  # mounts are resolved inside it, symlink by symlink
    readonly = _get(root_obj, "readonly", bool, "root.", False)
    process = parse_process(raw.get("process"), "process.", warnings)
    hostname = _get(raw, "hostname", str, "")
    domainname = _get(raw, "domainname", str, "")
    for key, name in (("hostname", hostname), ("domainname", domainname)):
        if name and (len(name.encode()) > 64 or "\x00" in name):
            raise field_error(key, f"at most 64 bytes and no NUL (sethostname(2)); got {len(name.encode())} bytes")

    mounts = []
    for i, m in enumerate(_get(raw, "mounts", list, "", [])):
        at = f"mounts[{i}]."
        if not isinstance(m, dict):
            raise field_error(at.rstrip("."), "expected an object")
        dest = _get(m, "destination", str, at)
        if not dest or not dest.startswith("/"):
            raise field_error(f"{at}destination", f"must be an absolute path, got {dest!r}")
        options = _strings(m.get("options"), f"{at}options")
        mtype = _get(m, "type", str, at, "")
        if not mtype or mtype == "none":
            if "bind" not in options and "rbind" not in options:
                raise field_error(f"{at}type", "missing (give a file system type, or the bind/rbind option)")
            mtype = "bind"
        mounts.append(OciMount(dest, mtype, _get(m, "source", str, at), options))

    linux = _get(raw, "linux", dict, "", {})
    namespaces: dict[str, str | None] = {}
    joined_at: dict[str, str] = {}   # where each namespace's entry is, for errors
    for i, ns in enumerate(_get(linux, "namespaces", list, "linux.", [])):
        at = f"linux.namespaces[{i}]"
        if not isinstance(ns, dict):
            raise field_error(at, "expected an object {type, path}")
        kind = ns.get("type")
        if kind not in NAMESPACE_TYPES:
            raise field_error(f"{at}.type", f"unknown namespace {kind!r}; one of {', '.join(NAMESPACE_TYPES)}")
        name = NAMESPACE_TYPES[kind]
        if name in namespaces:
            raise field_error(f"{at}.type", f"{kind} is listed twice")
        ns_path = _get(ns, "path", str, f"{at}.")
        if ns_path and check_namespace_paths and _is_own_namespace(ns_path, kind, name, f"{at}.path"):
            if name == "mnt":
                raise field_error(f"{at}.path", f"{ns_path} is minibox-oci's own mount namespace: the container "
                                  "would run in the host's file system; give another one or let it create one")
            if name == "user":
                continue  # our own user namespace: as if none were listed (setns would say EINVAL)
        namespaces[name] = ns_path or None
        joined_at[name] = f"{at}.path"
    if "mnt" not in namespaces:
        raise field_error("linux.namespaces", "a mount namespace is required (add {\"type\": \"mount\"})")

    def id_maps(key: str) -> list[IdMap]:
        maps = []
        for i, m in enumerate(_get(linux, key, list, "linux.", [])):
            at = f"linux.{key}[{i}]"
            if not isinstance(m, dict):
                raise field_error(at, "expected {containerID, hostID, size}")
            inside, outside = _int(m.get("containerID"), f"{at}.containerID"), _int(m.get("hostID"), f"{at}.hostID")
            size = _int(m.get("size"), f"{at}.size", 1)
            if max(inside, outside) + size > 1 << 32:
                raise field_error(at, f"containerID/hostID + size must stay within 2^32 ids (user_namespaces(7)); "
                                  f"got {inside}/{outside} + {size}")
            maps.append(IdMap(inside, outside, size))
        return maps

    uid_map, gid_map = id_maps("uidMappings"), id_maps("gidMappings")
    if (uid_map or gid_map) and namespaces.get("user"):
        raise field_error("linux.uidMappings" if uid_map else "linux.gidMappings",
                          f"the user namespace is joined by path ({joined_at['user']}) and has its own id "
                          "mappings already; remove uidMappings and gidMappings")
    if (uid_map or gid_map) and namespaces.get("user", "absent") is not None:
        raise field_error("linux.uidMappings", "id mappings need a new user namespace in linux.namespaces")

    limits, cgroups_warnings = _limits(_get(linux, "resources", dict, "linux.", {}))
    warnings += cgroups_warnings
    cgroups_path = _get(linux, "cgroupsPath", str, "linux.")
    if cgroups_path and ":" in cgroups_path and not cgroups_path.startswith("/"):
        raise field_error("linux.cgroupsPath", f"{cgroups_path!r} is a systemd slice:prefix:name path; "
                          "minibox-oci manages cgroupfs only (configure the engine with cgroup_manager=cgroupfs)")
    if cgroups_path:
        parts = [p for p in cgroups_path.split("/") if p]
        if not parts or any(p in (".", "..") or "\x00" in p for p in parts):
            raise field_error("linux.cgroupsPath", f"{cgroups_path!r} must name a cgroup below the hierarchy root "
                              "(/a/b) or below minibox's own parent (a/b), without '.' or '..' components")

    devices = []
    for i, d in enumerate(_get(linux, "devices", list, "linux.", [])):
        at = f"linux.devices[{i}]."
        dpath = _get(d, "path", str, at)
        dtype = _get(d, "type", str, at)
        if not dpath or not dpath.startswith("/dev/") or ".." in dpath.split("/"):
            raise field_error(f"{at}path", f"must be a path under /dev, got {dpath!r}")
        if dtype not in ("c", "b", "u", "p"):
            raise field_error(f"{at}type", f"expected c, b, u or p, got {dtype!r}")
        devices.append(Device(dpath, dtype, _int(d.get("major", 0), f"{at}major"),
                              _int(d.get("minor", 0), f"{at}minor"), _int(d.get("fileMode", 0o666), f"{at}fileMode"),
                              _int(d.get("uid", 0), f"{at}uid"), _int(d.get("gid", 0), f"{at}gid")))
    masked = _strings(linux.get("maskedPaths"), "linux.maskedPaths")
    readonly_paths = _strings(linux.get("readonlyPaths"), "linux.readonlyPaths")
    seccomp = _get(linux, "seccomp", dict, "linux.")
    sysctl = _get(linux, "sysctl", dict, "linux.", {})
    for key, value in sysctl.items():
        if not isinstance(value, str) or not _valid_sysctl_name(key) or ".." in key:
            raise field_error(f"linux.sysctl[{key!r}]", "expected a dotted name and a string value")
    propagation = _get(linux, "rootfsPropagation", str, "linux.")
    if propagation and propagation not in ("private", "rprivate", "slave", "rslave", "shared", "rshared",
                                           "unbindable", "runbindable"):
        raise field_error("linux.rootfsPropagation", f"unknown propagation {propagation!r}")
    for unsupported in ("intelRdt", "personality", "mountLabel"):
        if linux.get(unsupported):
            raise field_error(f"linux.{unsupported}", "is not supported by minibox-oci; remove it")

    if namespaces["mnt"]:
        # The joined namespace's root is the container's root, set up by
        # whoever made it: mounting into it would change that container's
        # file system under its feet (runc does, and fails: its issue 1700).
        for key, value in (("mounts", mounts), ("root.readonly", readonly), ("linux.devices", devices),
                           ("linux.maskedPaths", masked), ("linux.readonlyPaths", readonly_paths),
                           ("linux.sysctl", sysctl), ("linux.rootfsPropagation", propagation)):
            if value:
                raise field_error(key, f"cannot be applied in a mount namespace joined by path "
                                  f"({joined_at['mnt']}): its file system is the namespace's own; remove it")

    hooks: dict[str, list[Hook]] = {}
    hooks_obj = _get(raw, "hooks", dict, "", {})
    for kind, items in hooks_obj.items():
        if kind not in HOOK_KINDS:
            raise field_error(f"hooks.{kind}", f"unknown hook kind; one of {', '.join(HOOK_KINDS)}")
        if kind in ("createContainer", "startContainer") and items:
            raise field_error(f"hooks.{kind}", "hooks run inside the container are not supported by "
                              "minibox-oci; use createRuntime/poststart")
        hooks[kind] = []
        for i, h in enumerate(items or []):
            at = f"hooks.{kind}[{i}]."
            hpath = _get(h, "path", str, at)
            if not hpath or not os.path.isabs(hpath):
                raise field_error(f"{at}path", f"must be an absolute path, got {hpath!r}")
            timeout = h.get("timeout")
            hooks[kind].append(Hook(hpath, _strings(h.get("args"), f"{at}args") or [hpath],
                                    _strings(h.get("env"), f"{at}env"),
                                    None if timeout is None else _int(timeout, f"{at}timeout", 1)))
    annotations = _get(raw, "annotations", dict, "", {})
    if not all(isinstance(v, str) for v in annotations.values()):
        raise field_error("annotations", "values must be strings")
    return Config(bundle=bundle, oci_version=version, root=root, readonly=readonly, process=process,
                  hostname=hostname, domainname=domainname, mounts=mounts, namespaces=namespaces,
                  uid_map=uid_map, gid_map=gid_map, limits=limits, cgroups_path=cgroups_path,
                  devices=devices, masked_paths=masked, readonly_paths=readonly_paths, seccomp=seccomp,
                  sysctl=dict(sysctl), propagation=propagation, hooks=hooks, annotations=dict(annotations),
                  warnings=warnings)


def _is_own_namespace(path: str, kind: str, name: str, where: str) -> bool:
    """Check that ``path`` is a namespace file of type ``kind``; whether it is minibox-oci's own.

    A namespace file is an nsfs inode (/proc/PID/ns/NAME, or a bind mount
    of one); ioctl_ns(2) NS_GET_NSTYPE answers its CLONE_NEW* type, and
    fails (ENOTTY) on any other file.
    """
    import fcntl

    from ..container.namespaces import NAMESPACE_TABLE

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise field_error(where, f"{path}: {(e.strerror or str(e)).lower()}") from e
    try:
        try:
            flag = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError as e:
            raise field_error(where, f"{path} is not a namespace file (give one like /proc/PID/ns/{name}, "
                              "or a bind mount of one)") from e
        if flag != NAMESPACE_TABLE[name][0]:
            actual = next((n for n, (f, _) in NAMESPACE_TABLE.items() if f == flag), hex(flag))
            raise field_error(where, f"{path} is a {actual} namespace, not a {kind} namespace")
        st = os.fstat(fd)
    finally:
        os.close(fd)
    own = os.stat(f"/proc/self/ns/{name}")
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _limits(res: dict[str, Any]) -> tuple[Limits, list[str]]:
    """``linux.resources`` -> :class:`Limits` (memory, cpu, pids), plus what is only advisory."""
    warnings: list[str] = []
    memory = _get(res, "memory", dict, "linux.resources.", {})
    cpu = _get(res, "cpu", dict, "linux.resources.", {})
    pids = _get(res, "pids", dict, "linux.resources.", {})
    limit = memory.get("limit")
    swap = memory.get("swap")
    kwargs: dict[str, Any] = {}
    if isinstance(limit, int) and limit > 0:
        kwargs["memory"] = limit
        if isinstance(swap, int) and swap > 0:
            kwargs["memory_swap"] = swap
    if memory.get("reservation"):
        warnings.append("linux.resources.memory.reservation is a soft hint; minibox-oci does not set it")
    quota, period = cpu.get("quota"), cpu.get("period")
    if isinstance(quota, int) and quota > 0:
        kwargs["cpus"] = quota / (period if isinstance(period, int) and period > 0 else 100000)
    shares = cpu.get("shares")
    if isinstance(shares, int) and shares >= 2:
        # runc's shares -> weight conversion (cgroup v2 weight, 1..10000)
        kwargs["cpu_weight"] = 1 + (min(shares, 262144) - 2) * 9999 // 262142
    if cpu.get("cpus"):
        kwargs["cpuset"] = cpu["cpus"]
    pids_limit = pids.get("limit")
    if isinstance(pids_limit, int) and pids_limit > 0:
        kwargs["pids"] = pids_limit
    if any(isinstance(rule, dict) and rule.get("allow") for rule in res.get("devices") or []):
        warnings.append("linux.resources.devices is not enforced by a device cgroup; the container's /dev "
                        "holds only the default nodes and linux.devices")
    for unsupported in ("hugepageLimits", "blockIO", "network", "rdma", "unified"):
        if res.get(unsupported):
            raise field_error(f"linux.resources.{unsupported}", "is not supported by minibox-oci; remove it")
    try:
        return Limits(**kwargs), warnings
    except SpecError as e:
        raise field_error(f"linux.resources ({e.field})", e.message) from e
