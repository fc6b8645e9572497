"""The ast.parse guard: the race it closes is real on this interpreter and gone with it."""

from __future__ import annotations

import ast
import gc
import subprocess
import sys
import threading

import numpy as np
import pytest

from imrs._pycompat import install_ast_parse_guard, needs_ast_guard

install_ast_parse_guard()  # what the page and the API server do when they start

SOURCE = "\n".join(
    f"def f{i}(a, b=({i}, [1, 2, {{'k': {i}}}])):\n    return [x for x in range(a) if x % 3 == b[0]]"
    for i in range(200)
)


class _Cycle:
    """Garbage that needs the cyclic collector and runs Python code when freed: a thread switch
    inside ast.parse's C-to-Python conversion is what exposes the shared counter."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        sum(range(50))


def _hammer(parse, threads: int = 4, rounds: int = 40) -> list[str]:
    errors: list[str] = []

    def work() -> None:
        for _ in range(rounds):
            try:
                [_Cycle() for _ in range(20)]
                parse(SOURCE)
                ast.literal_eval("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4)}")
            except SystemError as exc:
                errors.append(str(exc))

    old_threshold, old_interval = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(50, 1, 1)
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        gc.set_threshold(*old_threshold)
        sys.setswitchinterval(old_interval)
    return errors


@pytest.mark.skipif(not needs_ast_guard(), reason="this interpreter has per-call AST state (gh-106905 fixed)")
def test_guarded_parse_survives_threads_and_gc() -> None:
    assert getattr(ast.parse, "__imrs_serialised__", False)
    assert _hammer(ast.parse) == []


def test_npz_loads_in_threads_while_parsing(tmp_path) -> None:
    """The app's case: cache loads (npy headers go through literal_eval) beside model loading."""
    path = tmp_path / "emb.npz"
    np.savez(path, ids=np.arange(5, dtype=np.int64), vectors=np.ones((5, 4), np.float32))
    failures: list[BaseException] = []

    def load() -> None:
        for _ in range(30):
            try:
                with np.load(path, allow_pickle=False) as z:
                    assert z["vectors"].shape == (5, 4)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)

    loader = threading.Thread(target=load)
    loader.start()
    errors = _hammer(ast.parse, threads=2, rounds=20)
    loader.join()
    assert errors == [] and failures == []


def test_importing_the_library_leaves_ast_alone() -> None:
    code = ("import ast, imrs, imrs.collection, imrs.query; "
            "print(getattr(ast.parse, '__imrs_serialised__', False))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_guard_versions_and_idempotence() -> None:
    assert needs_ast_guard((3, 11, 7)) and needs_ast_guard((3, 12, 1))
    assert not needs_ast_guard((3, 11, 8)) and not needs_ast_guard((3, 12, 2))
    assert not needs_ast_guard((3, 10, 13)) and not needs_ast_guard((3, 13, 0))
    before = ast.parse
    assert install_ast_parse_guard() is False  # already installed (or not needed): nothing stacks
    assert ast.parse is before
    assert ast.parse("x = 1").body[0].targets[0].id == "x"
