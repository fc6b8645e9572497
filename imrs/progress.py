"""One progress protocol for the whole package: ``progress(stage, done, total)``.

Long work (embedding a folder, downloading, hashing, growing many terms, a benchmark) reports
through a callable that takes a short stage label ("embed", "download", "terms", ...), the units
done and the units in all (``total`` 0 when unknown). The CLI turns it into one tqdm bar per stage
(``TqdmBars``), the page into ``st.progress`` (``imrs.app.widgets.ProgressBar``), the API's job
runner into the job's progress row (``imrs.api.jobs``); library code never draws anything itself.
``True`` asks for tqdm bars and ``False``/``None`` for silence, so a caller can pass a flag
straight through (``ProgressArg``); a function that accepts ``progress=`` wraps it in a
``Reporter`` (or a ``Counter`` when it counts units of one stage).

A callback may raise to stop the work (the API's cancel, a closed page): the work stops at its next
report and cleans up like any failed write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
ProgressArg = bool | Progress | None


class TqdmBars:
    """A ``Progress`` that draws one tqdm bar per stage (created on the stage's first report)."""

    def __init__(self, unit: str = "img", leave: bool = False, units: dict[str, str] | None = None) -> None:
        self._bars: dict[str, Any] = {}
        self._unit = unit
        self._units = units or {}
        self._leave = leave

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self._bars.get(stage)
        if bar is None:
            from tqdm.auto import tqdm

            bar = self._bars[stage] = tqdm(total=total or None, desc=stage, unit=self._units.get(stage, self._unit),
                                           leave=self._leave, dynamic_ncols=True)
        if total:
            bar.total = total
        bar.n = done
        bar.refresh()

    def note(self, stage: str, text: str) -> None:
        """A short note after a stage's bar (the item being worked on), when the bar exists."""
        bar = self._bars.get(stage)
        if bar is not None:
            bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def _silent(stage: str, done: int, total: int) -> None:
    return None


class Reporter:
    """``ProgressArg`` made callable: what a function that accepts ``progress=`` uses internally.

    ``close()`` ends any bars it drew (call it before another bar starts below, or at the end)."""

    def __init__(self, progress: ProgressArg, leave: bool = False) -> None:
        self._bars: TqdmBars | None = None
        if callable(progress):
            self._fn: Progress = progress
        elif progress:
            self._bars = TqdmBars(leave=leave)
            self._fn = self._bars
        else:
            self._fn = _silent

    @property
    def active(self) -> bool:
        return self._fn is not _silent

    def __call__(self, stage: str, done: int, total: int) -> None:
        self._fn(stage, done, total)

    def close(self) -> None:
        if self._bars is not None:
            self._bars.close()


class Counter:
    """Units of one stage counted as they finish (images embedded, files hashed), reported through
    the protocol: ``update(k)`` after each batch. Reports ``(stage, 0, total)`` at the start so a
    bar shows before the first batch is done. Its own tqdm bar stays on screen when done."""

    def __init__(self, progress: ProgressArg, stage: str, total: int) -> None:
        self.stage, self.total, self.done = stage, total, 0
        self._report = Reporter(progress, leave=True)
        if self._report.active:
            self._report(stage, 0, total)

    def update(self, k: int) -> None:
        self.done += k
        self._report(self.stage, self.done, self.total)

    def close(self) -> None:
        self._report.close()


def relabel(progress: ProgressArg, stage: str) -> ProgressArg:
    """``progress`` with every report under one stage label: a callee's steps shown as one step of
    its caller ("embed efficientnet_lite0" as the growth's "embed", a sync as "Building the index")."""
    if not callable(progress):
        return progress
    fn = Reporter(progress)
    return lambda _stage, done, total: fn(stage, done, total)
