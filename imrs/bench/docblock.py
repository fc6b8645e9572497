"""Benchmark figures in the docs are written by the script that measured them.

A script run with ``--write-docs`` replaces the text between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` in a Markdown file with its table and a line saying where it was measured
(CPU model and int8-relevant flags, cores, load average, date), so a figure is never copied by
hand and always says which host it belongs to.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path

from ..fsutil import atomic_write_text


def host_line() -> str:
    """Where and when: CPU model and flags (VNNI yes/no), cores, load average, UTC date."""
    from ..encoders.int8 import cpu_features
    from ..encoders.pipeline import cpu_count

    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"Host: {cpu_features().describe()}, {cpu_count()} cores; load average {load}; {date}."


def replace_block(path: Path, name: str, text: str) -> None:
    """Put ``text`` between the ``name`` markers of ``path`` (atomic write). The markers must
    already be there: a script never guesses where its figures belong."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if len(pattern.findall(doc)) != 1:
        raise ValueError(f"{path} needs exactly one {start} ... {end} block")
    new = pattern.sub(lambda _: f"{start}\n{text.strip()}\n{end}", doc)
    atomic_write_text(path, new)
