"""Progress: a bar that redraws in place on a terminal, plain periodic lines elsewhere."""

from __future__ import annotations

import io

from nearline_rec.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_plain_line_every_period_and_one_at_the_end():
    out, clock = io.StringIO(), Clock()
    with Progress(1000, "events", "ev", stream=out, every=10.0, clock=clock) as bar:
        for _ in range(10):
            clock.t += 3.0  # 30 s in all, 100 events every 3 s
            bar.update(100)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # at 12 s, 24 s (every >= 10 s since the last line), then the closing line at 30 s
    assert lines == [
        "events: 400/1,000 ev (40%), 33 ev/s",
        "events: 800/1,000 ev (80%), 33 ev/s",
        "events: 1,000/1,000 ev (100%), 33 ev/s in 30.0 s",
    ]
    assert bar.n == 1000


def test_on_a_terminal_a_tqdm_bar():
    out = Terminal()
    with Progress(5, "items", "item", stream=out) as bar:
        bar.update(5)
    assert "\r" in out.getvalue() and "5/5" in out.getvalue()


def test_disabled_prints_nothing_but_counts():
    out = Terminal()
    with Progress(3, "train", "step", enabled=False, stream=out) as bar:
        bar.update(2)
    assert out.getvalue() == "" and bar.n == 2
