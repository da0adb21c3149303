"""Command-line pieces for depth sweeps: ``gufm sweep`` and ``gufm report``.

``gufm/cli.py`` calls :func:`add_parsers` with its sub-parsers; every command sets ``func=``
(taking the parsed arguments, returning an exit code).

Examples::

    gufm sweep --arch rn1,rn2 --depths 2,3,5,8,13,21,34 --seeds 0,1,2,3,4 --dataset digits \\
        --lam 0.005 --lam-rule const --out sweeps/digits --jobs 2
    gufm sweep --preset quick --out /tmp/quick      # rerun the same command to resume
    gufm sweep --preset paper-fig1 --out fig1 --scheduler tcp://10.0.0.1:8786 --device cuda
    gufm report /tmp/quick
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _int_list(name: str, text: str | None) -> list[Any] | None:
    if text is None:
        return None
    out: list[Any] = []
    for t in _list(text):
        try:
            out.append(int(t))
        except ValueError:
            raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None
    return out


def _n_per_class(text: str) -> int | None:
    return None if text.lower() in ("none", "all") else int(text)


def add_parsers(subparsers: Any) -> None:
    """Register ``sweep`` and ``report`` on an argparse sub-parser set."""
    from gufm.experiments.sweep import LAM_RULES, PRESETS

    s = subparsers.add_parser(
        "sweep", help="depth sweep: train + compare many networks (resumable)",
        description="Train every (arch, dataset, depth, seed) network and compare it with the "
                    "GUFM optimum (gufm.deep.pipeline.train_and_compare). Each finished run is "
                    "written atomically to DIR/runs/<run_id>.csv (long format; DIR/results.csv "
                    "combines them); rerunning the same command skips finished runs.")
    s.add_argument("--preset", choices=sorted(PRESETS),
                   help="; ".join(f"{k}: {p.description}" for k, p in PRESETS.items()))
    s.add_argument("--arch", default=None, help="comma-separated, e.g. rn1,rn2")
    s.add_argument("--dataset", default=None, help="comma-separated data sets (default digits)")
    s.add_argument("--depths", default=None, help="comma-separated depths (default 2,3,...,34)")
    s.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2,3,4)")
    s.add_argument("--lam", type=float, default=None, help="penalty on every parameter (0.005)")
    s.add_argument("--lam-rule", default=None, choices=LAM_RULES,
                   help="const: lam at every depth; inverse-depth: lam/L")
    s.add_argument("--width", type=int, default=None, help="feature dimension d (64)")
    s.add_argument("--n-per-class", type=_n_per_class, default=None,
                   help="class-balanced subset per class (50; 'all' for every sample)")
    s.add_argument("--epochs", type=int, default=None, help="Adam epochs (500)")
    s.add_argument("--lr", type=float, default=None, help="peak Adam learning rate (0.005)")
    s.add_argument("--loss", default=None, choices=["ce", "mse"])
    s.add_argument("--polish-steps", type=int, default=None, help="L-BFGS polish iterations")
    s.add_argument("--batch-size", type=int, default=None, help="default: full batch")
    s.add_argument("--out", required=True, help="sweep folder (the run table lives here)")
    s.add_argument("--jobs", type=int, default=None,
                   help="local worker processes (default 1; the quick preset uses 2)")
    s.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (tcp://host:8786): run on that cluster")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--threads", type=int, default=1, help="torch threads per run")
    s.add_argument("--vectorize-seeds", choices=["auto", "on", "off"], default="auto",
                   help="train the seeds of one configuration as one vmap'd model "
                        "(gufm.vectorized); auto: on with --device cuda")
    s.add_argument("--data-root", default=None, help="folder holding the data set files")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    s.add_argument("--report", action="store_true", help="write the report when done")
    s.set_defaults(func=cmd_sweep)

    r = subparsers.add_parser(
        "report", help="figures and a markdown summary of a sweep folder",
        description="log10 NC1/NC2/NC3 against depth (mean +- std over seeds, one row per "
                    "architecture/data set), the gap e2e - GUFM optimum against depth on "
                    "log-log axes with fitted slopes, the regularisation against depth, and a "
                    "table of slopes (DIR/report/summary.md).")
    r.add_argument("dir", help="sweep folder (or a results.csv)")
    r.add_argument("--out", default=None, help="output folder (default DIR/report)")
    r.set_defaults(func=cmd_report)


def build_specs(args: argparse.Namespace) -> tuple[list[Any], dict[str, str], int]:
    """Runs, row notes and default jobs of a parsed ``gufm sweep`` command line.

    Raises
    ------
    ValueError
        Bad grid (unknown arch or data set, depth < 1, empty seed list, ...).
    """
    from gufm.experiments.sweep import PAPER_DEPTHS, PRESETS, expand_grid

    depths = _int_list("--depths", args.depths)
    seeds = _int_list("--seeds", args.seeds)
    options: dict[str, Any] = {}
    if args.polish_steps is not None:
        options["polish_steps"] = args.polish_steps
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    if args.preset:
        if args.arch is not None or args.dataset is not None or args.lam_rule is not None:
            raise ValueError("--preset fixes --arch, --dataset and --lam-rule; drop them")
        p = PRESETS[args.preset]
        specs = p.specs(depths=depths, seeds=seeds, width=args.width,
                        n_per_class=args.n_per_class, epochs=args.epochs, lam=args.lam,
                        lr=args.lr, loss=args.loss, options=options)
        return specs, p.notes(), p.jobs
    if args.arch is None:
        raise ValueError("--arch is required without --preset (e.g. --arch rn1,rn2)")
    specs = expand_grid(
        args.arch, PAPER_DEPTHS if depths is None else depths,
        (0, 1, 2, 3, 4) if seeds is None else seeds, args.dataset or "digits",
        lam=0.005 if args.lam is None else args.lam, lam_rule=args.lam_rule or "const",
        width=64 if args.width is None else args.width,
        n_per_class=50 if args.n_per_class is None else args.n_per_class,
        epochs=500 if args.epochs is None else args.epochs,
        lr=5e-3 if args.lr is None else args.lr, loss=args.loss or "ce", options=options)
    notes = {}
    from gufm.experiments.sweep import SYNTHETIC_NOTE

    for sp in specs:
        if sp.dataset == "synthetic-tokens":
            notes[sp.row] = SYNTHETIC_NOTE
    return specs, notes, 1


def cmd_sweep(args: argparse.Namespace) -> int:
    """``gufm sweep``: :func:`gufm.sweep.run_sweep` over the grid or preset."""
    from gufm.experiments.sweep import finished_runs, run_sweep

    specs, notes, default_jobs = build_specs(args)
    jobs = default_jobs if args.jobs is None else args.jobs
    if args.scheduler is None and (isinstance(jobs, bool) or jobs < 1):
        raise ValueError(f"--jobs must be a positive integer, got {jobs!r}")
    done = finished_runs(args.out)
    n_done = sum(sp.run_id in done for sp in specs)
    rows = list(dict.fromkeys(sp.row for sp in specs))
    where = f"Dask cluster {args.scheduler}" if args.scheduler else \
        f"{jobs} local process{'es' if jobs > 1 else ''}"
    print(f"gufm sweep: {len(specs)} runs in {len(rows)} row(s), {n_done} already finished, "
          f"{len(specs) - n_done} to run on {where} (device {args.device}) -> {args.out}",
          flush=True)
    for row in rows:
        print(f"  row {row}" + (f"  [note: {notes[row]}]" if row in notes else ""), flush=True)
    if args.dry_run:
        for sp in specs:
            print(f"  {sp.run_id}  lam={sp.lam:g}" + ("  (done)" if sp.run_id in done else ""))
        return 0
    try:
        summary = run_sweep(specs, args.out, jobs=jobs, scheduler=args.scheduler,
                            device=args.device, data_root=args.data_root, threads=args.threads,
                            progress=not args.no_progress, notes=notes,
                            vectorize={"auto": None, "on": True, "off": False}[
                                args.vectorize_seeds])
    except FileNotFoundError as exc:
        print(f"gufm sweep: error: {exc}", file=sys.stderr)
        return 2
    print(f"gufm sweep: {len(summary.completed)} run(s) finished, {len(summary.skipped)} "
          f"skipped (already done), {len(summary.failed)} failed in {summary.seconds:.1f} s; "
          f"table: {summary.out / 'results.csv'}", flush=True)
    for rid, msg in summary.failed.items():
        print(f"  FAILED {rid}: {msg} (traceback in {summary.out / 'errors' / (rid + '.txt')})",
              file=sys.stderr)
    if args.report:
        from gufm.experiments.report import make_report

        rep = make_report(args.out)
        print(f"gufm sweep: report in {rep['summary']}")
    return 0 if summary.ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    """``gufm report DIR``: :func:`gufm.report.make_report`."""
    from gufm.experiments.report import make_report

    rep = make_report(args.dir, out=args.out)
    print(f"gufm report: {rep['summary']}")
    for f in rep["figures"]:
        print(f"  figure {f}")
    for line in rep["headline"]:
        print(f"  {line}")
    return 0
