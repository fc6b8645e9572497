"""Work-arounds for interpreter bugs that IMRS's threads run into.

CPython 3.11.0-3.11.7 and 3.12.0-3.12.1 keep the recursion counter of the C-AST -> Python-AST
conversion in one interpreter-wide struct (gh-106905, fixed in 3.11.8 and 3.12.2). When two
threads call ``ast.parse`` at once (and a thread switch lands inside the conversion, e.g. when the
garbage collector runs a finaliser) the counter of one call is bumped by the other and
``ast.parse`` raises ``SystemError: AST constructor recursion depth mismatch``. IMRS hits this for
real: ``np.load`` parses every .npy header with ``ast.literal_eval``, ``inspect.signature`` and
torch's overload registry parse source, and the app does these in its model-loading threads while
a page rerun loads caches in another. The symptom was a rerun that failed with "Script compilation
error" once in a few hundred runs.

The fix serialises ``ast.parse``. The parses that race are inside numpy and torch, so only
replacing ``ast.parse`` reaches them; that is done by the two servers that run these threads (the
page, ``imrs.app``, and the API, ``imrs.api.app.create_app``) when they start, never by importing
the library: a program that imports ``imrs`` keeps its own ``ast``. Parsing is microseconds to
milliseconds and happens at load time, never per query, so the lock costs nothing measurable. It
is re-entrant because a finaliser that runs during a parse may itself parse.
"""

from __future__ import annotations

import ast
import functools
import sys
import threading
from typing import Any

#: Set on the wrapper so installing twice (module reloads, tests) does not stack locks.
_MARK = "__imrs_serialised__"


def needs_ast_guard(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> bool:
    """True on the interpreters that share the counter (3.10 and older have none to share)."""
    v = tuple(version[:3])
    return (3, 11, 0) <= v < (3, 11, 8) or (3, 12, 0) <= v < (3, 12, 2)


def install_ast_parse_guard() -> bool:
    """Wrap ``ast.parse`` in a process-wide re-entrant lock; True when this call installed it."""
    current = ast.parse
    if getattr(current, _MARK, False) or not needs_ast_guard():
        return False
    lock = threading.RLock()

    @functools.wraps(current)
    def parse(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return current(*args, **kwargs)

    setattr(parse, _MARK, True)
    # ``ast.literal_eval`` looks ``parse`` up in the module's globals, so this covers it as well.
    ast.parse = parse
    return True
