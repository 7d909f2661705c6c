"""Progress of long commands: a bar on a terminal, plain lines anywhere else, nothing for --json.

    with progress(f"enroll {name}", total=5000, unit="customers", quiet=as_json) as shown:
        for batch in batches:
            ...
            shown.advance(len(batch))

Progress goes to standard error, so standard output stays the command's result. Where it
goes decides how it looks, once per command:
- a terminal: rich's bar with the counts, the time elapsed and left, and what is being done;
- anything else (a pipe, a CI log, Click's test runner): a plain line when the phase changes,
  every tenth of the way and at least every few seconds, then one last line; never a control
  character, e.g. `enroll new_lead: 1200/5000 customers (24%) 3.1 s left`;
- nothing with `quiet` (commands pass their --json flag) or SCRM_PROGRESS=off.
SCRM_PROGRESS=bar or =plain forces a kind; auto, the default, looks at standard error.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import click
from rich.console import Console
from rich.progress import BarColumn, ProgressColumn, SpinnerColumn, Task, TextColumn
from rich.progress import Progress as RichProgress
from rich.table import Column
from rich.text import Text

Kind = Literal["bar", "plain", "off"]
CHOICES = ("auto", "bar", "plain", "off")
EVERY_S = 10.0  # a plain line at least this often, moving or not: a silent log looks like a hang
STEPS = 10  # and one at every tenth of the way
WINDOW_S = 30.0  # "time left" uses the rate over this much recent time: early steps are often slower
MIN_RATE_S = 1.0  # and no rate from less time than this (two steps reported at once say nothing)
CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x1f\x7f]")
Clock = Callable[[], float]


def span(seconds: float) -> str:
    """3.1 s, 42 s, 2:05, 1:02:05."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}" if minutes < 60 else f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class Progress:
    """How far a command is (`advance`, `update`) and what it is doing (`phase`); this kind shows nothing.

    Safe to call from the command's thread while the plain kind's heartbeat reads it.
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "", clock: Clock = time.monotonic) -> None:
        self.label, self.unit, self.clock = label, unit, clock
        self.total, self.done, self.doing = total, 0, ""
        self.started = clock()
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self._lock = threading.Lock()

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def update(self, done: int, total: int | None = None, *, phase: str | None = None) -> None:
        """`done` so far, out of `total` when it becomes known; `phase` replaces what is shown as being done."""
        with self._lock:
            now = self.clock()
            if total is not None and total != self.total:
                self.total = total
                self._samples.clear()  # a new total is a new race: the old rate says nothing
            self.done = done
            if self.total is not None and done > self.total:
                self.total = done  # more came in while it ran (e.g. customers joining a segment)
            self._samples.append((now, done))
            while len(self._samples) > 2 and now - self._samples[1][0] >= WINDOW_S:
                self._samples.popleft()
            phase = None if phase is None else CONTROL.sub("", phase).strip()
            moved = bool(phase) and phase != self.doing  # a phase that ends is no news: the counts say it
            if phase is not None:
                self.doing = phase
        self.changed(moved)

    def phase(self, text: str) -> None:
        self.update(self.done, phase=text)

    def counts(self, percent: bool = True) -> str:
        """`1200/5000 customers (24%)`, `1200 customers` while the total is unknown, or nothing."""
        unit = f" {self.unit}" if self.unit else ""
        if self.total is None:
            return f"{self.done}{unit}" if self.done else ""
        if not self.total:
            return f"0{unit}"
        share = f" ({self.done * 100 // self.total}%)" if percent else ""
        return f"{self.done}/{self.total}{unit}{share}"

    def left_s(self) -> float | None:
        """Seconds to go at the recent rate; None without a total, a rate yet, or anything left."""
        with self._lock:
            (first_at, first), (last_at, last) = self._samples[0], self._samples[-1]
            if self.total is None or last >= self.total or last <= first or last_at - first_at < MIN_RATE_S:
                return None
            return (self.total - last) * (last_at - first_at) / (last - first)

    def elapsed_s(self) -> float:
        return self.clock() - self.started

    # What each kind shows: nothing here.
    def start(self) -> None:
        pass

    def changed(self, phase_moved: bool) -> None:
        pass

    def stop(self, ok: bool) -> None:
        pass


class PlainProgress(Progress):
    """One line at a time on standard error, for logs: at phase changes, every tenth, every few seconds."""

    def __init__(self, label: str, total: int | None = None, unit: str = "", clock: Clock = time.monotonic,
                 every_s: float = EVERY_S) -> None:
        super().__init__(label, total, unit, clock)
        self.every_s = every_s
        self._last_at, self._last_step = self.started, 0
        self._quit = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name=f"progress {label}", daemon=True)

    def line(self) -> str:
        left = self.left_s()
        parts = [self.counts(), f"{span(left)} left" if left is not None else f"{span(self.elapsed_s())} elapsed"]
        return f"{self.label}: {' '.join(p for p in parts if p)}" + (f", {self.doing}" if self.doing else "")

    def start(self) -> None:
        self._heartbeat.start()

    def changed(self, phase_moved: bool) -> None:
        step = self.done * STEPS // self.total if self.total else 0
        unfinished = self.total is None or self.done < self.total  # the last line says 100%
        if phase_moved or (step > self._last_step and unfinished) or self.clock() - self._last_at >= self.every_s:
            self._print(self.line())

    def stop(self, ok: bool) -> None:
        self._quit.set()
        if self._heartbeat.is_alive():
            self._heartbeat.join()
        took = span(self.elapsed_s())
        counts = self.counts(percent=not ok)
        if ok:
            self._print(f"{self.label}: {counts + ' ' if counts else ''}done in {took}")
        else:
            self._print(f"{self.label}: stopped {'at ' + counts + ' ' if counts else ''}after {took}")

    def _beat(self) -> None:
        while not self._quit.wait(min(1.0, self.every_s)):
            if self.clock() - self._last_at >= self.every_s:
                self._print(self.line())

    def _print(self, text: str) -> None:
        with self._lock:
            self._last_at = self.clock()
            self._last_step = self.done * STEPS // self.total if self.total else 0
            click.echo(CONTROL.sub("", text), err=True)


class _Times(ProgressColumn):
    """`12 s elapsed, 40 s left`, as in the plain lines (rich estimates the rate itself)."""

    def render(self, task: Task) -> Text:
        left = task.time_remaining if task.total and not task.finished else None
        return Text(f"{span(task.elapsed or 0.0)} elapsed" + (f", {span(left)} left" if left is not None else ""))


class BarProgress(Progress):
    """rich's bar on standard error; its own thread keeps the spinner and the times moving."""

    def __init__(self, label: str, total: int | None, unit: str, console: Console) -> None:
        super().__init__(label, total, unit)
        self._bar = RichProgress(
            SpinnerColumn(),
            TextColumn("{task.description}", style="bold", markup=False, table_column=Column(no_wrap=True)),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[counts]}", markup=False, table_column=Column(no_wrap=True)),
            _Times(table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[doing]}", markup=False, table_column=Column(no_wrap=True)),
            console=console, redirect_stdout=False,  # stdout may be a file: the result goes there, not here
        )
        self._task = self._bar.add_task(label, total=total, counts=self.counts(), doing="")

    def start(self) -> None:
        self._bar.start()

    def changed(self, phase_moved: bool) -> None:
        room = max(12, self._bar.console.width - len(self.label) - 72)  # the rest of the line is about 70 wide
        doing = self.doing if len(self.doing) <= room else self.doing[:room - 1] + "…"
        self._bar.update(self._task, completed=self.done, total=self.total, counts=self.counts(), doing=doing)

    def stop(self, ok: bool) -> None:
        self._bar.stop()


def chosen_kind(quiet: bool = False) -> Kind:
    """SCRM_PROGRESS if set (a wrong value stops the command), else a bar on a terminal and plain lines elsewhere."""
    wanted = os.environ.get("SCRM_PROGRESS", "").strip().lower() or "auto"
    if wanted not in CHOICES:
        raise click.UsageError(f"SCRM_PROGRESS={wanted!r}: use one of {', '.join(CHOICES)}")
    if quiet or wanted == "off":
        return "off"
    if wanted != "auto":
        return "bar" if wanted == "bar" else "plain"
    console = Console(stderr=True)
    return "bar" if console.is_terminal and not console.is_dumb_terminal else "plain"


@contextmanager
def progress(label: str, total: int | None = None, *, unit: str = "", quiet: bool = False) -> Iterator[Progress]:
    """Show the progress of the block; its last line (plain) says done, or where it stopped on an error."""
    kind = chosen_kind(quiet)
    shown = (
        BarProgress(label, total, unit, Console(stderr=True, force_terminal=True)) if kind == "bar"
        else PlainProgress(label, total, unit) if kind == "plain"
        else Progress(label, total, unit)
    )
    shown.start()
    try:
        yield shown
    except BaseException:
        shown.stop(ok=False)
        raise
    shown.stop(ok=True)
