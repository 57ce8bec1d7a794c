"""The ``basewise`` command line (also ``python -m basewise``).

Sub-commands:
    demo    ISM of the bundled sequence with the bundled motif model, printed as a summary.

Example:
    >>> main(["demo", "--top", "3"])  # doctest: +ELLIPSIS
    basewise demo: ...
    0
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="basewise", description="Fast, exact ISM and attributions for DNA models.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run ISM on the bundled sequence and model and print a summary")
    demo.add_argument("--top", type=int, default=10, help="positions to list (default 10)")
    demo.add_argument("--batch-size", type=int, default=64, help="mutants per forward pass (default 64)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(top=args.top, batch_size=args.batch_size)
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands
