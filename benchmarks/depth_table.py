"""Depth table (issue 4): L-RN1 on the digits trained to its optimum, against the GUFM.

    python -m benchmarks.depth_table study [--out DIR] [--jobs 2] [--max-minutes 35]
    python -m benchmarks.depth_table render [--out DIR]
    python -m benchmarks.depth_table closing [FILE.json]
    python -m benchmarks.depth_table [--depths 2 5 13 34] [--n-per-class 50] [--epochs 2000]
        [--polish-steps 1000] [--width 64] [--lam 0.005] [--lr 0.005] [--seed 0] [--jobs 2]
        [--arch rn1] [--dataset digits] [--device cpu] [--out FILE.json]

For every depth: build the network (:func:`gufm.nets.model_for`, seed ``--seed``), train it
(:func:`gufm.training.train`: full-batch Adam with warm-up + cosine decay, then the float64
L-BFGS polish) on ``mean CE + lam/2 sum ||theta||^2`` and compare it with the GUFM optimum
(:func:`gufm.compare.compare`).  Depths run in ``--jobs`` processes with one torch thread each
(deepest first; spawned processes for CUDA).  Prints a markdown table and the log-log slopes of
the gap and of NC1 against L, and writes everything (plus the machine) as JSON.
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def run_depth(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train and compare one network (runs in a worker process, one torch thread)."""
    import torch

    from gufm.deep.data import load_dataset
    from gufm.deep.nets import model_for
    from gufm.deep.reduction import compare
    from gufm.deep.training import train

    torch.set_num_threads(int(cfg.get("threads", 1)))
    t0 = time.perf_counter()
    ds = load_dataset(cfg["dataset"], n_per_class=cfg["n_per_class"], seed=0)
    model = model_for(ds, cfg["arch"], cfg["depth"], cfg["width"], seed=cfg["seed"])
    tr = train(model, ds, lam=cfg["lam"], loss=cfg["loss"], lr=cfg["lr"], epochs=cfg["epochs"],
               seed=cfg["seed"], polish_steps=cfg["polish_steps"], device=cfg["device"],
               progress=False)
    adam_end = [h["objective"] for h in tr.history if h["phase"] == "adam"]
    cmp = compare(model, ds, lam=cfg["lam"], loss=cfg["loss"])
    out = cmp.to_dict()
    out.update(depth=cfg["depth"], adam_end_objective=adam_end[-1] if adam_end else math.nan,
               polish_iters=tr.polish_iters, stop_reason=tr.stop_reason,
               train_seconds=tr.seconds, seconds=time.perf_counter() - t0)
    return out


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log10(y) against log10(x) (NaN with < 2 positive points)."""
    pts = [(math.log10(x), math.log10(y)) for x, y in zip(xs, ys, strict=True) if y > 0]
    if len(pts) < 2:
        return math.nan
    a = np.array(pts)
    return float(np.polyfit(a[:, 0], a[:, 1], 1)[0])


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| L | e2e objective | GUFM optimum | gap | head - opt | NC1 | NC2 | NC3 | "
            "GUFM dist. | train acc. | grad norm | grad norm w/o embed. | L-BFGS its | "
            "time (s) |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['depth']} | {r['e2e_objective']:.6f} | {r['gufm_optimum']:.6f} | "
            f"{r['gap']:.5f} | {r['head_gap']:.5f} | {r['nc1']:.4f} | {r['nc2']:.4f} | "
            f"{r['nc3']:.4f} | {r['gufm_distance']:.4f} | {r['train_accuracy']:.3f} | "
            f"{r['grad_norm']:.2e} | {r['grad_norm_rest']:.2e} | {r['polish_iters']} | "
            f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def run(depths: list[int], *, arch: str = "rn1", dataset: str = "digits", n_per_class: int = 50,
        epochs: int = 2000, polish_steps: int = 1000, width: int = 64, lam: float = 0.005,
        lr: float = 0.005, seed: int = 0, loss: str = "ce", jobs: int = 2,
        device: str = "cpu") -> dict[str, Any]:
    """Train and compare every depth; returns the rows, slopes, settings and machine."""
    from benchmarks._common import machine

    base = dict(arch=arch, dataset=dataset, n_per_class=n_per_class, epochs=epochs,
                polish_steps=polish_steps, width=width, lam=lam, lr=lr, seed=seed, loss=loss,
                device=device, threads=1)
    cfgs = [dict(base, depth=L) for L in sorted(depths, reverse=True)]
    t0 = time.perf_counter()
    if jobs <= 1:
        rows = [run_depth(c) for c in cfgs]
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn" if device.startswith("cuda") else "fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            rows = list(pool.map(run_depth, cfgs))
    rows.sort(key=lambda r: r["depth"])
    Ls = [r["depth"] for r in rows]
    return {
        "settings": base, "rows": rows, "wall_seconds": time.perf_counter() - t0,
        "slope_gap": slope(Ls, [r["gap"] for r in rows]),
        "slope_nc1": slope(Ls, [r["nc1"] for r in rows]),
        "gap_decreasing": all(a["gap"] > b["gap"] for a, b in zip(rows, rows[1:], strict=False)),
        "machine": machine(),
    }


# ----------------------------------------------------------------------------- the study
#: rows of the committed study: (label, arch, dataset, n_per_class, lam_rule, seeds, depths,
#: deepest depth with a fresh run; deeper ones by continuation only)
STUDY_ROWS = (
    ("L-RN1 / digits", "rn1", "digits", 50, "const", (0, 1, 2), (2, 3, 5, 8, 13, 21), 8),
    ("L-RN2 / digits (lam/L)", "rn2", "digits", 50, "inverse-depth", (0, 1, 2), (2, 3, 5, 8), 8),
    ("L-RN1 / fashion-mnist", "rn1", "fashion-mnist", 100, "const", (0, 1, 2), (2, 3, 5, 8), 8),
    ("L-RN2 / fashion-mnist (lam/L)", "rn2", "fashion-mnist", 100, "inverse-depth", (0, 1, 2),
     (2, 3, 5, 8), 8),
    ("L-T11 / fashion-mnist (14x14 patches)", "t11", "fashion-mnist", 100, "const", (0,),
     (2, 3, 5), 5, {"patch_size": 14}),
)
#: scaled to a shared 2-core machine (issue 13 asks for 5000 epochs, depths to 34/89, 5 seeds)
STUDY_SETTINGS = dict(width=64, lam=0.005, lr=0.005, epochs=200, polish_steps=200,
                      continue_epochs=0, loss="ce")
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


def _load(dataset: str, n_per_class: int) -> Any:
    from gufm.deep.data import load_dataset

    root = FASHION_ROOT if dataset == "fashion-mnist" else None
    return load_dataset(dataset, root=root, n_per_class=n_per_class, seed=0)


def study_task(task: dict[str, Any]) -> list[dict[str, Any]]:
    """One (row, seed): the continuation chain (fresh, split, continued at every depth) and the
    L = 0 embedding-only reference (runs in a worker process, one torch thread)."""
    import torch

    from gufm.deep.pipeline import continuation_chain, embedding_only

    torch.set_num_threads(1)
    ds = _load(task["dataset"], task["n_per_class"])
    st = task["settings"]
    kw = dict(polish_steps=st["polish_steps"]) | dict(task.get("options", {}))
    t0 = time.perf_counter()
    ref = embedding_only(ds, st["width"], lam=st["lam"], loss=st["loss"], lr=st["lr"],
                         epochs=st["epochs"], seed=task["seed"],
                         polish_steps=st["polish_steps"])
    rows = [dict(ref, depth=0, kind="embedding-only", lam=st["lam"], best=True)]
    rows += continuation_chain(task["arch"], task["depths"], st["width"], ds, None,
                               st["epochs"], st["lam"], st["lr"], task["seed"], st["loss"],
                               lam_rule=task["lam_rule"],
                               continue_epochs=st["continue_epochs"],
                               fresh_max_depth=task["fresh_max_depth"], **kw)
    X = ds.X.reshape(ds.N, -1).double().numpy()
    rank = int(np.linalg.matrix_rank(X))
    for r in rows:
        r.update(row=task["row"], arch=task["arch"], dataset=task["dataset"],
                 seed=task["seed"], N=ds.N, input_rank=rank, lam_rule=task["lam_rule"])
    rows[0]["task_seconds"] = time.perf_counter() - t0
    return rows


def run_study(out: str, *, jobs: int = 2, max_minutes: float = 35.0,
              rows: tuple = STUDY_ROWS) -> None:
    """Run every (row, seed) task (seed-major order, so every row gets its first seeds first),
    appending each task's rows to ``out/runs.jsonl``; tasks already there are skipped, and no
    new task starts after ``max_minutes``."""
    import json
    import multiprocessing as mp
    from pathlib import Path

    import gufm.deep.pipeline  # noqa: F401 - loaded once, before the workers fork

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "runs.jsonl"
    done = set()
    if log.is_file():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            done.add((r["row"], r["seed"]))
    tasks = []
    for seed in range(max(len(r[5]) for r in rows)):
        for label, arch, dataset, n, rule, seeds, depths, fmax, *opts in rows:
            if seed < len(seeds) and (label, seeds[seed]) not in done:
                tasks.append(dict(row=label, arch=arch, dataset=dataset, n_per_class=n,
                                  lam_rule=rule, seed=seeds[seed], depths=list(depths),
                                  fresh_max_depth=fmax, settings=STUDY_SETTINGS,
                                  options=opts[0] if opts else {}))
    t0 = time.perf_counter()
    ctx = mp.get_context("fork")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        pending = {}
        it = iter(tasks)

        def submit() -> None:
            if time.perf_counter() - t0 > 60 * max_minutes:
                return
            t = next(it, None)
            if t is not None:
                pending[pool.submit(study_task, t)] = t

        for _ in range(jobs):
            submit()
        from concurrent.futures import FIRST_COMPLETED, wait

        while pending:
            fin, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for f in fin:
                t = pending.pop(f)
                res = f.result()
                with log.open("a") as fh:
                    for r in res:
                        fh.write(json.dumps(r) + "\n")
                print(f"done {t['row']} seed {t['seed']} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
                submit()


def local_slopes(depths: list[float], values: list[float]) -> list[float]:
    """log-log slopes between consecutive depths (NaN where a value is not positive)."""
    out = []
    for (a, x), (b, y) in zip(zip(depths, values, strict=True),
                              list(zip(depths, values, strict=True))[1:], strict=False):
        out.append(math.log(y / x) / math.log(b / a) if x > 0 and y > 0 else math.nan)
    return out


def seed_slopes(per_seed_best: dict[int, dict[int, dict[str, Any]]], seeds: list[int],
                depths: list[int], key: str) -> tuple[list[float], float, float]:
    """Per-seed log-log slopes of ``key`` against depth (seeds with >= 2 depths), their mean
    and standard error (NaN when too few seeds).

    ``per_seed_best[L][s]`` is the best run of seed ``s`` at depth ``L``.
    """
    per = []
    for s in seeds:
        pts = [(L, per_seed_best[L][s][key]) for L in depths if s in per_seed_best.get(L, {})]
        if len(pts) >= 2:
            per.append(slope([p[0] for p in pts], [p[1] for p in pts]))
    mean = float(np.mean(per)) if per else math.nan
    se = float(np.std(per, ddof=1) / math.sqrt(len(per))) if len(per) > 1 else math.nan
    return per, mean, se


def render_study(out: str) -> str:
    """Tables (``study.md``), slopes (``slopes.json``) and the figure (``gap.png``) from
    ``out/runs.jsonl``; returns the markdown."""
    import json
    from pathlib import Path

    folder = Path(out)
    runs = [json.loads(x) for x in (folder / "runs.jsonl").read_text().splitlines()]
    md = ["# Depth study: the sandwich GUFM optimum <= best e2e network",
          "", "Reproduce: `python -m benchmarks.depth_table study --out "
          "benchmarks/results/study` then `python -m benchmarks.depth_table render "
          "benchmarks/results/study`.", "",
          f"Settings: {json.dumps(STUDY_SETTINGS)}; CE; Adam full batch then the float64 "
          "L-BFGS polish; continuation: the best network of the previous depth split "
          "(`split`), then polished (`continued`, never above `split`). "
          "`best e2e` is the lowest of fresh/split/continued; `conv` counts the seeds whose "
          "best run met the gradient criterion (grad norm <= 1e-4).", "",
          "Scaled down to a shared 2-core machine (load ~10, `nice`), against the issue's "
          "protocol: 200 Adam epochs + 200 L-BFGS iterations (not 5000 epochs), fresh runs at "
          "depths 2..8 (L-RN1 on digits continued to 21 by splitting; not 34, 55, 89), 3 seeds "
          "(not 5), continuation = split + polish only (the library default is now "
          "epochs/4 Adam epochs at lr/10 + polish, decided after this study had started). "
          "No run met the gradient criterion: every gap is an upper bound. The L = 0 row is "
          "the linear embedding of the flattened input + LayerNorm + classifier at "
          "lam = 0.005 (for the lam/L rows the GUFM optimum itself falls with L).", ""]
    slopes: dict[str, Any] = {}
    for label in dict.fromkeys(r["row"] for r in runs):
        rr = [r for r in runs if r["row"] == label]
        seeds = sorted({r["seed"] for r in rr})
        depths = sorted({r["depth"] for r in rr})
        N, rank = rr[0]["N"], rr[0]["input_rank"]
        md += [f"## {label}", "", f"N = {N}, input rank = {rank}, seeds {seeds}.", ""]
        if N <= rank:
            md += ["**FLAG: N <= rank of the inputs: the embedding alone can reach the GUFM "
                   "optimum; this row says nothing about depth.**", ""]
        md += ["| L | GUFM opt | best e2e | gap | head gap | body reg | body reg x L | "
               "fresh gap | split gap | continued gap | conv | local slope (gap) |",
               "|" + "---|" * 12]
        per_seed_best: dict[int, dict[int, dict[str, Any]]] = {}
        for s in seeds:
            for L in depths:
                cand = [r for r in rr if r["seed"] == s and r["depth"] == L]
                if cand:
                    per_seed_best.setdefault(L, {})[s] = min(cand,
                                                             key=lambda r: r["e2e_objective"])
        mean_gap = []
        for L in depths:
            bs = list(per_seed_best.get(L, {}).values())

            def m(key: str, rows: list[dict[str, Any]] = bs) -> float:
                return float(np.mean([r[key] for r in rows])) if rows else math.nan

            def kind_gap(kind: str, L: int = L, rr: list = rr) -> str:
                v = [r["gap"] for r in rr if r["depth"] == L and r["kind"] == kind]
                return f"{np.mean(v):.5f}" if v else "-"
            mean_gap.append(m("gap"))
            conv = sum(bool(r["converged"]) for r in bs)
            md.append(f"| {L} | {m('gufm_optimum'):.6f} | {m('e2e_objective'):.6f} | "
                      f"{m('gap'):.5f} | {m('head_gap'):.5f} | {m('body_penalty'):.5f} | "
                      f"{m('body_penalty') * L:.5f} | {kind_gap('fresh')} | "
                      f"{kind_gap('split')} | {kind_gap('continued')} | {conv}/{len(bs)} | "
                      "SLOPE |")
        dpos = [L for L in depths if L > 0]
        loc = local_slopes(dpos, [g for L, g in zip(depths, mean_gap, strict=True) if L > 0])
        cells = ["-"] + ["-"] + [f"{v:+.2f}" for v in loc]
        cells = cells[-len(depths):] if len(depths) > len(dpos) else cells[1:]
        k = 0
        for i, line in enumerate(md):
            if line.endswith("SLOPE |"):
                md[i] = line.replace("SLOPE", cells[k] if k < len(cells) else "-")
                k += 1
        # per-seed log-log slopes of the best gap over L > 0, mean and standard error
        ss, mean, se = seed_slopes(per_seed_best, seeds, dpos, "gap")
        _, nc_mean, nc_se = seed_slopes(per_seed_best, seeds, dpos, "nc1")
        grows = bool(len(loc) and np.nanmean(loc[-2:]) > 0)
        slopes[label] = {"gap_slope_mean": mean, "gap_slope_se": se, "per_seed": ss,
                         "nc1_slope_mean": nc_mean, "nc1_slope_se": nc_se,
                         "local_slopes": loc, "depths": dpos, "gap_grows_with_depth": grows,
                         "embedding_alone_reaches_gufm": N <= rank}
        md += ["", f"log-log slope of the best gap over L = {dpos[0]}..{dpos[-1]}: "
                   f"{mean:+.3f} +- {se:.3f} (mean +- standard error over {len(ss)} seeds); "
                   f"local slopes at the deepest depths: "
                   + ", ".join(f"{v:+.2f}" for v in loc[-2:])
               + f"; NC1 slope of the best networks {nc_mean:+.3f} +- {nc_se:.3f}."]
        if grows:
            md += ["", "**FLAG: the gap grows with depth at the deepest depths of this row.**"]
        share = [np.mean([r["body_penalty"] / r["gap"] for r in per_seed_best[L].values()
                          if r["gap"] > 0]) for L in dpos]
        if share and max(share) < 0.01:
            md += ["", "**FLAG: the blocks are switched off (body regularisation below 1% of "
                       "the gap at every depth): the networks are about the embedding alone, "
                       "and the row's trend comes from the GUFM optimum at lam/L and the "
                       "head, not from building features with depth.**"]
        slopes[label]["blocks_switched_off"] = bool(share and max(share) < 0.01)
        md.append("")
    (folder / "study.md").write_text("\n".join(md) + "\n")
    (folder / "slopes.json").write_text(json.dumps(slopes, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for label in slopes:
            rr = [r for r in runs if r["row"] == label and r["depth"] > 0]
            ds_ = sorted({r["depth"] for r in rr})
            best = [np.mean([min((r for r in rr if r["depth"] == L and r["seed"] == s),
                                 key=lambda r: r["e2e_objective"])["gap"]
                             for s in {r["seed"] for r in rr if r["depth"] == L}])
                    for L in ds_]
            ax.loglog(ds_, best, "o-", label=label)
        ax.set_xlabel("depth L")
        ax.set_ylabel("best e2e - GUFM optimum")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "gap.png", dpi=120)
    except ImportError:  # pragma: no cover - matplotlib is optional
        pass
    return "\n".join(md)


def closing_note(out: str) -> dict[str, Any]:
    """Issue 13's closing-note measurement: L-RN1 on digits, width 32, 30 per class,
    lam = 0.005, seed 0, all defaults; fresh runs at L = 2, 4, 8, 16, 32 and the continuation
    chain from L = 2 (``fresh=False``); written to ``out`` as JSON."""
    import json

    import torch

    from gufm.deep.data import load_dataset
    from gufm.deep.pipeline import continuation_chain, train_and_compare

    torch.set_num_threads(1)
    ds = load_dataset("digits", n_per_class=30, seed=0)
    res: dict[str, Any] = {"fresh": [], "chain": []}
    for L in (2, 4, 8, 16, 32):
        res["fresh"].append(dict(train_and_compare("rn1", L, 32, ds, None, 1000, 0.005, 0.005,
                                                   0), depth=L))
    res["chain"] = continuation_chain("rn1", [2, 4, 8, 16, 32], 32, ds, None, 1000, 0.005,
                                      0.005, 0, fresh=False)
    Path(out).write_text(json.dumps(res, indent=1) + "\n")
    return res


def main(argv: list[str] | None = None) -> int:
    import sys

    from benchmarks._common import write_json

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "closing":
        res = closing_note(argv[1] if len(argv) > 1 else "closing_note.json")
        for r in res["fresh"] + res["chain"]:
            print(r["depth"], r.get("kind", "fresh"), f"gap {r['gap']:.5f}",
                  f"converged {r['converged']}", r["stop_reason"])
        return 0
    if argv and argv[0] in ("study", "render"):
        q = argparse.ArgumentParser(description="the committed depth study")
        q.add_argument("cmd")
        q.add_argument("--out", default="benchmarks/results/study")
        q.add_argument("--jobs", type=int, default=2)
        q.add_argument("--max-minutes", type=float, default=35.0)
        b = q.parse_args(argv)
        if b.cmd == "study":
            run_study(b.out, jobs=b.jobs, max_minutes=b.max_minutes)
        print(render_study(b.out))
        return 0

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[2, 5, 13, 34])
    p.add_argument("--arch", default="rn1")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--n-per-class", type=int, default=50)
    p.add_argument("--epochs", type=int, default=2000)
    p.add_argument("--polish-steps", type=int, default=1000)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--lam", type=float, default=0.005)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss", default="ce")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    res = run(a.depths, arch=a.arch, dataset=a.dataset, n_per_class=a.n_per_class,
              epochs=a.epochs, polish_steps=a.polish_steps, width=a.width, lam=a.lam, lr=a.lr,
              seed=a.seed, loss=a.loss, jobs=a.jobs, device=a.device)
    print(markdown(res["rows"]))
    print(f"\nlog-log slope vs L: gap {res['slope_gap']:.3f}, NC1 {res['slope_nc1']:.3f}; "
          f"gap decreasing: {res['gap_decreasing']}; wall {res['wall_seconds']:.0f} s")
    write_json(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
