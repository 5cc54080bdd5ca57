"""A warm pool: VMs restored from a template ahead of time, one per run.

Restoring a template (clone.py) takes a QEMU start, the device state load
and the first pass through an empty TCG translation cache; a pool pays that
before the run is asked for.  ``Pool(spec, size=k)`` keeps ``k`` clones
restored and resumed, their agents waiting for a run; :meth:`Pool.run`
takes one, gives it the run's Spec (with the host's clock and fresh
entropy, as every clone gets), and a background thread restores a
replacement once that run has ended (or REFILL_DELAY after the hand-out,
or at once when a run waits for a VM), so that the restore does not
compete with the run for the CPU.  A run's Result is returned at the
guest's exit frame: its QEMU is SIGKILLed then, and reaped and released
by a thread of the pool's (joined by :meth:`Pool.close`).  Before a restored clone joins the pool, its agent goes once
through the run's paths (clone.warm_up: the clock, the reseed, a throwaway
``/bin/true`` forked and reaped), so that QEMU has translated them when the
run comes.  A clone serves exactly one run and is then ended: the pool
never hands the same VM to two runs, so nothing of one run (files, processes,
RNG state) can reach the next.

Cost: each waiting clone is a QEMU process (supervised like any VM: its
owner's keeper ends it with the owner) costing its private pages (tens of
MiB: the template's pages are shared) and a little CPU for the idle guest's
timer ticks under TCG.  All clones of one template share its pages: a pool
serves one trust domain (docs/threat-model.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

from ..errors import MiniboxError, SpecError
from ..sandbox import Result
from ..spec import Spec
from . import templates as _templates
from .clone import TemplateClone, check_same_shape

#: After this many restores in a row fail, the pool stops trying and run() raises the last error.
MAX_FAILURES = 3
#: A replacement is restored once the run it replaces has ended, or this long (seconds) after the
#: hand-out, whichever comes first: a restore (QEMU's start, the load, the warm-up) beside the run
#: would compete with it for the CPU (on 2 cores under TCG: a pool run 230-320 ms beside one, ~100 ms without).
REFILL_DELAY = 1.0


class Pool:
    """``size`` restored clones of ``spec``'s template, handed out one per :meth:`run`."""

    def __init__(self, spec: Spec, size: int = 2) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 64:
            raise SpecError("size", f"a pool holds 1 to 64 VMs; got {size!r}")
        why = _templates.ineligible(spec)
        if why is not None:
            raise SpecError("spec", f"a pool's VMs start from a template, and this Spec cannot: {why}")
        self.spec = spec
        self.size = size
        self._cond = threading.Condition()
        self._ready: list[TemplateClone] = []
        self._restoring = 0
        self._failures = 0
        self._error: BaseException | None = None
        self._closed = False
        self._takers = 0  # take() calls waiting for a VM
        self._runs: dict[str, float] = {}  # VM id -> when its replacement may start (REFILL_DELAY)
        self.handed_out: list[str] = []  # the ids of the VMs given to runs, in order
        self._releasing: set[threading.Thread] = set()  # ended runs' QEMUs being reaped (release_later)
        self.release_errors: list[BaseException] = []  # what a background release could not do (gc will)
        self._filler = threading.Thread(target=self._fill, name="minibox-vm-pool", daemon=True)
        self._filler.start()

    # ---- the background restorer -------------------------------------------------

    def _refill_now(self) -> bool:
        """Whether the filler restores a VM now (the caller holds the lock)."""
        now = time.monotonic()
        self._runs = {ident: deadline for ident, deadline in self._runs.items() if deadline > now}
        if len(self._ready) >= self.size or self._failures >= MAX_FAILURES:
            return False
        return not self._runs or (self._takers > 0 and not self._ready)  # else: a run waits for a VM

    def _fill(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._refill_now()):
                    deadlines = [d - time.monotonic() for d in self._runs.values()]
                    self._cond.wait(max(0.001, min(deadlines)) if deadlines else None)
                if self._closed:
                    return
                self._restoring += 1
            clone = TemplateClone(self.spec)
            try:
                clone.restore_template()
                clone.warm_up()  # here, not in the run: its first pass through an empty TCG cache
            except BaseException as e:  # say why to the next run()
                clone.close()  # (restore_template() closed it already; a failed warm-up did not)
                with self._cond:
                    self._restoring -= 1
                    self._failures += 1
                    self._error = e
                    self._cond.notify_all()
                continue
            with self._cond:
                self._restoring -= 1
                self._failures = 0
                if self._closed:
                    clone.close()
                    return
                self._ready.append(clone)
                self._cond.notify_all()

    # ---- hand-out ------------------------------------------------------------------

    @property
    def ready(self) -> int:
        """How many restored VMs wait for a run now."""
        with self._cond:
            return len(self._ready)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the pool is full; whether it is."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._ready) >= self.size or self._closed
                                       or self._failures >= MAX_FAILURES, timeout) and len(self._ready) >= self.size

    def take(self, spec: Spec | None = None, stdin: bytes | None = None) -> TemplateClone:
        """A restored VM of its own for one run of ``spec`` (default: the pool's), not yet started."""
        check_same_shape(self.spec, spec or self.spec, stdin)  # before a VM is spent on it
        with self._cond:
            self._takers += 1
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: self._ready or self._closed or self._failures >= MAX_FAILURES)
            finally:
                self._takers -= 1
            if self._closed:
                raise MiniboxError("the pool is closed")
            if not self._ready:
                raise MiniboxError(f"the pool cannot restore VMs: {self._error}") from self._error
            clone = self._ready.pop(0)
            self.handed_out.append(clone.id)
            self._runs[clone.id] = time.monotonic() + REFILL_DELAY
            self._cond.notify_all()  # the filler restores a replacement (after the run, or REFILL_DELAY)
        clone.release_later = self._release_later
        try:
            clone.assign(spec or self.spec, stdin)
        except BaseException:
            clone.close()
            raise
        return clone

    def run(self, spec: Spec | None = None, stdin: bytes | None = None) -> Result:
        """Run ``spec`` (default: the pool's Spec; same memory, vCPUs and kernel) to its end in a pooled VM."""
        vm = self.take(spec, stdin)
        try:
            with vm:
                return vm.wait()
        finally:
            self._run_ended(vm.id)

    def _run_ended(self, ident: str) -> None:
        """The run in VM ``ident`` is over: its replacement need not wait any longer."""
        with self._cond:
            self._runs.pop(ident, None)
            self._cond.notify_all()

    def _release_later(self, release: Callable[[], None]) -> None:
        """Reap an ended run's QEMU (already SIGKILLed) and release its resources off the run's path.

        A pool run's Result is complete at the guest's exit frame; waiting
        for the kernel to tear down the killed QEMU and removing its record
        cost ~2.5 ms more (15 % of a pool run here), so a thread of its own
        does that.  Not a daemon: an interpreter that exits waits for it, and
        :meth:`close` joins every one, so a closed pool has left nothing.
        """
        def run() -> None:
            try:
                release()
            except BaseException as e:  # the record stays (abandoned) for `minibox gc`
                with self._cond:
                    self.release_errors.append(e)
            finally:
                with self._cond:
                    self._releasing.discard(threading.current_thread())

        thread = threading.Thread(target=run, name="minibox-vm-pool-release")
        with self._cond:
            self._releasing.add(thread)
        thread.start()

    # ---- the end -------------------------------------------------------------------

    def close(self) -> None:
        """End every waiting VM and the restorer; idempotent."""
        with self._cond:
            self._closed = True
            ready, self._ready = self._ready, []
            self._cond.notify_all()
        for clone in ready:
            clone.close()
        self._filler.join()
        with self._cond:
            releasing = list(self._releasing)
        for thread in releasing:
            thread.join()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
