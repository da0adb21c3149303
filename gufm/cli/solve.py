"""``gufm solve``: one GUFM instance to a certified global optimum."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gufm.cli._args import HelpFormatter, int_list, paragraphs
from gufm.model.losses import LOSSES
from gufm.model.problem import GUFM
from gufm.solvers import METHODS, solve

#: the Python argument names of GUFM/solve -> the flags of ``gufm solve`` (for error messages)
FLAGS = {"counts": "--counts", "dim": "--dim", "loss": "--loss", "features": "--features",
         "radius": "--radius", "lam_W": "--lam-w", "lam_b": "--lam-b", "lam_H": "--lam-h",
         "method": "--method"}


def add_parsers(subparsers: Any) -> None:
    """Register ``solve``.

    Examples
    --------
    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_parsers(p.add_subparsers(dest="command"))
    >>> p.parse_args(["solve", "--counts", "5,5", "--dim", "4", "--lam-w", "0.1"]).counts
    [5, 5]
    """
    s = subparsers.add_parser(
        "solve", formatter_class=HelpFormatter,
        help="solve a GUFM instance to a certified global optimum",
        description=paragraphs(
            "Find the global optimum of a GUFM (features on the LayerNorm sphere, a sphere, a "
            "ball, or penalised) with a linear classifier and weight decay, and print it with "
            "its dual certificate: value, proven lower bound, gap.",
            "  example: gufm solve --counts 50,30,20 --dim 16 --lam-w 0.005"))
    s.add_argument("--counts", type=int_list(1), required=True,
                   help="samples per class, comma-separated (K classes), e.g. 50,30,20")
    s.add_argument("--dim", type=int, required=True, help="feature dimension d")
    s.add_argument("--loss", default="ce", choices=LOSSES, help="cross-entropy or squared loss")
    s.add_argument("--features", default="layernorm",
                   help="feature constraint: layernorm, sphere, ball or penalty")
    s.add_argument("--lam-w", type=float, required=True, help="weight decay on the classifier W")
    s.add_argument("--lam-b", type=float, default=None,
                   help="weight decay on a bias b (default: no bias)")
    s.add_argument("--lam-h", type=float, default=None,
                   help="penalty on the features (required by --features penalty; default: none)")
    s.add_argument("--radius", type=float, default=None,
                   help="radius for --features sphere or ball (default: sqrt(d))")
    s.add_argument("--method", default="auto", choices=METHODS,
                   help="solver; auto picks the fastest that certifies")
    s.add_argument("--json", action="store_true",
                   help="print one JSON object (value, lower_bound, gap, certified, method, seconds)")
    s.set_defaults(func=cmd_solve, flags=FLAGS)


def cmd_solve(args: argparse.Namespace) -> int:
    """``gufm solve``: build the :class:`gufm.GUFM`, solve it, print the result.

    Examples
    --------
    >>> from gufm.cli import build_parser
    >>> cmd_solve(build_parser().parse_args(["solve", "--counts", "50,30,20", "--dim", "16",
    ...                                      "--lam-w", "0.005", "--json"]))  # doctest: +ELLIPSIS
    {"value": 0.01166886233..., ...}
    0
    """
    prob = GUFM(counts=args.counts, dim=args.dim, loss=args.loss, features=args.features,
                radius=args.radius, lam_W=args.lam_w, lam_b=args.lam_b, lam_H=args.lam_h)
    res = solve(prob, method=args.method)
    if args.json:
        d = res.to_dict()
        print(json.dumps({k: d[k] for k in
                          ("value", "lower_bound", "gap", "certified", "method", "seconds")}))
    else:
        print(res.summary())
    return 0
