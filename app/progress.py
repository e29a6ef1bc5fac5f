"""Progress of a long command: a tqdm bar on a terminal, a plain line every few seconds
otherwise (a log or CI output gets readable lines, not hundreds of carriage-return frames).
tqdm is optional (the `progress` extra); without it a terminal gets the plain lines too."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Generator, Iterable
from typing import IO, Any, TypeVar

from nearline_rec.extras import has

T = TypeVar("T")


class Progress:
    """`update(n)` as tqdm's, `n` done so far; a context manager that closes with a last line."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        *,
        enabled: bool = True,
        stream: IO[str] | None = None,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.clock = clock
        self.enabled = enabled
        self._bar: Any = None
        self._closed = False
        if enabled and _is_terminal(self.stream) and has("tqdm"):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream)
        self._started = self._last = clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and self.clock() - self._last >= self.every:
            self._line()

    def _line(self, done: bool = False) -> None:
        now = self.clock()
        self._last = now
        elapsed = max(now - self._started, 1e-9)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:,.0f} {self.unit}/s" if elapsed >= 1 else ""
        tail = f" in {elapsed:,.1f} s" if done else ""
        print(
            f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}{pct}{rate}{tail}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            self._line(done=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def terminal_bar(
    items: Iterable[T], desc: str, unit: str = "it", enabled: bool = True
) -> Generator[T, None, None]:
    """`items` under a transient tqdm bar where one redraws in place (a terminal, tqdm
    installed), else `items` as they are: an inner loop whose outer Progress prints lines.
    `close()` it after a loop that may break, to clear the bar."""
    if not (enabled and on_terminal() and has("tqdm")):
        yield from items
        return
    from tqdm import tqdm

    bar = tqdm(items, desc=desc, unit=unit, leave=False)
    try:
        yield from bar
    finally:
        bar.close()


def on_terminal(stream: IO[str] | None = None) -> bool:
    """Whether progress bars can redraw in place (stderr by default)."""
    return _is_terminal(stream if stream is not None else sys.stderr)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
