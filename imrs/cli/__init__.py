"""The ``imrs`` command: one module per command group, each with ``register(subparsers)``.

Thin by design: parse arguments, build ``Settings``, call the library (the collection facade, the
query pipeline, the expansion engine, the benchmark runner), print. Every expected failure is an
``IMRSError`` and ends as one line on stderr with exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..config import Settings, prepare_library_env
from ..errors import IMRSError
from ..imagelimits import configure_images
from . import bench, collection, expand, search, serve

log = logging.getLogger("imrs")

GROUPS = (collection, search, expand, bench, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imrs", description="Image retrieval that grows from the web.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    prepare_library_env()
    try:
        configure_images(Settings.from_env())  # a bad variable ends here, as one line
        return int(args.func(args) or 0)
    except IMRSError as exc:
        if args.debug:
            raise
        print(f"imrs: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imrs: interrupted; the next command finishes or undoes the interrupted change", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
