"""``gufm sweep``: train many networks over depths and seeds, compare each with the GUFM optimum.

Examples::

    gufm sweep --arch rn1,rn2 --depths 2,3,5,8,13,21,34 --seeds 0,1,2,3,4 --dataset digits \\
        --lam 0.005 --lam-rule const --out sweeps/digits --jobs 2
    gufm sweep --preset quick --out /tmp/quick      # rerun the same command to resume
    gufm sweep --preset paper-fig1 --out fig1 --scheduler tcp://10.0.0.1:8786 --device cuda

The run settings a flag leaves out come from :class:`gufm.experiments.spec.RunSpec` (its field
defaults, :func:`~gufm.experiments.spec.spec_defaults`) or from the preset.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from gufm.cli._args import (
    HelpFormatter,
    UsageError,
    count_or_all,
    int_list,
    name_list,
    paragraphs,
    writable_folder,
)
from gufm.experiments.presets import PRESETS, SYNTHETIC_NOTE
from gufm.experiments.report import make_report
from gufm.experiments.spec import (
    ARCH_NAMES,
    DATASET_NAMES,
    DEFAULT_DATASET,
    DEFAULT_SEEDS,
    LAM_RULES,
    PAPER_DEPTHS,
    RunSpec,
    expand_grid,
    spec_defaults,
)
from gufm.experiments.sweep import run_sweep
from gufm.experiments.table import finished_runs
from gufm.model.losses import LOSSES

#: RunSpec/expand_grid argument names -> flags (for error messages)
FLAGS = {"arch": "--arch", "dataset": "--dataset", "depths": "--depths", "depth": "--depths",
         "seeds": "--seeds", "seed": "--seeds", "lam": "--lam", "lam_rule": "--lam-rule",
         "width": "--width", "n_per_class": "--n-per-class", "epochs": "--epochs", "lr": "--lr",
         "loss": "--loss", "jobs": "--jobs", "threads": "--threads", "out": "--out"}


def _csv(values: Any) -> str:
    return ",".join(str(v) for v in values)


def add_parsers(subparsers: Any) -> None:
    """Register ``sweep``.

    Examples
    --------
    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_parsers(p.add_subparsers(dest="command"))
    >>> p.parse_args(["sweep", "--arch", "rn1,rn2", "--out", "x"]).arch
    ['rn1', 'rn2']
    """
    d = spec_defaults()
    s = subparsers.add_parser(
        "sweep", formatter_class=HelpFormatter,
        help="train and compare many networks over depths and seeds (resumable)",
        description=paragraphs(
            "Train every (network, data set, depth, seed) and compare it with the GUFM optimum. "
            "Each finished run is saved at once to DIR/runs/ (DIR/results.csv combines them); "
            "rerunning the same command skips the finished runs, so an interrupted sweep "
            "resumes. Give --arch (a grid) or --preset.", "presets:",
            *(textwrap.indent(textwrap.fill(f"{k}: {p.description}", 84,
                                            subsequent_indent="  "), "  ")
              for k, p in PRESETS.items())))
    s.add_argument("--preset", choices=sorted(PRESETS),
                   help="a named sweep (listed above); the flags below override its settings")
    s.add_argument("--arch", type=name_list(ARCH_NAMES), default=None,
                   help=f"networks, comma-separated: {', '.join(ARCH_NAMES)}")
    s.add_argument("--dataset", type=name_list(DATASET_NAMES), default=None,
                   help=f"data sets, comma-separated: {', '.join(DATASET_NAMES)} "
                        f"(default: {DEFAULT_DATASET})")
    s.add_argument("--depths", type=int_list(1), default=None,
                   help=f"comma-separated depths L (default: {_csv(PAPER_DEPTHS)}, or the preset's)")
    s.add_argument("--seeds", type=int_list(0), default=None,
                   help=f"comma-separated seeds (default: {_csv(DEFAULT_SEEDS)}, or the preset's)")
    s.add_argument("--lam", type=float, default=None,
                   help=f"weight decay on every parameter (default: {d['lam_base']}, or the preset's)")
    s.add_argument("--lam-rule", default=None, choices=LAM_RULES,
                   help=f"const: --lam at every depth; inverse-depth: --lam / L "
                        f"(default: {d['lam_rule']})")
    s.add_argument("--width", type=int, default=None,
                   help=f"feature dimension d (default: {d['width']}, or the preset's)")
    s.add_argument("--n-per-class", type=count_or_all, default=argparse.SUPPRESS,
                   help=f"training samples per class, or 'all' (default: {d['n_per_class']}, or "
                        "the preset's)")
    s.add_argument("--epochs", type=int, default=None,
                   help=f"Adam epochs (default: {d['epochs']}, or the preset's)")
    s.add_argument("--lr", type=float, default=None,
                   help=f"peak Adam learning rate (default: {d['lr']}, or the preset's)")
    s.add_argument("--loss", default=None, choices=LOSSES,
                   help=f"training loss (default: {d['loss']}, or the preset's)")
    s.add_argument("--polish-steps", type=int, default=None,
                   help="L-BFGS polish iterations after Adam (default: the training default)")
    s.add_argument("--batch-size", type=int, default=None, help="mini-batch size (default: full batch)")
    s.add_argument("--out", required=True, help="sweep folder (the run table is kept here)")
    s.add_argument("--jobs", type=int, default=None,
                   help="local worker processes (default: 1; the quick preset uses 2)")
    s.add_argument("--scheduler", default=None,
                   help="Dask scheduler address, e.g. tcp://host:8786: run on that cluster "
                        "(needs the [distributed] extra; default: run locally)")
    s.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    s.add_argument("--threads", type=int, default=1, help="torch and BLAS threads per run")
    s.add_argument("--continuation", action="store_true",
                   help="chain the depths of each row and seed: every depth records the fresh "
                        "run, the split-only network (the previous depth's best, its blocks "
                        "split) and the continued run; the row's value is the lowest of the "
                        "three (gufm.deep.pipeline.continuation_chain)")
    s.add_argument("--vectorize-seeds", choices=["auto", "on", "off"], default="auto",
                   help="train the seeds of one configuration as one vectorised model; auto: on "
                        "with --device cuda")
    s.add_argument("--data-root", default=None,
                   help="folder holding the data set files (default: ~/.cache/gufm/data)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    s.add_argument("--report", action="store_true", help="write the report (gufm report) when done")
    s.set_defaults(func=cmd_sweep, flags=FLAGS)


def build_specs(args: argparse.Namespace) -> tuple[list[RunSpec], dict[str, str], int]:
    """Runs, row notes and default jobs of a parsed ``gufm sweep`` command line.

    Settings left out come from the preset, else from :func:`expand_grid`'s defaults (which are
    :class:`RunSpec`'s): this function restates none of them.

    Raises
    ------
    UsageError
        ``--preset`` together with ``--arch``/``--dataset``/``--lam-rule``, or neither
        ``--preset`` nor ``--arch``.
    ValueError
        A setting :func:`expand_grid` rejects (e.g. ``--width 1``).

    Examples
    --------
    >>> from gufm.cli import build_parser
    >>> args = build_parser().parse_args(["sweep", "--arch", "rn1", "--depths", "2,5", "--out", "x"])
    >>> specs, notes, jobs = build_specs(args)
    >>> [(s.depth, s.seed, s.width) for s in specs][:3], jobs
    ([(2, 0, 64), (2, 1, 64), (2, 2, 64)], 1)
    """
    options: dict[str, Any] = {}
    if args.continuation:
        options["continuation"] = True
    if args.polish_steps is not None:
        options["polish_steps"] = args.polish_steps
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    given = {k: v for k, v in (("depths", args.depths), ("seeds", args.seeds),
                               ("width", args.width), ("epochs", args.epochs), ("lam", args.lam),
                               ("lr", args.lr), ("loss", args.loss)) if v is not None}
    if hasattr(args, "n_per_class"):  # given ('all' is None: the whole split)
        given["n_per_class"] = args.n_per_class
    if args.preset:
        if args.arch is not None or args.dataset is not None or args.lam_rule is not None:
            raise UsageError("--preset fixes --arch, --dataset and --lam-rule; drop them")
        p = PRESETS[args.preset]
        return p.specs(options=options, **given), p.notes(), p.jobs
    if args.arch is None:
        raise UsageError("give --arch (e.g. --arch rn1,rn2) or --preset")
    if args.dataset is not None:
        given["dataset"] = args.dataset
    if args.lam_rule is not None:
        given["lam_rule"] = args.lam_rule
    specs = expand_grid(args.arch, options=options, **given)
    notes = {sp.row: SYNTHETIC_NOTE for sp in specs if sp.dataset == "synthetic-tokens"}
    return specs, notes, 1


def cmd_sweep(args: argparse.Namespace) -> int:
    """``gufm sweep``: :func:`gufm.experiments.sweep.run_sweep` over the grid or preset.

    Examples
    --------
    >>> from gufm.cli import build_parser
    >>> cmd_sweep(build_parser().parse_args(["sweep", "--preset", "quick", "--out", "x",
    ...                                      "--dry-run"]))  # doctest: +ELLIPSIS
    gufm sweep: 28 runs in 4 row(s), 0 already finished, 28 to run on 2 local processes ...
    ...
    0
    """
    specs, notes, default_jobs = build_specs(args)
    jobs = default_jobs if args.jobs is None else args.jobs
    if args.scheduler is None and jobs < 1:
        raise UsageError(f"--jobs must be a positive integer, got {jobs!r}")
    if args.threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {args.threads!r}")
    writable_folder(args.out, "--out")
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
    summary = run_sweep(specs, args.out, jobs=jobs, scheduler=args.scheduler,
                        device=args.device, data_root=args.data_root, threads=args.threads,
                        progress=not args.no_progress, notes=notes,
                        vectorize={"auto": None, "on": True, "off": False}[args.vectorize_seeds])
    print(f"gufm sweep: {len(summary.completed)} run(s) finished, {len(summary.skipped)} "
          f"skipped (already done), {len(summary.failed)} failed in {summary.seconds:.1f} s; "
          f"table: {summary.out / 'results.csv'}", flush=True)
    for rid, msg in summary.failed.items():
        print(f"  FAILED {rid}: {msg} (traceback in {summary.out / 'errors' / (rid + '.txt')})",
              file=sys.stderr)
    if args.report:
        rep = make_report(args.out)
        print(f"gufm sweep: report in {rep['summary']}")
    return 0 if summary.ok else 1
