"""Why trained networks stall: the LayerNorm singularity, measured (docs/training.md, section 4).

    python -m benchmarks.singular [--depths 2 8] [--newton-iters 100]
                                  [--out benchmarks/results/study/singular.json]
    python -m benchmarks.singular --limit-budget 16 5000 [--out FILE.json]
    python -m benchmarks.singular --kinks 8 3000 [--arch rn2] [--out FILE.json]

The closing-note setup (L-RN1, digits, width 32, 30 per class, lam = 0.005, seed 0, all
defaults: 1000 Adam epochs + 1000 L-BFGS iterations, ``polish_limit=False``: the L-BFGS
plateau, before the singular-limit polish), trained fresh at each depth.  For each
trained network, in float64 with the embedding at its representative scale:

* ``ln_margin``: :func:`gufm.deep.conditioning.layernorm_margin` (smallest relative centred
  input norm of a sample at a LayerNorm, its sample and call);
* ``relu_near_zero``: relu inputs within 1e-6 and 1e-8 of 0 *relative to the largest one of
  their own sample and layer* (the network is homogeneous per sample, so that is the scale a
  kink is measured on), and the same counts relative to the largest one of the whole network
  as training returns it, embedding shrunk (the count an earlier session reported);
* ``curvature``: the second difference of the reduced objective along the unit reduced
  gradient, :math:`(f(t) - 2f(0) + f(-t))/t^2` at ``t = 1e-6``, and the first-order decrease
  the gradient promises over that step;
* ``newton``: :func:`newton_probe`, a second-order method started where the polish stopped
  (scipy's ``trust-krylov`` trust region with exact Hessian-vector products of the reduced
  objective, float64): how much lower it gets, and where it goes -- whether a stationary
  point lies near the trained network at all;
* the training result (gap, ``converged``, ``grad_norm``, ``stop_reason``).

``--limit-budget L EXTRA`` (:func:`limit_budget`) asks instead whether the singular-limit polish
converges with more iterations: the same setup trained with the defaults (singular-limit polish
included), then ``EXTRA`` more limit-polish iterations per round: the objective, the limit
gradient and every freed sample's outward slope before and after.  It also reports each freed
sample's relative centred input norm at the first LayerNorm calls (``ratios``,
:func:`gufm.deep.conditioning.layernorm_ratios`; call 0 is the embedding's, call ``l`` the one
in block ``l``), the same for the samples *not* freed (``others``: the three smallest at the
embedding's call and the smallest at any call: whether another sample approaches the singular
set without reaching the flag), and a thinned trace of the limit polish (``trace``: step,
objective, gradient norm).  A freed sample is held about the realised step off the singular set at call
0; an inner LN_eps maps a centred input far below sqrt(eps) to itself over sqrt(eps), so the sample's
representation regains the others' scale over the next few blocks (about 300x per block at
``ln_eps = 1e-5``), its direction unchanged (every block preserves a sample's direction up to scale):
small ratios at calls 1 to 3 are that regime, not another singular set.

``--kinks L EXTRA`` (:func:`kinks`) asks whether relu kinks keep the limit gradient up: on the
singular limit of the same trained network, before and after ``EXTRA`` more limit-polish
iterations, the relu inputs within 1e-2 ... 1e-8 of their kink relative to their row
(:func:`gufm.deep.kinks.relu_kinks`, against the count a flat density would give) and, for
deltas 1e-6 ... 1e-3, the smallest limit gradient over the derivatives in [0, 1] of the entries
within delta of their kink (:func:`gufm.deep.kinks.kink_subgradient`).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def newton_probe(model: Any, X: Any, y: Any, *, lam: float, loss: str = "ce",
                 groups: list | None = None, max_iter: int = 100) -> dict[str, Any]:
    r"""Run a trust-region Newton method on the reduced objective from ``model``'s parameters.

    Minimises :math:`\mathcal L^\star` (:mod:`gufm.deep.invariance`: the penalty of every
    scale-invariant group in ``groups`` left out) with :func:`scipy.optimize.minimize`,
    ``method="trust-krylov"``: the objective and gradient from
    :func:`gufm.deep.objective.data_loss` and :func:`~gufm.deep.objective.param_penalty`, and
    the Hessian-vector products :math:`\nabla^2\mathcal L^\star v` by double backward, in
    float64.  A trust region accepts only steps that lower the objective, so ``objective <=
    start_objective``.  After each iteration it records the objective, the gradient norm and
    the LayerNorm margin (:func:`gufm.deep.conditioning.layernorm_margin`).

    ``model`` is left at the probe's last point (converted to float64).  Returns the start and
    end objective, gradient norm and margin, the iterations, scipy's message and the trace.
    """
    import numpy as np
    import scipy.optimize as so
    import torch

    from gufm.deep.conditioning import layernorm_margin
    from gufm.deep.objective import data_loss, param_penalty

    model.double()
    X = X.double() if X.is_floating_point() else X
    exclude = frozenset(id(p) for g in (groups or []) for p in g)
    params = [p for p in model.parameters() if p.requires_grad]

    def load(x: np.ndarray) -> None:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(torch.as_tensor(x), params)

    def value(x: np.ndarray, create_graph: bool = False) -> tuple[Any, tuple]:
        load(x)
        f = data_loss(model(X), y, loss) + param_penalty(model, lam, exclude)
        return f, torch.autograd.grad(f, params, create_graph=create_graph)

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = value(x)
        return float(f.detach()), torch.cat([t.reshape(-1) for t in g]).numpy()

    def hessp(x: np.ndarray, v: np.ndarray) -> np.ndarray:
        _, g = value(x, create_graph=True)
        gv = torch.cat([t.reshape(-1) for t in g]) @ torch.as_tensor(v)
        hv = torch.autograd.grad(gv, params)
        return torch.cat([t.reshape(-1) for t in hv]).numpy()

    def state(x: np.ndarray) -> dict[str, float]:
        f, g = fun(x)
        m = layernorm_margin(model, X)
        return {"objective": f, "grad_norm": float(np.linalg.norm(g)), "ln_margin": m.ratio,
                "ln_margin_sample": m.sample}

    x0 = torch.nn.utils.parameters_to_vector(params).detach().numpy().copy()
    start = state(x0)
    trace: list[dict[str, float]] = []
    res = so.minimize(fun, x0, jac=True, hessp=hessp, method="trust-krylov",
                      callback=lambda xk: trace.append(state(xk)),
                      options={"maxiter": int(max_iter), "gtol": 1e-10})
    end = state(res.x)
    return {"start": start, "end": end, "decrease": start["objective"] - end["objective"],
            "iterations": int(res.nit), "message": str(res.message), "trace": trace}


def diagnose(depth: int, newton_iters: int = 100) -> dict[str, Any]:
    """Train one depth and measure it (module docstring)."""
    import torch

    from gufm.deep.conditioning import layernorm_margin
    from gufm.deep.data import load_dataset
    from gufm.deep.invariance import invariant_groups, normalize_groups, reference_norm
    from gufm.deep.kinks import relu_kinks
    from gufm.deep.nets.blocks import record_relu_inputs
    from gufm.deep.objective import full_objective
    from gufm.deep.pipeline import train_and_compare

    torch.set_num_threads(1)
    ds = load_dataset("digits", n_per_class=30, seed=0)
    keep: dict[str, Any] = {}
    t0 = time.perf_counter()
    import tempfile
    from pathlib import Path

    from gufm.deep.checkpoint import load_network

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.pt"
        # the L-BFGS plateau itself: without the singular-limit polish that follows it
        out = train_and_compare("rn1", depth, 32, ds, None, 1000, 0.005, 0.005, 0, save=path,
                                polish_limit=False)
        model, _ = load_network(path)
    keep["seconds"] = time.perf_counter() - t0
    model.double()
    X, y = ds.X.double(), ds.y
    # relu inputs near 0, per sample and layer (gufm.deep.kinks), and against the network's
    # largest one
    near = relu_kinks(model, X, thresholds=(1e-6, 1e-8))
    per_sample = dict(zip((1e-6, 1e-8), near.counts, strict=True))
    with torch.no_grad(), record_relu_inputs() as pre:
        model(X)
    whole = max(float(z.abs().max()) for z in pre)
    global_count = {t: sum(int((z.abs() <= t * whole).sum()) for z in pre) for t in (1e-6, 1e-8)}

    groups = invariant_groups(model)
    normalize_groups(groups, reference_norm(model))
    exclude = frozenset(id(p) for g in groups for p in g)
    params = list(model.parameters())
    m = layernorm_margin(model, X)

    # curvature of the reduced objective along the unit reduced gradient
    def objective() -> float:
        return full_objective(model, X, y, lam=0.005, loss="ce", exclude=exclude)["objective"]

    for p in params:
        p.grad = None
    full_objective(model, X, y, lam=0.005, loss="ce", backward=True, exclude=exclude)
    g = torch.cat([p.grad.reshape(-1) for p in params])
    inv = torch.cat([(p.detach() if id(p) in exclude else torch.zeros_like(p)).reshape(-1)
                     for p in params])
    inv = inv / inv.norm()
    g = g - inv * (inv @ g)  # the invariant (embedding scale) direction taken out
    u = -g / g.norm()
    theta0 = [p.detach().clone() for p in params]

    def at(t: float) -> float:
        off = 0
        with torch.no_grad():
            for p, p0 in zip(params, theta0, strict=True):
                n = p.numel()
                p.copy_(p0 + t * u[off:off + n].reshape(p.shape))
                off += n
        return objective()

    t = 1e-6
    f0, fp, fm = at(0.0), at(t), at(-t)
    at(0.0)
    newton = newton_probe(model, X, y, lam=0.005, groups=groups, max_iter=newton_iters)
    return {
        "depth": depth, **{k: out[k] for k in ("gap", "converged", "grad_norm", "stop_reason")},
        "train_seconds": keep["seconds"],
        "ln_margin": {"ratio": m.ratio, "sample": m.sample, "call": m.call, "calls": m.calls},
        "relu_near_zero_per_sample": {f"{k:g}": v for k, v in per_sample.items()},
        "relu_near_zero_vs_network_max": {f"{k:g}": v for k, v in global_count.items()},
        "relu_inputs": near.total,
        "reduced_grad_norm": float(g.norm()),
        "curvature_along_gradient": (fp - 2 * f0 + fm) / t**2,
        "first_order_decrease_at_t": float(g.norm()) * t,
        "second_order_increase_at_t": (fp - 2 * f0 + fm) / 2,
        "newton": newton,
    }


def limit_budget(depth: int, extra: int) -> dict[str, Any]:
    """Train the closing-note setup at ``depth`` with the defaults, then run
    :func:`gufm.deep.singular_limit.limit_polish` for ``extra`` more iterations; the objective,
    limit gradient and slope before and after."""
    import torch

    from gufm.deep.conditioning import layernorm_ratios
    from gufm.deep.data import load_dataset
    from gufm.deep.nets import model_for
    from gufm.deep.singular_limit import limit_polish
    from gufm.deep.training import train

    torch.set_num_threads(1)
    ds = load_dataset("digits", n_per_class=30, seed=0)
    model = model_for(ds, "rn1", depth, 32, seed=0)
    t0 = time.perf_counter()
    tr = train(model, ds, lam=0.005, seed=0, progress=False)
    t1 = time.perf_counter()
    def ratios(samples: Any) -> dict[str, list[float]]:
        r = layernorm_ratios(model, ds.X.double())
        return {str(s): [float(r[c][s]) for c in range(min(5, len(r)))] for s in samples or ()}

    def others(freed: Any) -> dict[str, Any]:
        """The samples *not* freed: the smallest ratio at the embedding's LayerNorm (call 0)
        and at any call, with its sample and call (does another sample approach the set?)."""
        r = torch.stack(layernorm_ratios(model, ds.X.double()))  # (calls, N)
        keep = torch.ones(r.shape[1], dtype=torch.bool)
        keep[list(freed or ())] = False
        idx = torch.nonzero(keep).flatten()
        sub = r[:, idx]
        c, j = divmod(int(sub.argmin()), sub.shape[1])
        e0 = sub[0].sort().values[:3]
        return {"embedding_smallest": [float(v) for v in e0],
                "embedding_sample": int(idx[int(sub[0].argmin())]),
                "any_call": float(sub[c, j]), "any_call_sample": int(idx[j]), "call": c}

    trained_ratios = ratios(tr.limit_samples)
    trained_others = others(tr.limit_samples)
    trace: list[dict[str, Any]] = []
    lp = limit_polish(model, ds.X, ds.y, lam=0.005, max_iter=extra, record=trace.append)
    lim = lp.limit
    return {"depth": depth, "extra_iterations": extra, "train_seconds": t1 - t0,
            "extra_seconds": time.perf_counter() - t1,
            "trained": {"limit_grad_norm": tr.limit_grad_norm, "limit_slope": tr.limit_slope,
                        "limit_samples": tr.limit_samples, "converged": tr.converged,
                        "ratios": trained_ratios, "others": trained_others},
            "extra": {"accepted": lp.accepted, "decrease": lp.start_objective - lp.objective,
                      "iterations": lp.iterations, "rounds": lp.rounds,
                      "samples": list(lp.samples), "stop_reason": lp.stop_reason,
                      "limit_grad_norm": None if lim is None else lim.grad_norm,
                      "limit_embedding_part": None if lim is None else lim.embedding,
                      "limit_slope": None if lim is None else lim.slope,
                      "limit_slopes": None if lim is None else list(lim.slopes),
                      "converged": lp.converged(1e-4), "ratios": ratios(lp.samples),
                      "others": others(lp.samples),
                      "trace": [{k: t[k] for k in ("step", "objective", "grad_norm") if k in t}
                                for t in trace[:: max(1, len(trace) // 20)]]}}


def kinks(depth: int, extra: int, deltas: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3),
          arch: str = "rn1", max_pairs: int = 2000) -> dict[str, Any]:
    """Train the closing-note setup at ``depth`` with the defaults (``arch="rn2"``: the same
    with L-RN2); on its singular limit
    (:func:`gufm.deep.singular_limit.limit_network`), before and after ``extra`` more
    limit-polish iterations: the relu inputs near their kink
    (:func:`gufm.deep.kinks.relu_kinks`, with the flat-density expectation) and, for each
    ``delta``, the smallest limit gradient over the derivatives of the entries within
    ``delta`` of their kink (:func:`gufm.deep.kinks.kink_subgradient`)."""
    import copy

    import torch

    from gufm.deep.data import load_dataset
    from gufm.deep.kinks import kink_subgradient, relu_kinks
    from gufm.deep.nets import model_for
    from gufm.deep.singular_limit import limit_network, limit_polish, singular_limit
    from gufm.deep.training import train

    torch.set_num_threads(1)
    ds = load_dataset("digits", n_per_class=30, seed=0)
    X, y = ds.X.double(), ds.y
    model = model_for(ds, arch, depth, 32, seed=0)
    t0 = time.perf_counter()
    tr = train(model, ds, lam=0.005, seed=0, progress=False)
    t1 = time.perf_counter()

    def measure(samples: Any) -> dict[str, Any]:
        m = copy.deepcopy(model)
        with limit_network(m, X, samples) as (net, groups):
            k = relu_kinks(net, X)
            subs = []
            for d in deltas:
                r = kink_subgradient(net, X, y, lam=0.005, groups=groups, delta=d,
                                     max_pairs=max_pairs)
                subs.append({"delta": d, "pairs": r.pairs, "grad_norm": r.grad_norm,
                             "min_norm": r.min_norm, "checked_norm": r.checked_norm,
                             "switched": r.switched})
                print(f"  delta {d:g}: {r.pairs} entries, limit gradient {r.grad_norm:.3e} -> "
                      f"{r.checked_norm:.3e} (linearised {r.min_norm:.3e})", flush=True)
        print("  relu inputs within t of their kink: " + ", ".join(
            f"{t:g}: {c} (flat {e:.1f})" for t, c, e in zip(k.thresholds, k.counts, k.expected,
                                                             strict=True)), flush=True)
        # hidden units switched off (L-RN2: a row of V1 at most 1e-6 of the largest row): each
        # puts all N of its relu inputs at the kink
        dead = [int((mod.V1.weight.norm(dim=1) <= 1e-6 * mod.V1.weight.norm(dim=1).max()).sum())
                for mod in m.modules() if getattr(mod, "layers", 1) == 2 and hasattr(mod, "V1")]
        if dead:
            print(f"  hidden units switched off per block: {dead}", flush=True)
        return {"thresholds": list(k.thresholds), "counts": list(k.counts), "dead_units": dead,
                "expected": list(k.expected), "per_call": [list(c) for c in k.per_call],
                "total": k.total, "subgradient": subs}

    if not tr.limit_samples:
        raise RuntimeError(f"depth {depth}: no singular limit was kept ({tr.stop_reason})")

    def parts(samples: Any) -> dict[str, float]:
        """Where the limit gradient lives (:class:`gufm.deep.singular_limit.SingularLimit`)."""
        lim = singular_limit(model, X, y, lam=0.005, samples=list(samples))
        return {"grad_norm": lim.grad_norm, "rest": lim.rest, "embedding": lim.embedding,
                "direction": lim.direction, "slope": lim.slope}

    print(f"L={depth}: trained in {t1 - t0:.0f} s, limit of samples {tr.limit_samples}, "
          f"limit gradient {tr.limit_grad_norm:.3e}", flush=True)
    before = measure(tr.limit_samples)
    parts_before = parts(tr.limit_samples)
    print(f"  limit gradient parts: {parts_before}", flush=True)
    lp = limit_polish(model, ds.X, ds.y, lam=0.005, max_iter=extra)
    print(f"{extra} more limit-polish iterations: {lp.describe(1e-4)}", flush=True)
    after = measure(lp.samples) if lp.accepted else None
    parts_after = parts(lp.samples) if lp.accepted else None
    print(f"  limit gradient parts: {parts_after}", flush=True)
    return {"arch": arch, "depth": depth, "extra_iterations": extra,
            "train_seconds": t1 - t0, "seconds": time.perf_counter() - t0,
            "trained": {"limit_samples": list(tr.limit_samples),
                        "limit_grad_norm": tr.limit_grad_norm, "kinks": before,
                        "limit_parts": parts_before},
            "extra": {"accepted": lp.accepted, "samples": list(lp.samples),
                      "decrease": lp.start_objective - lp.objective,
                      "limit_grad_norm": None if lp.limit is None else lp.limit.grad_norm,
                      "kinks": after, "limit_parts": parts_after}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks._common import machine, write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--newton-iters", type=int, default=100,
                    help="iterations of the trust-region Newton probe (default 100)")
    ap.add_argument("--limit-budget", type=int, nargs=2, default=None, metavar=("L", "EXTRA"),
                    help="instead: train depth L, then EXTRA more singular-limit iterations")
    ap.add_argument("--kinks", type=int, nargs=2, default=None, metavar=("L", "EXTRA"),
                    help="instead: train depth L, measure the relu kinks at its singular limit "
                         "before and after EXTRA more limit-polish iterations")
    ap.add_argument("--deltas", type=float, nargs="+", default=[1e-6, 1e-5, 1e-4, 1e-3],
                    help="--kinks only: the deltas of the subgradient (default 1e-6 ... 1e-3)")
    ap.add_argument("--max-pairs", type=int, default=2000,
                    help="--kinks only: refuse more inputs within delta (default 2000)")
    ap.add_argument("--arch", default="rn1", choices=("rn1", "rn2"),
                    help="--kinks only: the architecture (default rn1, the closing-note setup)")
    ap.add_argument("--out", default=None, help="write the JSON here")
    a = ap.parse_args(argv)
    if a.kinks is not None:
        res = kinks(*a.kinks, deltas=tuple(a.deltas), arch=a.arch, max_pairs=a.max_pairs)
        payload = {"benchmark": "singular-kinks", "machine": machine(), "result": res}
        write_json(payload, a.out)
        return payload
    if a.limit_budget is not None:
        res = limit_budget(*a.limit_budget)
        print(json.dumps(res, indent=1), flush=True)
        payload = {"benchmark": "singular-limit-budget", "machine": machine(), "result": res}
        write_json(payload, a.out)
        return payload
    rows = []
    for L in a.depths:
        r = diagnose(L, a.newton_iters)
        rows.append(r)
        print(f"L={L}: gap {r['gap']:.5f} converged {r['converged']}; ln margin "
              f"{r['ln_margin']['ratio']:.1e} (sample {r['ln_margin']['sample']}); relu inputs "
              f"within 1e-8 of 0 per sample {r['relu_near_zero_per_sample']['1e-08']}, vs the "
              f"network max {r['relu_near_zero_vs_network_max']['1e-08']} of {r['relu_inputs']}; "
              f"curvature along the gradient {r['curvature_along_gradient']:.2e}", flush=True)
        nw = r["newton"]
        print(f"  trust-region Newton, {nw['iterations']} iterations: objective "
              f"{nw['start']['objective']:.12f} -> {nw['end']['objective']:.12f} "
              f"(-{nw['decrease']:.2e}); grad norm {nw['start']['grad_norm']:.2e} -> "
              f"{nw['end']['grad_norm']:.2e}; ln margin {nw['start']['ln_margin']:.1e} -> "
              f"{nw['end']['ln_margin']:.1e} (sample {nw['end']['ln_margin_sample']}); "
              f"{nw['message']}", flush=True)
    out = {"benchmark": "singular", "machine": machine(), "rows": rows}
    write_json(out, a.out)
    return out


if __name__ == "__main__":
    main()
