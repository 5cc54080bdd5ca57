"""Mutation check of the security policy: weaken it one entry at a time, see the tests fail.

A security test suite is only as good as the weakenings it notices.  This
script makes one *mutant* of minibox at a time -- a copy of the source with
one entry of a security policy table removed, one dangerous capability
added to the default set, or one hardening step of the C child skipped --
runs the security tests against it, and counts the mutants the tests
*kill* (at least one test fails) and those that *survive* (every test
passes: a weakening nobody would notice).  The score is killed / total.

    python bench/mutation.py                  # every mutant (~30-60 min on 2 cores)
    python bench/mutation.py --limit 5        # a quick look
    python bench/mutation.py --list           # show the mutants only

Each mutant runs in a throw-away copy of the working tree (``git worktree``
of HEAD, detached) with its own state and runtime directories, so the
seccomp program cache and the default image are rebuilt from the mutated
source.  The results go to bench/results/mutation-<date>.json.  Run it as
root on a quiet machine: the tests start real containers.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TESTS = (
    "tests/security/test_hardening.py",
    "tests/security/test_seccomp_verdict.py",
    "tests/integration/test_container_core.py",
    "tests/integration/test_cgroup_namespace.py",
    "tests/security/test_mount_race.py",
    "tests/security/test_masked_paths.py",
    "tests/security/test_mount_propagation.py",
)
# Capabilities the default set must never hold (each one is an escape or a
# host-wide effect in Docker's and podman's threat models).
DANGEROUS_CAPS = ("SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE", "SYS_RAWIO", "DAC_READ_SEARCH",
                  "NET_ADMIN", "SYS_BOOT", "SYS_TIME", "BPF", "PERFMON")


@dataclass(frozen=True)
class Mutant:
    """One weakening: in ``path``, replace lines [start, end) with ``replacement``."""

    name: str
    path: str
    start: int
    end: int
    replacement: str


def _tuple_elements(path: Path, variable: str) -> list[tuple[int, int]]:
    """Line spans (0-based, end exclusive) of each element of the tuple assigned to ``variable``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == variable and isinstance(node.value, ast.Tuple):  # type: ignore[union-attr]
            return [(e.lineno - 1, e.end_lineno or e.lineno) for e in node.value.elts]  # type: ignore[union-attr]
    raise SystemExit(f"{variable} not found in {path}")


def _remove_element(path: Path, rel: str, variable: str, label: str) -> list[Mutant]:
    lines = path.read_text().splitlines(keepends=True)
    mutants = []
    for start, end in _tuple_elements(path, variable):
        text = "".join(lines[start:end]).strip()
        first = re.findall(r'"([^"]+)"', text)
        mutants.append(Mutant(f"{label} without {first[0] if first else text[:40]}", rel, start, end, ""))
    return mutants


def policy_mutants() -> list[Mutant]:
    profile = "src/minibox/policy/seccomp/profile.py"
    caps = "src/minibox/policy/capabilities.py"
    rootfs = "src/minibox/container/rootfs.py"
    mutants = _remove_element(REPO / profile, profile, "DENIED", "seccomp DENIED")
    caps_text = (REPO / caps).read_text().splitlines(keepends=True)
    for i, line in enumerate(caps_text):
        if '"CHOWN"' in line and "DAC_OVERRIDE" in line:
            for cap in DANGEROUS_CAPS:
                mutants.append(Mutant(f"default capabilities + CAP_{cap}", caps, i, i + 1,
                                      line.replace('"CHOWN",', f'"CHOWN", "{cap}",', 1)))
            break
    rootfs_text = (REPO / rootfs).read_text()
    for variable in ("MASKED_FILES", "MASKED_DIRS", "READONLY_PATHS"):
        for element in ast.literal_eval(re.search(rf"^{variable} = (\([^)]*\))", rootfs_text, re.M).group(1)):  # type: ignore[union-attr]
            lines = rootfs_text.splitlines(keepends=True)
            for i, line in enumerate(lines):
                if f'"{element}"' in line:
                    new = line.replace(f'"{element}", ', "", 1) if f'"{element}", ' in line else \
                        line.replace(f', "{element}"', "", 1)
                    mutants.append(Mutant(f"{variable} without {element}", rootfs, i, i + 1, new))
                    break
    return mutants


_STEP = re.compile(r"^\s*CHECK\(plan, (MB_STEP_\w+),")


def c_step_mutants() -> list[Mutant]:
    """Skip each hardening statement of the child (one ``CHECK(plan, MB_STEP_..., ...);``)."""
    rel = "csrc/spawn.c"
    lines = (REPO / rel).read_text().splitlines(keepends=True)
    mutants = []
    for i, line in enumerate(lines):
        match = _STEP.match(line)
        if not match:
            continue
        end = i
        depth = 0
        for j in range(i, len(lines)):  # the statement ends where its parentheses close
            depth += lines[j].count("(") - lines[j].count(")")
            if depth <= 0 and lines[j].rstrip().endswith(";"):
                end = j
                break
        indent = line[: len(line) - len(line.lstrip())]
        mutants.append(Mutant(f"spawn.c skips {match.group(1)} (line {i + 1})", rel, i, end + 1,
                              f"{indent}(void)0; /* mutant */\n"))
    return mutants


def apply(tree: Path, mutant: Mutant) -> None:
    path = tree / mutant.path
    lines = path.read_text().splitlines(keepends=True)
    lines[mutant.start:mutant.end] = [mutant.replacement] if mutant.replacement else []
    path.write_text("".join(lines))


def build_core(tree: Path, python: str) -> None:
    """Compile the cffi core of ``tree`` in place (src/minibox/_minibox_native.abi3.so).

    cffi writes the module's C; gcc builds it with csrc/spawn.c and csrc/rootfs.c, as setup.py would.
    """
    out = tree / "build" / "mutation"
    out.mkdir(parents=True, exist_ok=True)
    code = ("import sys, sysconfig; sys.path.insert(0, 'csrc'); from build_native import ffibuilder; "
            f"ffibuilder.emit_c_code('{out}/_minibox_native.c'); print(sysconfig.get_paths()['include'])")
    include = subprocess.run([python, "-c", code], cwd=tree, check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-I", "csrc", "-I", include,
                    f"{out}/_minibox_native.c", "csrc/spawn.c", "csrc/rootfs.c", "-lseccomp",
                    "-o", "src/minibox/_minibox_native.abi3.so"], cwd=tree, check=True, capture_output=True)


def run_tests(tree: Path, python: str, tests: list[str], timeout: float) -> tuple[bool, str]:
    """(killed, the first failure's line): the mutant is killed when any test fails."""
    with tempfile.TemporaryDirectory(prefix="minibox-mutant-") as scratch:
        os.chmod(scratch, 0o755)  # a container's user in its user namespace must reach the state dir
        env = dict(os.environ, PYTHONPATH=str(tree / "src"), MINIBOX_STATE_DIR=f"{scratch}/state",
                   MINIBOX_RUNTIME_DIR=f"{scratch}/run", PYTHONDONTWRITEBYTECODE="1",
                   MINIBOX_MUTATION_RUN="1")
        try:
            proc = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                  cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return True, "timed out (counted as killed: the suite did not pass)"
    failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return proc.returncode != 0, failed[0] if failed else proc.stdout.strip().splitlines()[-1:][0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="run only the first N mutants")
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only mutants whose name contains one of these")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--tests", nargs="*", default=list(DEFAULT_TESTS))
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    mutants = policy_mutants() + c_step_mutants()
    if args.only:
        mutants = [m for m in mutants if any(part in m.name for part in args.only)]
    if args.limit:
        mutants = mutants[: args.limit]
    if args.list:
        for m in mutants:
            print(m.name)
        print(f"{len(mutants)} mutants")
        return 0
    python = sys.executable
    tree = Path(tempfile.mkdtemp(prefix="minibox-mutation-"))
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), "HEAD"], cwd=REPO, check=True)
    results = []
    try:
        pristine = {m.path: (tree / m.path).read_text() for m in mutants}
        started = time.monotonic()
        build_core(tree, python)
        failing, evidence = run_tests(tree, python, args.tests, args.timeout)
        if failing:  # a mutant is only killed by tests that pass without it
            print(f"the unmutated tree fails the tests already: {evidence}", file=sys.stderr)
            return 1
        print(f"baseline: the unmutated tree passes ({evidence})", flush=True)
        for n, mutant in enumerate(mutants, 1):
            for path, text in pristine.items():
                (tree / path).write_text(text)
            apply(tree, mutant)
            if mutant.path.startswith("csrc/"):
                build_core(tree, python)
            elif n > 1 and mutants[n - 2].path.startswith("csrc/"):
                build_core(tree, python)  # back to the pristine core
            killed, evidence = run_tests(tree, python, args.tests, args.timeout)
            results.append({"mutant": mutant.name, "killed": killed, "evidence": evidence})
            print(f"[{n}/{len(mutants)}] {'killed  ' if killed else 'SURVIVED'} {mutant.name}: {evidence}",
                  flush=True)
        elapsed = time.monotonic() - started
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
        shutil.rmtree(tree, ignore_errors=True)
    killed = sum(r["killed"] for r in results)
    print(f"\nmutation score: {killed}/{len(results)} killed ({100 * killed / max(1, len(results)):.0f}%) "
          f"in {elapsed / 60:.1f} min; tests: {' '.join(args.tests)}")
    for r in results:
        if not r["killed"]:
            print(f"  survived: {r['mutant']}")
    out = REPO / "bench" / "results" / f"mutation-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": datetime.datetime.now(datetime.UTC).isoformat(),
                               "tests": args.tests, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
