"""The ``minibox run`` path imports no heavy standard modules (a structure check, no timing).

A fresh interpreter pays for every module it imports: ``dataclasses`` alone
brings ``inspect``, ``ast``, ``dis`` and ``tokenize`` (about 7 ms of a
35 ms ``minibox run`` here).  These tests run the command line's import path
in a new interpreter and name each forbidden module that appears.  The list
lives in bench/importtime.py, which also prints where the milliseconds go.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import minibox
from minibox import Limits, Mount, Result, Spec
from minibox._record import replace

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
from importtime import FORBIDDEN, MINIBOX_MODULES_BUDGET, OCI, ONLY_WHEN_USED  # noqa: E402  (bench/ is not a package)

# Everything `minibox run` imports before the container's clone: the flags,
# the Spec, and the modules the container path loads at the top.
IMPORT_PATH = """
import sys
before = set(sys.modules)
from minibox.cli import _fast_run_args, _spec_from_args
args = _fast_run_args(["--rootfs", "/", "-e", "A=1", "-v", "/tmp:/x:ro", "--memory", "64M", "--", "/bin/true"])
spec = _spec_from_args(args)
import minibox, minibox.container.container, minibox.owner, minibox.records, minibox._static
import minibox.policy.capabilities, minibox.policy.seccomp.cache, minibox.firstuse
from minibox.container.plan import process_plan
process_plan(spec, spec.argv)
print(" ".join(sorted(set(sys.modules) - before)))
"""


def _imported(code: str, *args: str) -> set[str]:
    """The modules ``code`` imported, in ``python -S`` (as the console scripts start): site, and a json
    import to print them, would load some of the very modules the budget forbids before the count begins."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-S", "-c", code, *args], capture_output=True, text=True, env=env,
                         check=True, timeout=60).stdout
    return set(out.strip().splitlines()[-1].split())


def test_the_run_path_imports_nothing_forbidden() -> None:
    _imported(IMPORT_PATH)  # the first start on a host compiles the seccomp program (and caches it)
    imported = _imported(IMPORT_PATH)
    assert "minibox.container.spawn" in imported  # the path was really walked
    assert not imported & FORBIDDEN, f"the run path imports {sorted(imported & FORBIDDEN)}"
    assert "minibox.container.userns" not in imported  # no user namespace in that Spec


def test_the_oci_verbs_import_nothing_forbidden() -> None:
    # minibox-oci create/start/state/kill/delete: a fresh interpreter for every verb an engine calls
    imported = _imported(f"import sys; before = set(sys.modules); {OCI}; "
                         "print(' '.join(sorted(set(sys.modules) - before)))")
    assert "minibox.container.cgroups" in imported and "minibox.oci.runtime" in imported
    assert not imported & FORBIDDEN, f"minibox-oci imports {sorted(imported & FORBIDDEN)}"


def test_import_minibox_is_lean_and_complete() -> None:
    # Every name but VirtualMachine (QEMU control is allowed its imports) stays lean...
    imported = _imported("import sys; before = set(sys.modules); import minibox; "
                         "names = [getattr(minibox, n) for n in minibox.__all__ if n != 'VirtualMachine']; "
                         "print(' '.join(sorted(set(sys.modules) - before)))")
    assert not imported & FORBIDDEN, f"minibox's container API imports {sorted(imported & FORBIDDEN)}"
    # ...every name resolves, lazily, to what the submodules define...
    assert all(getattr(minibox, name) is not None for name in minibox.__all__)
    assert minibox.Spec is Spec and minibox.Result is Result and "Container" in dir(minibox)
    # ...and the bare package loads only its errors.
    bare = _imported("import sys; before = set(sys.modules); import minibox; "
                     "print(' '.join(sorted(set(sys.modules) - before)))")
    os_family = {"os", "os.path", "posixpath", "genericpath", "stat", "_stat", "_collections_abc"}  # site's, without -S
    assert bare <= {"minibox", "minibox.errors", "errno", "__future__"} | os_family, sorted(bare)


@pytest.mark.skipif(os.geteuid() != 0, reason="minibox run needs root to create namespaces")
def test_a_whole_cli_run_imports_nothing_forbidden(busybox_rootfs: str) -> None:
    # as the console script runs it (entry_point: _lean.begin(), then main), counting cycle collections
    code = ("import sys, gc; from minibox._lean import begin; begin(); from minibox.cli import main; "
            "passes = []; gc.callbacks.append(lambda phase, info: passes.append(info)); "
            "code = main(['run', '--rootfs', sys.argv[1], '--', '/bin/true']); "
            "print(' '.join(sorted(sys.modules)), f'collections={len(passes) // 2}' if code == 0 else code)")
    imported = _imported(code, busybox_rootfs)
    assert "minibox.container.spawn" in imported
    assert not imported & FORBIDDEN, f"minibox run imports {sorted(imported & FORBIDDEN)}"
    assert not imported & ONLY_WHEN_USED, f"minibox run --rootfs imports {sorted(imported & ONLY_WHEN_USED)}"
    own = sorted(name for name in imported if name.startswith("minibox") and name != "minibox._minibox_native.lib")
    assert len(own) <= MINIBOX_MODULES_BUDGET, f"{len(own)} of minibox's modules, over the budget: {own}"
    # a collection walks the objects of every module imported so far: ~2 ms each here (_lean.begin)
    assert "collections=0" in imported


def test_records_keep_the_dataclass_contract() -> None:
    """spec.py and sandbox.py use minibox._record, not dataclasses: the same behaviour, checked."""
    spec = Spec(argv=["/bin/true"], limits=Limits(memory="64M"), mounts=[Mount.tmpfs("/t")])
    assert spec == Spec(argv=["/bin/true"], limits=Limits(memory="64M"), mounts=[Mount.tmpfs("/t")])
    assert spec != Spec(argv=["/bin/false"])
    assert hash(Limits(memory="64M")) == hash(Limits(memory=64 << 20))
    assert repr(Mount.tmpfs("/t")) == "Mount(kind='tmpfs', target='/t', source=None, readonly=False, size=None)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.hostname = "other"  # type: ignore[misc]
    changed = dataclasses.replace(spec, hostname="other")
    assert changed.hostname == "other" and changed.limits == spec.limits
    assert replace(spec, hostname="other") == changed
    assert [f.name for f in dataclasses.fields(Result)][:3] == ["exit_code", "signal", "reason"]
    assert dataclasses.asdict(Limits(pids=5))["pids"] == 5
    import inspect  # help() and IDEs show the fields, as for a dataclass

    shown = str(inspect.signature(Mount))
    assert shown.startswith("(kind: ") and shown.endswith(
        "target: 'str', source: 'str | None' = None, readonly: 'bool' = False, "
        "size: 'int | str | None' = None) -> None")
    assert Result(0, None, "exited").usage is not Result(0, None, "exited").usage  # a fresh default each
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        Spec(argv=["/bin/true"], bogus=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="missing required argument: 'argv'"):
        Spec()  # type: ignore[call-arg]


# -- the run command's fast path (no argparse) -------------------------------------------

def _argparse_run(argv: list[str]) -> dict[str, object]:
    from minibox.cli import build_parser

    return vars(build_parser("run").parse_args(["run", *argv]))


def test_the_fast_path_table_matches_the_argparse_parser() -> None:
    import argparse

    from minibox.cli import _RUN_DEFAULTS, _RUN_FLAGS, build_parser

    sub = next(a for a in build_parser("run")._actions if isinstance(a, argparse._SubParsersAction))
    kinds = {argparse._StoreAction: "value", argparse._StoreTrueAction: "flag", argparse._AppendAction: "append"}
    seen = set()
    for action in sub.choices["run"]._actions:
        if action.dest in ("help", "cmd"):
            continue
        for name in action.option_strings:
            seen.add(name)
            assert _RUN_FLAGS[name] == (action.dest, kinds[type(action)],
                                        tuple(action.choices) if action.choices else None), name
        default = action.default if not isinstance(action, argparse._AppendAction) else None
        assert _RUN_DEFAULTS[action.dest] == default, action.dest
    assert seen == set(_RUN_FLAGS)


@pytest.mark.parametrize("argv", [
    ["--", "/bin/true"],
    ["/bin/sh", "-c", "echo --memory 1"],
    ["--rootfs", "/r", "--memory", "64M", "--pids=10", "-e", "A=1", "-e", "B", "-v", "/a:/b:ro", "--", "ls", "-l"],
    ["-t", "-i", "--net", "bridge", "-p", "8080:80", "--cap-add", "NET_ADMIN", "--isolation=vm", "echo"],
    ["--read-only", "--userns", "--init", "--host-access", "--tmpfs", "/t", "-w", "/tmp", "--user", "1:2", "id"],
    [],
])
def test_the_fast_path_parses_as_argparse_does(argv: list[str]) -> None:
    from minibox.cli import _fast_run_args

    fast = _fast_run_args(argv)
    assert fast is not None
    assert vars(fast) == _argparse_run(argv)


@pytest.mark.parametrize("argv", [
    ["--help"], ["-it", "sh"], ["--mem", "64M", "true"], ["--memory", "-5", "true"], ["--net", "bogus", "true"],
    ["--tty=yes", "true"], ["-e=A", "true"], ["--memory"], ["--no-such-flag", "true"],
])
def test_anything_unusual_is_left_to_argparse(argv: list[str]) -> None:
    from minibox.cli import _fast_run_args

    assert _fast_run_args(argv) is None
