"""One progress protocol for the whole package: ``progress(stage, done, total)``.

Long work (embedding a folder, downloading, hashing, a benchmark) reports through a callable that
takes a short stage label ("embed", "download", ...), the units done and the units in all
(``total`` 0 when unknown). The CLI turns it into one tqdm bar per stage, the app into
``st.progress``; library code never draws anything itself. ``True`` asks for tqdm bars and
``False``/``None`` for silence, so a caller can pass a flag straight through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Progress = Callable[[str, int, int], None]
ProgressArg = bool | Progress | None


class TqdmBars:
    """A ``Progress`` that draws one tqdm bar per stage (created on the stage's first report)."""

    def __init__(self, unit: str = "img", leave: bool = False) -> None:
        self._bars: dict[str, Any] = {}
        self._unit = unit
        self._leave = leave

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self._bars.get(stage)
        if bar is None:
            from tqdm import tqdm

            bar = self._bars[stage] = tqdm(total=total or None, desc=stage, unit=self._unit, leave=self._leave,
                                           dynamic_ncols=True)
        if total:
            bar.total = total
        bar.n = done
        bar.refresh()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def _silent(stage: str, done: int, total: int) -> None:
    return None


class Reporter:
    """``ProgressArg`` made callable: what a function that accepts ``progress=`` uses internally.

    ``close()`` ends any bars it drew (call it before another bar starts below, or at the end)."""

    def __init__(self, progress: ProgressArg) -> None:
        if callable(progress):
            self._fn: Progress = progress
            self._bars: TqdmBars | None = None
        elif progress:
            self._bars = TqdmBars()
            self._fn = self._bars
        else:
            self._fn, self._bars = _silent, None

    @property
    def active(self) -> bool:
        return self._fn is not _silent

    def __call__(self, stage: str, done: int, total: int) -> None:
        self._fn(stage, done, total)

    def stage(self, stage: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` view of one stage, for code that reports a single count."""
        return lambda done, total: self._fn(stage, done, total)

    def close(self) -> None:
        if self._bars is not None:
            self._bars.close()
