"""``minibox gc``: remove what dead owners left behind, never touch a live sandbox.

Every sandbox, container or VM, has a record (:mod:`minibox.records`)
written before anything it names exists, and naming an owner's lock
(:mod:`minibox.owner`).  The collector reads each record and asks the
kernel whether the owner still holds that lock:

* held -- the sandbox is live: skipped, and the report says so;
* free -- the owner is gone: every process the record names is SIGKILLed
  (pid and start time verified through a pidfd), its cgroup emptied and
  removed, its network port (lease, link, port rules, /etc files) released,
  and the record deleted.  Nothing waits for an age to pass, so one ``gc``
  right after a crash removes everything.

A *detached* sandbox is left alone while its own process runs, and
collected once it has exited.

Then the cgroups no record names: a cgroup is created only after its
record exists, so one with no record was made by an older minibox, had its
record deleted by hand -- or belongs to a minibox using another runtime
directory (``MINIBOX_RUNTIME_DIR``), whose records this gc cannot see.
Ones that hold processes are reported, not touched (they are nobody's to
kill).  Empty ones are removed once older than :data:`UNRECORDED_GRACE`:
the only empty cgroup of a live container is one being set up or torn down
(milliseconds), and the grace keeps gc off another runtime directory's
containers in that window; the report names every one it skips, and why.  The
cgroups are listed *before* the records are read, so a container being
started meanwhile is always seen through its record.  Lastly, the lock files
of owners that are gone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from . import owner, records
from .errors import MiniboxError

#: Seconds an empty cgroup no record names is left alone (see the module docstring).
UNRECORDED_GRACE = 10.0


@dataclass
class Report:
    """What one collection did: ``removed`` sandbox ids, ``skipped`` (what, why), ``failed`` (id, error)."""

    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    locks_removed: int = 0

    def lines(self) -> list[str]:
        out = [f"removed {sandbox_id}" for sandbox_id in self.removed]
        out += [f"skipped {what}: {why}" for what, why in self.skipped]
        out += [f"failed {what}: {error} (kept; run gc again)" for what, error in self.failed]
        if not out:
            out.append("nothing to clean")
        return out


def collect() -> Report:
    """Clean up after every dead owner; see the module docstring."""
    report = Report()
    cgroups_before = _minibox_cgroups()
    named: set[str] = set()
    for path, record in records.all_records():
        if record is None:
            # Damaged or of another format: not ours to judge.
            report.skipped.append((os.path.basename(path), "not a record this minibox can read"))
            continue
        named.update(_cgroup_dirs(record))
        label = f"{record.get('kind', 'sandbox')} {record['id']}"
        alive, why = records.liveness(record)
        if alive:
            report.skipped.append((label, why))
            continue
        try:
            clean(record)
        except (OSError, MiniboxError) as e:
            report.failed.append((label, str(e)))
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue  # its owner closed it meanwhile: it was not ours to report
        report.removed.append(label)
    _collect_unrecorded_cgroups(cgroups_before, named, report)
    _collect_half_written_records(report)
    report.locks_removed = len(owner.remove_stale_locks())
    if report.removed:
        from .container.cgroups import prune_parents

        try:
            prune_parents()
        except MiniboxError:
            pass
    return report


def clean(record: dict[str, Any]) -> None:
    """Remove everything ``record`` names, processes first; every step even if one fails."""
    errors: list[BaseException] = []
    # Processes first (QEMU before virtiofsd: it exits by itself once QEMU hangs up).
    for value in record.get("processes", []):
        proc = records.as_process(value)
        if proc is not None:
            records.kill_verified(proc)
    cgroup = record.get("cgroup")
    if isinstance(cgroup, dict) and isinstance(cgroup.get("paths"), dict):
        paths = {str(k): str(v) for k, v in cgroup["paths"].items() if os.path.isdir(str(v))}
        if paths:
            from .container.cgroups import remove_stale

            try:
                remove_stale(int(cgroup.get("version", 1)), paths)
            except (OSError, MiniboxError) as e:
                errors.append(e)
    network = record.get("network")
    if isinstance(network, dict) and network.get("id") and network.get("bridge"):
        from .network.attachment import release_record

        try:
            release_record(network)
        except (OSError, MiniboxError) as e:
            errors.append(e)
    if errors:
        raise errors[0]


def _cgroup_dirs(record: dict[str, Any]) -> list[str]:
    cgroup = record.get("cgroup")
    if isinstance(cgroup, dict) and isinstance(cgroup.get("paths"), dict):
        return [str(p) for p in cgroup["paths"].values()]
    return []


def _minibox_cgroups() -> dict[str, list[str]]:
    """name -> directories of every cgroup under this process's minibox parents."""
    from .container.cgroups import parent_dirs

    try:
        parents = parent_dirs()
    except (OSError, MiniboxError):
        return {}
    by_name: dict[str, list[str]] = {}
    for directory in dict.fromkeys(parents.values()):
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for name in entries:
            path = os.path.join(directory, name)
            if os.path.isdir(path):
                by_name.setdefault(name, []).append(path)
    return by_name


def _collect_unrecorded_cgroups(by_name: dict[str, list[str]], named: set[str], report: Report) -> None:
    for name, paths in sorted(by_name.items()):
        if any(p in named for p in paths):
            continue
        try:
            busy = any(_procs(p) for p in paths)
            age = time.time() - max(os.stat(p).st_mtime for p in paths)
        except OSError:
            continue  # vanished meanwhile
        if busy:
            report.skipped.append((f"cgroup {name}", "no record names it and it still holds processes; "
                                   "not minibox's to kill (remove it by hand if it is yours)"))
            continue
        if age < UNRECORDED_GRACE:
            report.skipped.append((f"cgroup {name}", f"no record names it and it is {age:.1f} s old: it may be "
                                   "another runtime directory's container being set up; gc removes it "
                                   f"once older than {UNRECORDED_GRACE:.0f} s"))
            continue
        removed = 0
        for p in paths:
            try:
                os.rmdir(p)
                removed += 1
            except FileNotFoundError:
                pass  # its owner removed it meanwhile
            except OSError as e:
                report.failed.append((f"cgroup {name}", f"rmdir {p}: {e.strerror}"))
                break
        else:
            if removed:
                report.removed.append(f"cgroup {name} (unrecorded)")


def _collect_half_written_records(report: Report) -> None:
    """An owner killed between write(2) and rename(2) leaves ``<id>.json.<pid>.tmp`` (records.write_atomically).

    Removed once no process has that pid; while one has (the writer, or a
    recycled pid), it is left for a later gc.
    """
    directory = records.directory_name()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        parts = name.split(".")
        if len(parts) < 4 or parts[-1] != "tmp" or not parts[-2].isdigit() or os.path.exists(f"/proc/{parts[-2]}"):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            continue
        report.removed.append(f"half-written record {name} (its writer died before the rename)")


def _procs(directory: str) -> bool:
    with open(os.path.join(directory, "cgroup.procs")) as f:
        return bool(f.read().strip())


# -- ps and kill -------------------------------------------------------------------


def list_sandboxes() -> list[dict[str, Any]]:
    """Every record with its liveness: what ``minibox ps`` prints."""
    rows = []
    for _, record in records.all_records():
        if record is None:
            continue
        alive, why = records.liveness(record)
        row = dict(record)
        row["alive"], row["why"] = alive, why
        rows.append(row)
    return rows


def kill(sandbox_id: str, sig: int) -> dict[str, Any]:
    """Send ``sig`` to a recorded sandbox's processes (``minibox kill``); return its record.

    SIGKILL also empties its cgroup.  Raises StateError-like MiniboxError
    when no record (or more than one) matches ``sandbox_id``.
    """
    import signal as signal_mod

    from .errors import MiniboxError as _Error

    record = records.find(sandbox_id)
    if record is None:
        raise _Error(f"no sandbox with id {sandbox_id!r} (see 'minibox ps')")
    for value in record.get("processes", []):
        proc = records.as_process(value)
        if proc is not None:
            records.signal_verified(proc, sig)
    cgroup = record.get("cgroup")
    if sig == signal_mod.SIGKILL and isinstance(cgroup, dict) and isinstance(cgroup.get("paths"), dict):
        from .container.cgroups import Cgroup

        paths = {str(k): str(v) for k, v in cgroup["paths"].items() if os.path.isdir(str(v))}
        if paths:
            Cgroup.from_paths(int(cgroup.get("version", 1)), paths).kill_all()
    return record
