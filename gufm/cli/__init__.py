"""Command-line interface: ``gufm solve | demo | train | data | sweep | report``.

Each sub-command lives with the code it drives; this module only assembles the parser.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib import import_module

from gufm.model.problem import GUFM
from gufm.solvers import solve


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _cmd_solve(args: argparse.Namespace) -> int:

    prob = GUFM(
        counts=args.counts, dim=args.dim, loss=args.loss, features=args.features,
        radius=args.radius, lam_W=args.lam_w, lam_b=args.lam_b, lam_H=args.lam_h,
    )
    res = solve(prob, method=args.method)
    if args.json:
        print(json.dumps({k: res.to_dict()[k] for k in
                          ("value", "lower_bound", "gap", "certified", "method", "seconds")}))
    else:
        print(format_result(res))
    return 0


def format_result(res) -> str:
    """A readable multi-line summary of a :class:`gufm.SolveResult` (its ``summary()``)."""
    return res.summary()


def _cmd_demo(args: argparse.Namespace) -> int:
    from gufm.experiments.demo import run_demo

    return run_demo(out=args.out, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gufm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("solve", help="solve a GUFM instance to a certified optimum")
    s.add_argument("--counts", type=_ints, required=True, help="class counts, e.g. 50,30,20")
    s.add_argument("--dim", type=int, required=True)
    s.add_argument("--loss", default="ce", help="ce or mse")
    s.add_argument("--features", default="layernorm", help="layernorm, sphere, ball or penalty")
    s.add_argument("--lam-w", type=float, required=True)
    s.add_argument("--lam-b", type=float, default=None)
    s.add_argument("--lam-h", type=float, default=None)
    s.add_argument("--radius", type=float, default=None)
    s.add_argument("--method", default="auto")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_cmd_solve)

    d = sub.add_parser("demo", help="the main job: solver + networks on embedded data")
    d.add_argument("--out", default="gufm-demo", help="output folder")
    d.add_argument("--quick", action="store_true")
    d.set_defaults(func=_cmd_demo)

    for mod in ("gufm.cli.train", "gufm.cli.sweep"):
        try:
            m = import_module(mod)
        except ModuleNotFoundError as exc:  # optional pieces not installed/built yet
            if exc.name != mod:
                raise
            continue
        m.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"gufm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
