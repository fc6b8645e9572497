"""The one progress protocol (``imrs.progress``): its helpers, and that every ``progress`` parameter in
the package speaks it."""

from __future__ import annotations

import ast

from imrs.progress import Counter, Reporter, relabel
from tests.conftest import REPO

#: Parameter annotations that are the protocol.
PROTOCOL = {"Progress", "ProgressArg", "Progress | None", "ProgressArg | None"}


def test_every_progress_parameter_is_the_protocol() -> None:
    wrong = []
    for path in sorted((REPO / "imrs").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                    "Callable" in ast.unparse(node.annotation):  # a callback field (records of progress are not)
                args = [ast.arg(arg=node.target.id, annotation=node.annotation, lineno=node.lineno)]
            else:
                continue
            for a in args:
                if (a.arg == "progress" or a.arg.endswith("_progress")) and a.annotation is not None:
                    text = ast.unparse(a.annotation)
                    if text not in PROTOCOL:
                        wrong.append(f"{rel}:{a.lineno} {a.arg}: {text}")
    assert not wrong, "progress parameters outside the protocol:\n" + "\n".join(wrong)


def test_counter_reports_the_start_and_each_batch() -> None:
    seen: list[tuple[str, int, int]] = []
    c = Counter(lambda s, d, t: seen.append((s, d, t)), "embed", 5)
    c.update(2)
    c.update(3)
    c.close()
    assert seen == [("embed", 0, 5), ("embed", 2, 5), ("embed", 5, 5)]
    Counter(False, "embed", 5).update(5)  # silent: nothing to call, nothing drawn


def test_relabel_shows_a_callee_as_one_stage() -> None:
    seen: list[tuple[str, int, int]] = []
    inner = relabel(lambda s, d, t: seen.append((s, d, t)), "Building the index")
    assert callable(inner)
    inner("embed efficientnet_lite0", 3, 24)
    assert seen == [("Building the index", 3, 24)]
    assert relabel(True, "x") is True and relabel(None, "x") is None  # bars or silence pass through


def test_tqdm_bars_one_per_stage(capsys) -> None:  # type: ignore[no-untyped-def]
    rep = Reporter(True)
    rep("download", 1, 2)
    rep("embed", 2, 2)
    rep("download", 2, 2)
    rep.close()
    err = capsys.readouterr().err
    assert "download" in err and "embed" in err and "2/2" in err
