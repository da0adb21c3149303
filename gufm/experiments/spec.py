r"""One run of a depth sweep: :class:`RunSpec`, its validation and :func:`expand_grid`.

A run is one network: architecture, data set, depth, seed and the training hyper-parameters.
Its id (:attr:`RunSpec.run_id`) is a readable prefix plus a hash of every field that changes the
result, so a finished run is recognised by its file name (:mod:`gufm.experiments.table`).

:math:`\lambda` rules: ``const`` trains every depth with ``lam``; ``inverse-depth`` with
``lam / L`` (the paper's choice for two-layer blocks).  The defaults of a run are the field
defaults of :class:`RunSpec` (the command line takes them from there, see :func:`spec_defaults`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

from gufm.deep.data.loaders import DATASETS
from gufm.deep.nets.models import ARCHS
from gufm.model.losses import LOSSES

LAM_RULES = ("const", "inverse-depth")

#: configuration columns of the long-format table, in order (then ``metric``, ``value``)
CONFIG_COLUMNS = ("run_id", "arch", "dataset", "depth", "seed", "lam", "lam_base", "lam_rule",
                  "width", "n_per_class", "epochs", "lr", "loss", "options", "row", "device")
TABLE_COLUMNS = (*CONFIG_COLUMNS, "metric", "value")

#: options of :func:`gufm.deep.pipeline.train_and_compare` that change a run's result (part of the
#: run id); ``device``, ``root``/``data_root`` and ``threads`` do not.
RESULT_OPTIONS = ("polish_steps", "batch_size", "data_seed", "normalize", "ln_eps", "bias",
                  "patch_size", "mlp_hidden", "vocab_size", "seq_len", "num_classes", "schedule",
                  "warmup", "final_lr", "polish", "polish_tol", "scale_invariant",
                  "continuation", "continue_epochs", "continue_lr", "fresh_max_depth",
                  "continue_from")

RunFn = Callable[..., dict[str, Any]]


#: architecture and data set names a run accepts
ARCH_NAMES: tuple[str, ...] = tuple(ARCHS)
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)
#: the paper's depths and seeds (the defaults of :func:`expand_grid`)
PAPER_DEPTHS = (2, 3, 5, 8, 13, 21, 34)
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
DEFAULT_DATASET = "digits"


# ----------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class RunSpec:
    """One network of a sweep.

    Attributes
    ----------
    arch : str
        One of :data:`gufm.nets.ARCHS`.
    dataset : str
        One of :data:`gufm.data.DATASETS`.
    depth : int
        Number of blocks ``L >= 1``.
    seed : int
        Initialisation and batch-order seed.
    lam_base : float
        The ``--lam`` of the sweep.
    lam_rule : {"const", "inverse-depth"}
        ``lam = lam_base`` or ``lam_base / depth``.
    width : int
    n_per_class : int or None
        Class-balanced subset size (``None``: the whole split).
    epochs : int
        Adam epochs.
    lr : float
    loss : {"ce", "mse"}
    options : tuple of (str, value)
        Further keyword arguments of :func:`gufm.deep.pipeline.train_and_compare` that change the
        result (sorted; see :data:`RESULT_OPTIONS`).
    row : str
        Name of the figure row (architecture/data set group) this run belongs to.

    Examples
    --------
    >>> sp = RunSpec("rn2", "digits", depth=4, seed=1, lam_rule="inverse-depth")
    >>> sp.lam, sp.run_id.startswith("rn2-digits-L4-s1-")
    (0.00125, True)
    >>> RunSpec.from_dict(sp.to_dict()) == sp
    True
    >>> sp.kwargs()["lam"], sp.config()["row"]
    (0.00125, 'L-RN2 / digits (lam/L)')
    """

    arch: str
    dataset: str
    depth: int
    seed: int
    lam_base: float = 0.005
    lam_rule: str = "const"
    width: int = 64
    n_per_class: int | None = 50
    epochs: int = 500
    lr: float = 5e-3
    loss: str = "ce"
    options: tuple[tuple[str, Any], ...] = ()
    row: str = ""

    @property
    def lam(self) -> float:
        """The :math:`\\lambda` the network is trained with."""
        return self.lam_base / self.depth if self.lam_rule == "inverse-depth" else self.lam_base

    @property
    def run_id(self) -> str:
        """Stable id: readable prefix plus a hash of every result-relevant field."""
        ident = {k: v for k, v in asdict(self).items() if k != "row"}
        ident["options"] = [list(o) for o in self.options]
        digest = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
        return f"{self.arch}-{self.dataset}-L{self.depth}-s{self.seed}-{digest[:10]}"

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`gufm.deep.pipeline.train_and_compare` (without ``device``)."""
        return dict(arch=self.arch, depth=self.depth, width=self.width, dataset=self.dataset,
                    n_per_class=self.n_per_class, epochs=self.epochs, lam=self.lam, lr=self.lr,
                    seed=self.seed, loss=self.loss, **dict(self.options))

    def config(self, device: str = "cpu") -> dict[str, Any]:
        """The configuration columns of this run's rows."""
        return {"run_id": self.run_id, "arch": self.arch, "dataset": self.dataset,
                "depth": self.depth, "seed": self.seed, "lam": self.lam,
                "lam_base": self.lam_base, "lam_rule": self.lam_rule, "width": self.width,
                "n_per_class": "" if self.n_per_class is None else self.n_per_class,
                "epochs": self.epochs, "lr": self.lr, "loss": self.loss,
                "options": json.dumps(dict(self.options), sort_keys=True),
                "row": self.row or default_row_name(self.arch, self.dataset, self.lam_rule),
                "device": device}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (inverse of :meth:`from_dict`)."""
        d = asdict(self)
        d["options"] = [list(o) for o in self.options]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """Rebuild a spec from :meth:`to_dict`."""
        d = dict(d)
        d["options"] = tuple((str(k), v) for k, v in d.get("options", ()))
        return cls(**d)


def default_row_name(arch: str, dataset: str, lam_rule: str) -> str:
    """Figure-row label of an (architecture, data set, lambda rule) group, e.g.
    ``"L-RN1 / digits"`` or ``"L-RN2 / digits (lam/L)"``.

    Examples
    --------
    >>> default_row_name("preln-t12", "fortunes", "const")
    'pre-LN L-T12 / fortunes'
    """
    pretty = {"rn1": "L-RN1", "rn2": "L-RN2", "t11": "L-T11", "t12": "L-T12",
              "preln-t11": "pre-LN L-T11", "preln-t12": "pre-LN L-T12"}.get(arch, arch)
    suffix = " (lam/L)" if lam_rule == "inverse-depth" else ""
    return f"{pretty} / {dataset}{suffix}"


# ----------------------------------------------------------------------------- validation
def _as_int_list(name: str, values: Any, minimum: int) -> list[int]:
    if isinstance(values, int | str) and not isinstance(values, bool):
        values = [values]
    try:
        items = list(values)
    except TypeError:
        raise ValueError(f"{name} must be a list of integers, got {values!r}") from None
    if not items:
        raise ValueError(f"{name} must not be empty")
    out = []
    for v in items:
        ok = not isinstance(v, bool)
        try:
            f = float(v)
            ok = ok and math.isfinite(f) and f.is_integer()
        except (TypeError, ValueError):
            ok = False
        if not ok or int(float(v)) < minimum:
            raise ValueError(f"{name} must contain integers >= {minimum}, got {v!r}")
        out.append(int(float(v)))
    if len(set(out)) != len(out):
        raise ValueError(f"{name} has repeated entries: {out}")
    return out


def _as_names(name: str, values: Any, allowed: Sequence[str]) -> list[str]:
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    items = [str(v).strip().lower() for v in values]
    if not items:
        raise ValueError(f"{name} must not be empty")
    bad = [v for v in items if v not in allowed]
    if bad:
        raise ValueError(f"{name} contains unknown entries {bad}; choose from {tuple(allowed)}")
    return list(dict.fromkeys(items))


def _positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok:
        kind = "integer" if integer else "number"
        adj = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {adj} {kind}, got {value!r}")


def validate_spec(spec: RunSpec) -> None:
    """Raise :class:`ValueError` naming the offending field when ``spec`` cannot run.

    Examples
    --------
    >>> validate_spec(RunSpec("rn1", "digits", depth=0, seed=0))
    Traceback (most recent call last):
    ...
    ValueError: depth must be a positive integer, got 0
    """
    if spec.arch not in ARCH_NAMES:
        raise ValueError(f"arch must be one of {ARCH_NAMES}, got {spec.arch!r}")
    if spec.dataset not in DATASET_NAMES:
        raise ValueError(f"dataset must be one of {DATASET_NAMES}, got {spec.dataset!r}")
    _positive("depth", spec.depth, integer=True)
    _positive("seed", spec.seed, integer=True, allow_zero=True)
    _positive("lam", spec.lam_base)
    if spec.lam_rule not in LAM_RULES:
        raise ValueError(f"lam_rule must be one of {LAM_RULES}, got {spec.lam_rule!r}")
    _positive("width", spec.width, integer=True)
    if spec.width < 2:
        raise ValueError(f"width must be an integer >= 2, got {spec.width!r}")
    if spec.n_per_class is not None:
        _positive("n_per_class", spec.n_per_class, integer=True)
    _positive("epochs", spec.epochs, integer=True, allow_zero=True)
    _positive("lr", spec.lr)
    if spec.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {spec.loss!r}")


def spec_defaults() -> dict[str, Any]:
    """The default of every :class:`RunSpec` field that has one (the one source of the run
    defaults: :func:`expand_grid` and ``gufm sweep`` read them from here).

    Examples
    --------
    >>> d = spec_defaults()
    >>> d["width"], d["lam_base"], d["loss"]
    (64, 0.005, 'ce')
    """
    return {f.name: f.default for f in fields(RunSpec) if f.default is not MISSING}


_D = spec_defaults()


def expand_grid(archs: str | Sequence[str], depths: Iterable[int] = PAPER_DEPTHS,
                seeds: Iterable[int] = DEFAULT_SEEDS, dataset: str | Sequence[str] = DEFAULT_DATASET,
                *, lam: float = _D["lam_base"], lam_rule: str = _D["lam_rule"],
                width: int = _D["width"], n_per_class: int | None = _D["n_per_class"],
                epochs: int = _D["epochs"], lr: float = _D["lr"], loss: str = _D["loss"],
                options: dict[str, Any] | None = None, row: str = "") -> list[RunSpec]:
    """All runs of the product archs x datasets x depths x seeds, validated.

    Parameters
    ----------
    archs : str or sequence of str
        Comma-separated or a list, e.g. ``"rn1,rn2"``.
    depths, seeds : iterable of int
        Depths ``>= 1`` (default :data:`PAPER_DEPTHS`) and seeds ``>= 0`` (default
        :data:`DEFAULT_SEEDS`); neither may be empty.
    dataset : str or sequence of str
    lam : float
        Base :math:`\\lambda` (``> 0``), :attr:`RunSpec.lam_base`.
    lam_rule : {"const", "inverse-depth"}
    width, n_per_class, epochs, lr, loss
        Training settings shared by every run (defaults: :func:`spec_defaults`).
    options : dict, optional
        Further result-relevant options of :func:`gufm.deep.pipeline.train_and_compare` (e.g.
        ``polish_steps``).
    row : str
        Figure row name (default: one row per architecture/data set).

    Returns
    -------
    list of RunSpec

    Raises
    ------
    ValueError
        Unknown arch/dataset/lam_rule/loss, an empty list, a depth ``< 1``, a negative seed or a
        non-positive ``lam``/``lr``/``width`` (raised before anything runs).

    Examples
    --------
    >>> specs = expand_grid("rn1,rn2", depths=[2, 5], seeds=[0], lam_rule="inverse-depth")
    >>> [(s.arch, s.depth, s.lam) for s in specs]
    [('rn1', 2, 0.0025), ('rn1', 5, 0.001), ('rn2', 2, 0.0025), ('rn2', 5, 0.001)]
    >>> expand_grid("rn9", depths=[2], seeds=[0])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: arch contains unknown entries ['rn9']; choose from ('rn1', ...)
    """
    archs_l = _as_names("arch", archs, ARCH_NAMES)
    datasets_l = _as_names("dataset", dataset, DATASET_NAMES)
    depths_l = _as_int_list("depths", depths, 1)
    seeds_l = _as_int_list("seeds", seeds, 0)
    if lam_rule not in LAM_RULES:
        raise ValueError(f"lam_rule must be one of {LAM_RULES}, got {lam_rule!r}")
    opts = tuple(sorted((options or {}).items()))
    unknown = [k for k, _ in opts if k not in RESULT_OPTIONS]
    if unknown:
        raise ValueError(f"options {unknown} are not result options; known: {RESULT_OPTIONS}")
    specs = [RunSpec(arch=a, dataset=ds, depth=L, seed=s, lam_base=float(lam),
                     lam_rule=lam_rule, width=width, n_per_class=n_per_class, epochs=epochs,
                     lr=float(lr), loss=loss, options=opts,
                     row=row or default_row_name(a, ds, lam_rule))
             for a in archs_l for ds in datasets_l for L in depths_l for s in seeds_l]
    for sp in specs:
        validate_spec(sp)
    return specs


def check_specs(specs: Sequence[RunSpec]) -> list[RunSpec]:
    """Validate a list of runs (non-empty, each valid, no duplicate run ids).

    Examples
    --------
    >>> sp = RunSpec("rn1", "digits", depth=2, seed=0)
    >>> check_specs([sp, sp])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: specs contain duplicate runs: ['rn1-digits-L2-s0-...']
    """
    specs = list(specs)
    if not specs:
        raise ValueError("specs must not be empty: the sweep has no runs")
    for sp in specs:
        if not isinstance(sp, RunSpec):
            raise ValueError(f"specs must contain RunSpec objects, got {type(sp).__name__}")
        validate_spec(sp)
    ids = [sp.run_id for sp in specs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"specs contain duplicate runs: {dup[:5]}")
    return specs

