"""Named sweeps (``gufm sweep --preset NAME``): the paper's figures and a quick one.

A :class:`Preset` is a list of figure rows (:class:`PresetRow`: an architecture on a data set with
its own settings) plus shared settings; every setting can be overridden for all rows by
:meth:`Preset.specs` (the command line's flags).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gufm.deep.data.fortunes import fortunes_available
from gufm.experiments.spec import DEFAULT_SEEDS, PAPER_DEPTHS, RunSpec, default_row_name, expand_grid

__all__ = ["FORTUNES_NOTE", "PAPER_DEPTHS", "PRESETS", "SYNTHETIC_NOTE", "Preset", "PresetRow",
           "language_row"]


@dataclass(frozen=True)
class PresetRow:
    """One figure row of a preset: an architecture on a data set with its own settings.

    Examples
    --------
    >>> PresetRow("rn2", "digits", lam_rule="inverse-depth").depths is None  # the preset's depths
    True
    """

    arch: str
    dataset: str
    lam_rule: str = "const"
    lr: float = 5e-3
    depths: tuple[int, ...] | None = None
    options: tuple[tuple[str, Any], ...] = ()
    note: str = ""
    #: the row's samples per class and seeds (``"preset"``/None: the preset's)
    n_per_class: int | None | str = "preset"
    seeds: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Preset:
    """A named sweep: rows plus shared settings (each overridable on the command line).

    Examples
    --------
    >>> p = PRESETS["paper-fig2"]
    >>> [r.arch for r in p.rows], p.depths, len(p.specs())
    (['rn1', 'rn2', 't11', 't12'], (2, 3, 5, 8, 13, 21, 34), 140)
    """

    name: str
    description: str
    rows: tuple[PresetRow, ...]
    depths: tuple[int, ...]
    seeds: tuple[int, ...]
    width: int = 64
    n_per_class: int | None = 100
    epochs: int = 5000
    lam: float = 0.005
    loss: str = "ce"
    options: tuple[tuple[str, Any], ...] = ()
    jobs: int = 1

    def specs(self, *, depths: Sequence[int] | None = None, seeds: Sequence[int] | None = None,
              width: int | None = None, n_per_class: int | None | str = "preset",
              epochs: int | None = None, lam: float | None = None, lr: float | None = None,
              loss: str | None = None, options: dict[str, Any] | None = None) -> list[RunSpec]:
        """The preset's runs; every argument given overrides the preset's value for all rows
        (``n_per_class=None`` means the whole split; leave it out to keep the preset's).

        Examples
        --------
        >>> specs = PRESETS["quick"].specs(depths=[2], seeds=[0], n_per_class=None)
        >>> [s.arch for s in specs], {s.n_per_class for s in specs}
        (['rn1', 't11', 'preln-t11', 'rn2'], {None})
        >>> len(PRESETS["quick"].specs())
        28
        """
        out: list[RunSpec] = []
        for r in self.rows:
            opts = dict(self.options) | dict(r.options) | dict(options or {})
            row_n = self.n_per_class if r.n_per_class == "preset" else r.n_per_class
            out += expand_grid(
                r.arch, depths if depths is not None else (r.depths or self.depths),
                seeds if seeds is not None else (r.seeds or self.seeds), r.dataset,
                lam=self.lam if lam is None else lam, lam_rule=r.lam_rule,
                width=self.width if width is None else width,
                n_per_class=row_n if n_per_class == "preset" else n_per_class,
                epochs=self.epochs if epochs is None else epochs,
                lr=r.lr if lr is None else lr, loss=self.loss if loss is None else loss,
                options=opts, row=default_row_name(r.arch, r.dataset, r.lam_rule))
        return out

    def notes(self) -> dict[str, str]:
        """Row name -> note (only rows with a note).

        Examples
        --------
        >>> PRESETS["paper-fig1"].notes()
        {}
        """
        return {default_row_name(r.arch, r.dataset, r.lam_rule): r.note
                for r in self.rows if r.note}


SYNTHETIC_NOTE = ("language row: synthetic-tokens stands in for IMDB (offline), a fallback: the "
                  "Debian package fortunes (real text) is not installed. Random token "
                  "sequences (vocabulary 16, length 8) labelled y = sum(tokens) mod 4, so every "
                  "context determines its label.")

FORTUNES_NOTE = ("language row: fortunes stands in for IMDB (offline): topic classification of "
                 "real English text, 6 categories of the Debian package fortunes "
                 "(computers, men-women, politics, science, songs-poems, work), first 16 words, "
                 "vocabulary built on the subset.")


def language_row() -> PresetRow:
    """The quick preset's language row: pre-LN L-T11 on ``fortunes`` when the Debian package
    is installed (``gufm.data.fortunes_available()``), else on ``synthetic-tokens``, labelled
    as the fallback.

    Examples
    --------
    >>> language_row().dataset in ("fortunes", "synthetic-tokens")
    True
    """
    if fortunes_available():
        return PresetRow("preln-t11", "fortunes", lr=1e-3 * 5, depths=(2, 5, 13),
                         options=(("seq_len", 16),), note=FORTUNES_NOTE)
    return PresetRow("preln-t11", "synthetic-tokens", lr=1e-3 * 5, depths=(2, 5, 13),
                     note=SYNTHETIC_NOTE)


PRESETS: dict[str, Preset] = {
    "paper-fig1": Preset(
        name="paper-fig1",
        description="The paper's Figure 1 protocol: L-RN1 and L-T11 on CIFAR10, pre-LN L-T11 on "
                    "IMDB, L-RN2 on MNIST with lam/L; depths 2..34, width 64, lam 0.005, 5000 "
                    "epochs, 5 seeds, CE (100 samples per class: our choice).",
        rows=(PresetRow("rn1", "cifar10"), PresetRow("t11", "cifar10"),
              PresetRow("preln-t11", "imdb", lr=1e-3),
              PresetRow("rn2", "mnist", lam_rule="inverse-depth")),
        depths=PAPER_DEPTHS, seeds=DEFAULT_SEEDS),
    "paper-fig2": Preset(
        name="paper-fig2",
        description="The MNIST runs: L-RN1, L-T11 (lam) and L-RN2, L-T12 (lam/L) on MNIST; "
                    "depths 2..34, width 64, lam 0.005, 5000 epochs, 5 seeds, CE.",
        rows=(PresetRow("rn1", "mnist"), PresetRow("rn2", "mnist", lam_rule="inverse-depth"),
              PresetRow("t11", "mnist"), PresetRow("t12", "mnist", lam_rule="inverse-depth")),
        depths=PAPER_DEPTHS, seeds=DEFAULT_SEEDS),
    "quick": Preset(
        name="quick",
        description="Minutes on a laptop CPU: L-RN1 on digits, L-T11 on Fashion-MNIST (four 14x14 "
                    "patches), pre-LN L-T11 on fortunes (real text; synthetic-tokens when the "
                    "Debian package fortunes is missing), L-RN2 on "
                    "digits with lam/L; width 16, 10 samples per class. digits and "
                    "synthetic-tokens are embedded; Fashion-MNIST is real data (Debian package "
                    "dataset-fashion-mnist, or gufm data download fashion-mnist).",
        rows=(PresetRow("rn1", "digits"),
              PresetRow("t11", "fashion-mnist", depths=(2, 5, 13),
                        options=(("patch_size", 14),)),
              language_row(),
              PresetRow("rn2", "digits", lam_rule="inverse-depth")),
        depths=(2, 5, 13, 34), seeds=(0, 1), width=16, n_per_class=10, epochs=300,
        options=(("polish_steps", 300),), jobs=2),
    "study": Preset(
        name="study",
        description="The committed depth study (benchmarks/results/study_sweep), scaled to a "
                    "2-core "
                    "machine: L-RN1 and L-RN2 (lam/L) on digits (50 per class) and on "
                    "Fashion-MNIST (100 per class, so N > 784), L-T11 on Fashion-MNIST 14x14 "
                    "patches; width 64, lam 0.005, 200 Adam epochs + 200 L-BFGS iterations, "
                    "3 seeds (L-T11: 1); continuation chains (fresh, split, continued at every "
                    "depth; continued = the polish alone), fresh runs up to depth 8 (L-T11: 5), "
                    "deeper by continuation; the L = 0 embedding-only reference per row.",
        rows=(PresetRow("rn1", "digits", n_per_class=50, depths=(2, 3, 5, 8, 13, 21),
                        options=(("fresh_max_depth", 8),)),
              PresetRow("rn2", "digits", lam_rule="inverse-depth", n_per_class=50,
                        depths=(2, 3, 5, 8)),
              PresetRow("rn1", "fashion-mnist", depths=(2, 3, 5, 8)),
              PresetRow("rn2", "fashion-mnist", lam_rule="inverse-depth", depths=(2, 3, 5, 8)),
              PresetRow("t11", "fashion-mnist", depths=(2, 3, 5), seeds=(0,),
                        options=(("patch_size", 14),))),
        depths=(2, 3, 5, 8), seeds=(0, 1, 2), width=64, n_per_class=100, epochs=200,
        options=(("polish_steps", 200), ("continuation", True), ("continue_epochs", 0)),
        jobs=2),
    "study-deep": Preset(
        name="study-deep",
        description="The depth study closer to the protocol (about 85 minutes on 2 cores): the "
                    "rows of 'study' with 5 seeds, fresh runs at depths 2, 3, 5, 8, 13, 21 and "
                    "34, L-RN1 / digits continued to 55 and 89; L-T11 on Fashion-MNIST 14x14 "
                    "patches at depths 2 to 13; 300 Adam epochs + 300 L-BFGS "
                    "iterations per network; continuation chains (continued = the polish "
                    "alone); the L = 0 embedding-only reference per row.",
        rows=(PresetRow("rn1", "digits", n_per_class=50, depths=PAPER_DEPTHS + (55, 89),
                        options=(("fresh_max_depth", 34),)),
              PresetRow("rn2", "digits", lam_rule="inverse-depth", n_per_class=50),
              PresetRow("rn1", "fashion-mnist"),
              PresetRow("rn2", "fashion-mnist", lam_rule="inverse-depth"),
              PresetRow("t11", "fashion-mnist", depths=(2, 3, 5, 8, 13),
                        options=(("patch_size", 14),))),
        depths=PAPER_DEPTHS, seeds=(0, 1, 2, 3, 4), width=64, n_per_class=100, epochs=300,
        options=(("polish_steps", 300), ("continuation", True), ("continue_epochs", 0)),
        jobs=2),
}


