"""Progress output that suits a terminal and a log file alike.

On a terminal (stderr is a TTY) progress is a tqdm bar. Anywhere else (a file, a pipe, a sweep's
``train.log``) it is a plain line every ``LINE_INTERVAL_S`` seconds and one at the end, never a
carriage-return redraw::

    mse d=4: 1200/2000 steps (60%), 38.2 steps/s, ETA 0:00:21, mse_pixel=0.0412

``gankd --quiet`` (:func:`set_quiet`) turns all of it off; errors and results still print.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from tqdm import tqdm

LINE_INTERVAL_S = 10.0
_quiet = False
T = TypeVar("T")


def set_quiet(quiet: bool) -> None:
    """No progress output at all from now on (``--quiet``)."""
    global _quiet
    _quiet = quiet


def progress(total: int, desc: str, unit: str, initial: int = 0, enabled: bool = True) -> "tqdm | LineProgress":
    """A progress display with tqdm's methods (``update``, ``set_postfix``, ``set_postfix_str``,
    ``close``, and ``with``). ``enabled=False`` (e.g. ranks other than 0) shows nothing."""
    if _quiet or not enabled:
        return tqdm(disable=True)  # a no-op with the same methods
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.5)
    return LineProgress(total, desc, unit, initial)


def note(text: str) -> None:
    """One line of news on stderr (a job started or finished) that leaves a tqdm bar intact;
    silent under ``--quiet``."""
    if _quiet:
        return
    if sys.stderr.isatty():
        tqdm.write(text, file=sys.stderr)
    else:  # one write, so that lines from a sweep's threads never interleave
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def track(items: Sequence[T], desc: str, unit: str) -> Iterator[T]:
    """Iterate over ``items`` with progress shown."""
    with progress(len(items), desc, unit) as bar:
        for item in items:
            yield item
            bar.update(1)


class LineProgress:
    """One line per ``LINE_INTERVAL_S`` seconds on stderr: count/total, rate and ETA."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, interval: float = LINE_INTERVAL_S):
        self.total, self.desc, self.unit, self.n, self.initial = total, desc, unit, initial, initial
        self.interval, self.postfix = interval, ""
        self.start = self.last_line = time.monotonic()
        self.closed = False
        self.lock = threading.Lock()  # a sweep updates from several threads

    def update(self, n: int = 1) -> None:
        with self.lock:
            self.n += n
            if time.monotonic() - self.last_line >= self.interval:
                self._print()

    def set_postfix(self, values: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(values or {}), **kwargs}.items())

    def set_postfix_str(self, text: str = "") -> None:
        self.postfix = text

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self._print()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is not None:  # the error's own line says what happened
            self.closed = True
        self.close()

    def line(self) -> str:
        now = time.monotonic()
        rate = (self.n - self.initial) / max(now - self.start, 1e-9)
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}s" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        if self.n > self.initial:
            parts.append(f"{rate:.3g} {self.unit}s/s")
            if not self.closed and rate > 0 and self.total > self.n:
                parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
            if self.closed:
                parts.append(f"took {_duration(now - self.start)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _print(self) -> None:
        self.last_line = time.monotonic()
        print(self.line(), file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
