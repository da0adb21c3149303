"""``gufm train``: train one network to its regularised optimum and compare it with the GUFM.

Example::

    gufm train --arch rn1 --depth 5 --width 64 --dataset digits --n-per-class 50 \\
        --epochs 500 --lam 0.005 --lr 0.005 --seed 0 --json
    gufm train --arch rn1 --depth 2 --save net2.pt
    gufm train --arch rn1 --depth 8 --init-from net2.pt     # deepened by block splitting

Progress bars (tqdm) go to stderr when stderr is a terminal (``--progress`` forces them,
``--no-progress`` turns them off); ``--json`` prints one JSON object on stdout and nothing
else there.  A network file or checkpoint that is not one (garbage, a hostile pickle) gives
one line on stderr and exit status 2; nothing in it runs (see docs/training.md, section 5).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gufm.cli._args import HelpFormatter, paragraphs


def _positive_int_or_none(s: str) -> int | None:
    return None if s.lower() in ("none", "all") else int(s)


def add_parsers(subparsers: Any) -> None:
    """Register ``train``.

    Examples
    --------
    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_parsers(p.add_subparsers(dest="command"))
    >>> a = p.parse_args(["train", "--arch", "rn1", "--depth", "3", "--n-per-class", "all"])
    >>> a.depth, a.width, a.n_per_class, a.dataset, a.func is cmd_train, a.polish_limit
    (3, 64, None, 'digits', True, True)
    >>> p.parse_args(["train", "--arch", "rn1", "--depth", "3", "--no-polish-limit"]).polish_limit
    False
    """
    from gufm.deep.data.loaders import DATASETS
    from gufm.deep.nets.models import ARCHS

    t = subparsers.add_parser(
        "train", formatter_class=HelpFormatter,
        help="train a network to its regularised optimum and compare it with the GUFM",
        description=paragraphs(
            "Train one of the paper's networks (Adam, then a float64 L-BFGS polish) on the "
            "objective mean loss + lam/2 sum ||theta||^2 and compare it with its GUFM optimum: "
            "the gap, the neural-collapse metrics, the accuracy and whether training converged.",
            "  example: gufm train --arch rn1 --depth 3 --width 32 --n-per-class 20 "
            "--epochs 200 --polish-steps 200"))
    t.add_argument("--arch", required=True, choices=sorted(ARCHS), help="network")
    t.add_argument("--depth", type=int, required=True, help="number of blocks L >= 1")
    t.add_argument("--width", type=int, default=64, help="feature dimension d")
    t.add_argument("--dataset", default="digits", choices=list(DATASETS), help="data set")
    t.add_argument("--n-per-class", type=_positive_int_or_none, default=50,
                   help="class-balanced subset size per class ('all' for every sample)")
    t.add_argument("--epochs", type=int, default=500, help="Adam epochs (full batch: steps)")
    t.add_argument("--lam", type=float, default=0.005, help="penalty on every parameter")
    t.add_argument("--lr", type=float, default=0.005, help="peak Adam learning rate")
    t.add_argument("--seed", type=int, default=0, help="initialisation and batch-order seed")
    t.add_argument("--loss", default="ce", choices=["ce", "mse"], help="training loss")
    t.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    t.add_argument("--data-root", default=None, help="folder holding the data set's files")
    t.add_argument("--batch-size", type=int, default=None, help="default: full batch")
    t.add_argument("--polish-steps", type=int, default=1000, help="L-BFGS iterations (0: none)")
    t.add_argument("--polish-tol", type=float, default=1e-4,
                   help="converged when the reduced gradient norm is at most this")
    t.add_argument("--no-polish-limit", dest="polish_limit", action="store_false",
                   help="skip the singular-limit polish (docs/training.md, section 4)")
    t.add_argument("--checkpoint", default=None, help="checkpoint file (resumed if present)")
    t.add_argument("--save", default=None, metavar="PATH",
                   help="write the trained network there (tensors + JSON metadata)")
    t.add_argument("--init-from", default=None, metavar="PATH",
                   help="start from a saved network of depth <= --depth, deepened by "
                        "splitting its blocks (its arch and width are used)")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: when stderr is a terminal)")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """``gufm train``: :func:`gufm.deep.pipeline.train_and_compare` with the parsed options.

    Examples
    --------
    A tiny run on the bundled digits (one Adam step, one L-BFGS step: not converged):

    >>> import contextlib, io, json
    >>> from gufm.cli import build_parser
    >>> args = build_parser().parse_args(
    ...     ["train", "--arch", "rn1", "--depth", "1", "--width", "4", "--n-per-class", "2",
    ...      "--epochs", "1", "--polish-steps", "1", "--no-progress", "--json"])
    >>> buf = io.StringIO()
    >>> with contextlib.redirect_stdout(buf):
    ...     rc = cmd_train(args)
    >>> res = json.loads(buf.getvalue())
    >>> rc, res["stop_reason"], res["converged"], res["gap"] > 0
    (0, 'max iterations (1)', False, True)
    """
    from gufm.deep.pipeline import train_and_compare

    progress = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    kw: dict[str, Any] = {"polish_steps": args.polish_steps, "polish_tol": args.polish_tol,
                          "progress": progress, "polish_limit": args.polish_limit}
    if args.save:
        kw["save"] = args.save
    if args.init_from:
        kw["init_from"] = args.init_from
    if args.batch_size is not None:
        kw["batch_size"] = args.batch_size
    if args.checkpoint:
        kw["checkpoint"] = args.checkpoint
    if args.data_root:
        kw["root"] = args.data_root
    try:
        res = train_and_compare(args.arch, args.depth, args.width, args.dataset,
                                args.n_per_class, args.epochs, args.lam, args.lr, args.seed,
                                loss=args.loss, device=args.device, **kw)
    except FileNotFoundError as exc:
        print(f"gufm train: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{args.arch} L={args.depth} d={args.width} on {args.dataset} "
          f"(n/class={args.n_per_class}, loss={args.loss}, lam={args.lam}, lr={args.lr}, "
          f"epochs={args.epochs}, seed={args.seed})")
    for k in ("e2e_objective", "head_objective", "gufm_optimum", "gap"):
        print(f"  {k:15s} {res[k]:.10g}")
    print(f"  NC1 {res['nc1']:.4g}   NC2 {res['nc2']:.4g}   NC3 {res['nc3']:.4g}   "
          f"GUFM distance {res['gufm_distance']:.4g}")
    print(f"  train accuracy {res['train_accuracy']:.4f}   grad norm {res['grad_norm']:.3g}   "
          f"converged {res['converged']}   {res['seconds']:.1f} s")
    print(f"  stop reason: {res['stop_reason']}")
    if args.save:
        print(f"  network written to {args.save}")
    return 0
