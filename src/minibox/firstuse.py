"""First-use steps: what minibox builds or fetches once, and how it tells the user.

On an empty state directory the first sandbox pays for set-up that is then
cached: building the busybox rootfs, provisioning the guest kernel
(``apt-get download``), compiling the static helpers (the guest agent, the
container init, the VM keeper) and probing whether ``/dev/kvm`` can boot
the guest.  Together that is seconds of silence unless someone says what
is happening.  A library must not print, so each step is *reported*:

* through :mod:`logging` -- logger ``"minibox"``, level INFO, one record when
  a step starts (what and why) and one when it ends (how long, how big);
  silent unless the application configures logging;
* to the callbacks registered with :func:`add_callback`, as
  :class:`StepEvent` values (a GUI or a progress bar can use them).

The CLI installs :func:`cli_reporter`, which prints the steps on stderr and,
while one runs, how long it has taken so far.  Nothing is ever written to
stdout: a command's output stays the command's.
"""

from __future__ import annotations

import _thread
import sys
import time

# contextlib and threading would cost every CLI start milliseconds of imports
# (minibox/_lean.py); the ticker thread imports threading when a step starts.
from ._lean import contextmanager, suppress
from ._record import record

TYPE_CHECKING = False  # the CLI imports this module at start: no typing import at run time
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterator
    from typing import TextIO

LOGGER = "minibox"


@record(frozen=True)
class StepEvent:
    """One moment of a first-use step: ``phase`` is "start", "done" or "failed"."""

    step: str           # a short name: "rootfs", "kernel", "accelerator", "agent", ...
    what: str           # what is being done, e.g. "building the busybox rootfs"
    why: str            # why now, and that it happens once
    phase: str
    elapsed: float      # seconds since the step started
    size: int | None = None  # bytes produced or fetched, when known (phase "done")
    detail: str = ""    # the error, for phase "failed"

    def describe(self) -> str:
        if self.phase == "start":
            return f"{self.what} ({self.why})"
        size = f", {_fmt_size(self.size)}" if self.size else ""
        if self.phase == "done":
            return f"{self.what}: done in {self.elapsed:.1f} s{size}"
        return f"{self.what}: failed after {self.elapsed:.1f} s: {self.detail}"


def _fmt_size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


_callbacks: list[Callable[[StepEvent], None]] = []


def add_callback(fn: Callable[[StepEvent], None]) -> None:
    """Call ``fn(event)`` at every start and end of a first-use step (from the thread doing it)."""
    _callbacks.append(fn)


def remove_callback(fn: Callable[[StepEvent], None]) -> None:
    with suppress(ValueError):
        _callbacks.remove(fn)


def _emit(event: StepEvent) -> None:
    import logging  # here, not at the top: the CLI's start must not pay for it when nothing is built

    logging.getLogger(LOGGER).log(logging.WARNING if event.phase == "failed" else logging.INFO, "%s",
                                  event.describe(), extra={"minibox_step": event})
    for fn in list(_callbacks):
        fn(event)


class Step:
    """The handle of a running step: set :attr:`size` once it is known."""

    def __init__(self, name: str, what: str, why: str) -> None:
        self.name, self.what, self.why = name, what, why
        self.size: int | None = None
        self.started = time.monotonic()

    def event(self, phase: str, detail: str = "") -> StepEvent:
        return StepEvent(self.name, self.what, self.why, phase, time.monotonic() - self.started,
                         self.size, detail)


@contextmanager
def step(name: str, what: str, why: str) -> Iterator[Step]:
    """Report a first-use step around the code that does it (its exceptions pass through)."""
    current = Step(name, what, why)
    _emit(current.event("start"))
    try:
        yield current
    except BaseException as e:
        _emit(current.event("failed", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__))
        raise
    _emit(current.event("done"))


# --- the CLI's view: lines on stderr, and how long so far --------------------------------------


class _Reporter:
    """Prints step events on stderr; a ticker says how long the current step has run."""

    TICK = 1.0  # seconds between updates on a terminal
    LOG_TICK = 5.0  # ... and in a log (stderr not a terminal)

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream  # None: whatever sys.stderr is when a line is written
        self.tty = self.stream.isatty()
        self.lock = _thread.allocate_lock()
        self.current: Step | None = None
        self.stop: threading.Event | None = None  # made with the first step's ticker

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def __call__(self, event: StepEvent) -> None:
        with self.lock:
            if event.phase == "start":
                self._write(f"minibox: first use: {event.describe()}\n")
                self.current = Step(event.step, event.what, event.why)
                import threading

                self.stop = threading.Event()  # a new one per step: the last step's ticker may still be waking
                threading.Thread(target=self._tick, args=(self.current, self.stop), daemon=True).start()
            else:
                if self.stop is not None:
                    self.stop.set()
                self.current = None
                clear = "\r\033[K" if self.tty else ""
                self._write(f"{clear}minibox: first use: {event.describe()}\n")

    def _tick(self, current: Step, stop: threading.Event) -> None:
        interval = self.TICK if self.tty else self.LOG_TICK
        while not stop.wait(interval):
            with self.lock:
                if self.current is not current:
                    return
                so_far = time.monotonic() - current.started
                if self.tty:
                    self._write(f"\r\033[K  ... {current.what}: {so_far:.0f} s so far")
                else:
                    self._write(f"minibox: first use: ... {current.what}: {so_far:.0f} s so far\n")


@contextmanager
def cli_reporter(stream: TextIO | None = None) -> Iterator[None]:
    """While in the block, print the steps (and time so far) on ``stream`` (default: stderr)."""
    reporter = _Reporter(stream)
    add_callback(reporter)
    try:
        yield
    finally:
        if reporter.stop is not None:
            reporter.stop.set()
        remove_callback(reporter)
