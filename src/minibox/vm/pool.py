"""A warm pool: VMs restored from a template ahead of time, one per run.

Restoring a template (clone.py) takes a QEMU start, the device state load
and the first pass through an empty TCG translation cache; a pool pays that
before the run is asked for.  ``Pool(spec, size=k)`` keeps ``k`` clones
restored and resumed, their agents waiting for a run; :meth:`Pool.run`
takes one, gives it the run's Spec (with the host's clock and fresh
entropy, as every clone gets), and a background thread restores a
replacement.  Before a restored clone joins the pool, its agent goes once
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
from types import TracebackType

from ..errors import MiniboxError, SpecError
from ..sandbox import Result
from ..spec import Spec
from . import templates as _templates
from .clone import TemplateClone, check_same_shape

#: After this many restores in a row fail, the pool stops trying and run() raises the last error.
MAX_FAILURES = 3


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
        self.handed_out: list[str] = []  # the ids of the VMs given to runs, in order
        self._filler = threading.Thread(target=self._fill, name="minibox-vm-pool", daemon=True)
        self._filler.start()

    # ---- the background restorer -------------------------------------------------

    def _fill(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or (len(self._ready) < self.size
                                                             and self._failures < MAX_FAILURES))
                if self._closed:
                    return
                self._restoring += 1
            clone = TemplateClone(self.spec)
            try:
                clone.restore_template()
                clone.warm_up()  # here, not in the run: its first pass through an empty TCG cache
            except BaseException as e:  # restore_template() closed it; say why to the next run()
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
            self._cond.wait_for(lambda: self._ready or self._closed or self._failures >= MAX_FAILURES)
            if self._closed:
                raise MiniboxError("the pool is closed")
            if not self._ready:
                raise MiniboxError(f"the pool cannot restore VMs: {self._error}") from self._error
            clone = self._ready.pop(0)
            self.handed_out.append(clone.id)
            self._cond.notify_all()  # the filler restores a replacement
        try:
            clone.assign(spec or self.spec, stdin)
        except BaseException:
            clone.close()
            raise
        return clone

    def run(self, spec: Spec | None = None, stdin: bytes | None = None) -> Result:
        """Run ``spec`` (default: the pool's Spec; same memory, vCPUs and kernel) to its end in a pooled VM."""
        with self.take(spec, stdin) as vm:
            return vm.wait()

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

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
