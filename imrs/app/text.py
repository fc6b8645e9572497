"""Text that did not come from the code, made safe to draw.

Streamlit renders Markdown in almost every element (captions, alerts, button and checkbox labels,
dialog text), with its own extensions on top: ``:red[..]`` colours, ``:blue-badge[..]``,
``$..$`` maths, ``:material/icon:``, emoji shortcodes and GitHub's bare-URL autolinks. A search
query, a term somebody grew with, a folder or file name, a web page's title, licence or caption,
and an error's details can all carry any of these, and an image in Markdown is fetched by every
browser that shows it. So every such piece of text goes through ``plain`` before it is put into
a Markdown string, and the views use nothing else.

Two layers, because Markdown's own escape is not enough: a backslash before the punctuation that
opens Markdown syntax stops links, images, emphasis, code, lists, headings, maths and the colour
directives (and leaves ordinary names such as ``car_side`` or ``photo.jpg`` as they are);
the autolinks, icons and shortcodes are matched on the text *after* escapes are resolved, so an
invisible word joiner (U+2060) after ``:`` and ``@`` and before ``www``'s dot breaks them without
changing what a person reads (it was checked in Chromium: tests/test_browser.py).

``public`` is for error details shown to people who are not editors: absolute server paths are
cut down to their last part.
"""

from __future__ import annotations

import re

#: Punctuation that starts Markdown (or Streamlit) syntax anywhere in a line: escaped everywhere.
#: ``_`` only where it can open or close emphasis (not inside a word such as ``car_side``).
_PUNCT = re.compile(r"([\\`*{}\[\]<>#|~$&^])|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
#: What starts a list, a heading or a quote at the beginning of a line.
_LEADING = re.compile(r"^(\d{1,9})([.)])|^([-+=])")
#: Where a word joiner goes: after ":" before a letter or "/" (``http://``, ``:red[``, ``:material/``,
#: ``:smile:``), after "@" (e-mail autolinks), and before the dot of "www.".
_JOIN = re.compile(r"(?<=:)(?=[A-Za-z/])|(?<=@)(?=\S)|(?i:(?<=www))(?=\.)")
WORD_JOINER = "\u2060"
#: An absolute POSIX path of two or more parts (``/etc/passwd``, ``/home/x/photos/cat.jpg``).
_ABS_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"`]+/)+([^\s/'\"`]*)")


def plain(text: object, limit: int | None = None) -> str:
    """``text`` as Markdown that renders to exactly that text on one line: no link, image,
    formatting, icon or maths. ``limit``: at most this many characters are kept (with "…")."""
    s = " ".join(str(text).split())
    if limit is not None and len(s) > limit:
        s = s[: max(1, limit - 1)] + "…"
    s = _PUNCT.sub(lambda m: "\\" + m.group(0), _JOIN.sub(WORD_JOINER, s))
    return _LEADING.sub(lambda m: f"{m.group(1)}\\{m.group(2)}" if m.group(1) else "\\" + m.group(3), s)


def public(text: object) -> str:
    """An error line fit for someone who is not an editor: each absolute path becomes its last
    part, so a visitor never learns where the server keeps its files."""
    return _ABS_PATH.sub(lambda m: "…/" + m.group(1) if m.group(1) else "…", str(text))
