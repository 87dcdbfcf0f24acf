"""`pgkeeper demo`: see pgkeeper work end to end on a throwaway database."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a throwaway PostgreSQL with a sample CRM, backed up and listed")
    p.add_argument("--scale", type=float, default=2.0, help="size of the sample CRM (1 is about 10 MB)")
    p.add_argument("--stop", action="store_true", help="stop the demo database instead")
    p.add_argument("--remove", action="store_true", default=None,
                   help="with --stop: delete the demo directory too (default: ask on a terminal)")
    p.add_argument("--keep", dest="remove", action="store_false", help="with --stop: keep the demo directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgkeeper.demo import run_demo, stop_demo

    if args.stop:
        stop_demo(remove=args.remove)
        return 0
    return run_demo(scale=args.scale)
