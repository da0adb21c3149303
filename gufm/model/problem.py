r"""The GUFM problem statement: validated data, hyper-parameters and the exact N -> K reduction.

.. math::

    F(W, b, H) = \frac1N \sum_i \ell(W h_i + b, y_i) + \frac{\lambda_W}{2}\lVert W\rVert_F^2
                 + \frac{\lambda_b}{2}\lVert b\rVert^2 \;\big[+ \frac{\lambda_H}{2}\lVert H\rVert_F^2\big]

with features ``H`` of shape ``(d, N)`` constrained by the feature model:

* ``"layernorm"`` (default): :math:`\mathbf 1^\top h_i = 0,\ \lVert h_i\rVert = \rho` (the image of
  LayerNorm without affine parameters; a (d-1)-dimensional sphere);
* ``"sphere"``: :math:`\lVert h_i\rVert = \rho`;  ``"ball"``: :math:`\lVert h_i\rVert \le \rho`;
* ``"penalty"``: unconstrained, with the :math:`\lambda_H` term (the classic UFM).

Reduction (docs/reduction.md): samples with the same label (or the same soft-label distribution)
are merged into one *group* ``g`` with weight :math:`p_g = n_g/N` and target :math:`q_g`.  The
reduced problem over one feature per group has the same optimal value; for ``penalty`` the
feature term becomes :math:`\tfrac{\lambda_H}{2}\sum_g n_g \lVert h_g\rVert^2`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from gufm.backend import Array, is_torch
from gufm.model.features import FEATURE_MODELS, FeatureModel, feature_model
from gufm.model.losses import check_loss
from gufm.model.validation import (
    check_counts,
    check_int,
    check_labels,
    check_real,
    check_soft_labels,
)

__all__ = ["GUFM", "Groups", "FEATURE_MODELS", "groups_from_counts", "groups_from_soft_labels"]


@dataclass(frozen=True)
class Groups:
    """The reduced data: one group per class (hard labels) or per distinct soft label.

    Attributes
    ----------
    weights : ndarray, shape (G,)
        :math:`p_g = n_g / N`, summing to one.
    targets : ndarray, shape (K, G)
        Column ``g`` is the label distribution :math:`q_g` of group ``g``.
    counts : ndarray, shape (G,)
        :math:`n_g`, the number of samples in group ``g``.
    members : ndarray of int, shape (N,), or None
        Group index of every sample (in the order the samples were given); ``None`` when the
        samples are ordered group by group (a ``counts=`` build), so that the build stays
        O(K) in memory however large N is.

    Examples
    --------
    >>> import numpy as np
    >>> g = groups_from_counts(np.array([2, 1]))
    >>> g.n_groups, g.counts.tolist(), g.sample_group.tolist()
    (2, [2, 1], [0, 0, 1])
    """

    weights: np.ndarray
    targets: np.ndarray
    counts: np.ndarray
    members: np.ndarray | None = None

    @property
    def n_groups(self) -> int:
        return int(self.weights.shape[0])

    @cached_property
    def sample_group(self) -> np.ndarray:
        """Group index of every sample, shape (N,) (built on first use for ``counts=``)."""
        if self.members is not None:
            return self.members
        return np.repeat(np.arange(self.n_groups), self.counts)


def groups_from_counts(counts: np.ndarray) -> Groups:
    """Groups for hard labels given as class counts; samples are ordered class by class.

    Examples
    --------
    >>> import numpy as np
    >>> g = groups_from_counts(np.array([3, 1]))
    >>> g.weights.tolist(), g.targets.tolist()
    ([0.75, 0.25], [[1.0, 0.0], [0.0, 1.0]])
    """
    K = counts.shape[0]
    N = int(counts.sum())
    return Groups(
        weights=counts / N,
        targets=np.eye(K),
        counts=counts.astype(np.int64),
    )


def groups_from_soft_labels(Q: np.ndarray) -> Groups:
    """Group samples by identical label distribution (rows of ``Q``, shape (N, K)).

    Examples
    --------
    >>> import numpy as np
    >>> g = groups_from_soft_labels(np.array([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]]))
    >>> g.counts.tolist(), g.targets.T.tolist(), g.sample_group.tolist()
    ([2, 1], [[0.5, 0.5], [1.0, 0.0]], [0, 1, 0])
    """
    uniq, inverse, counts = np.unique(Q, axis=0, return_inverse=True, return_counts=True)
    N = Q.shape[0]
    return Groups(
        weights=counts / N,
        targets=np.ascontiguousarray(uniq.T),
        counts=counts.astype(np.int64),
        members=inverse.reshape(-1).astype(np.int64),
    )


@dataclass(frozen=True, eq=False)
class GUFM:
    """A generalized unconstrained features model instance.

    Parameters
    ----------
    counts : sequence of int, optional
        Class counts :math:`n_k` (hard labels, samples ordered class by class).
    labels : array of int, shape (N,), optional
        Per-sample hard labels in ``{0, ..., K-1}``.  ``num_classes`` sets K (default ``max+1``).
    soft_labels : array, shape (N, K), optional
        Per-sample label distributions (rows on the simplex).
    dim : int
        Feature dimension :math:`d \\ge 2`.
    loss : {"ce", "mse"}
    features : {"layernorm", "sphere", "ball", "penalty"} or FeatureModel
        The feature model, by name or as an instance of :mod:`gufm.model.features`;
        ``prob.features`` is its name and ``prob.feature_model`` the object.
    radius : float, optional
        :math:`\\rho`; ``None`` means :math:`\\sqrt d` (the LayerNorm radius).  Not used by
        ``"penalty"``.
    lam_W : float
        Classifier weight decay :math:`\\lambda_W > 0`.
    lam_b : float, optional
        ``None``: no bias.  ``0``: unpenalised bias.  ``> 0``: penalised bias.
    lam_H : float, optional
        Feature penalty, required for (and only for) ``features="penalty"``.
    num_classes : int, optional
        K when ``labels`` are given and some top classes could be absent (they then raise).

    Exactly one of ``counts``, ``labels`` and ``soft_labels`` must be given.  The problem and
    its conventions: docs/problem.md; the groups of the reduction: docs/reduction.md.

    Examples
    --------
    >>> prob = GUFM(counts=[3, 2], dim=4, loss="mse", lam_W=0.1)
    >>> prob.K, prob.N, prob.G, prob.m, prob.rho, prob.is_balanced
    (2, 5, 2, 3, 2.0, False)
    >>> GUFM(labels=[0, 2, 2, 1], dim=3).groups.counts.tolist()
    [1, 1, 2]
    """

    counts: np.ndarray | None = None
    labels: np.ndarray | None = None
    soft_labels: np.ndarray | None = None
    dim: int = 0
    loss: str = "ce"
    features: str | FeatureModel = "layernorm"
    radius: float | None = None
    lam_W: float = 5e-3
    lam_b: float | None = None
    lam_H: float | None = None
    num_classes: int | None = None
    groups: Groups = field(init=False, repr=False)
    feature_model: FeatureModel = field(init=False, repr=False)

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.counts, self.labels, self.soft_labels)]
        if sum(given) != 1:
            raise ValueError("give exactly one of counts=, labels= or soft_labels=")
        set_ = object.__setattr__
        set_(self, "loss", check_loss(self.loss))
        fm = feature_model(self.features)
        set_(self, "feature_model", fm)
        set_(self, "features", fm.name)
        set_(self, "dim", check_int("dim", self.dim, minimum=2))
        set_(self, "lam_W", check_real("lam_W", self.lam_W, positive=True))
        set_(self, "lam_b", check_real("lam_b", self.lam_b, positive=False, none_means="no bias"))
        fm.check_params(self.radius, self.lam_H)
        if self.lam_H is not None:
            set_(self, "lam_H", check_real("lam_H", self.lam_H, positive=True))
        if self.radius is not None:
            set_(self, "radius", check_real("radius", self.radius, positive=True))
        if self.num_classes is not None:
            set_(self, "num_classes", check_int("num_classes", self.num_classes, minimum=2))
        set_(self, "groups", self._make_groups())

    # ------------------------------------------------------------------ data
    def _make_groups(self) -> Groups:
        """Validate the data argument (see :mod:`gufm.model.validation`) and reduce it."""
        set_ = object.__setattr__
        if self.counts is not None:
            c = check_counts(self.counts)
            self._check_num_classes("counts", c.shape[0])
            set_(self, "counts", c)
            return groups_from_counts(c)
        if self.labels is not None:
            y, K = check_labels(self.labels, self.num_classes)
            c = np.bincount(y, minlength=K)
            if np.any(c == 0):
                raise ValueError(f"labels: class {int(np.argmax(c == 0))} is empty")
            set_(self, "labels", y)
            set_(self, "counts", c)
            g = groups_from_counts(c)
            return Groups(g.weights, g.targets, g.counts, members=y)
        Q = check_soft_labels(self.soft_labels)
        self._check_num_classes("soft_labels", Q.shape[1])
        set_(self, "soft_labels", Q)
        return groups_from_soft_labels(Q)

    def _check_num_classes(self, name: str, K: int) -> None:
        if self.num_classes is not None and self.num_classes != K:
            raise ValueError(f"num_classes = {self.num_classes} contradicts {name}, which has "
                             f"K = {K} classes (num_classes is only needed with labels=)")

    # ------------------------------------------------------------ properties
    @property
    def K(self) -> int:
        """Number of classes."""
        return int(self.groups.targets.shape[0])

    @property
    def N(self) -> int:
        """Number of samples."""
        return int(self.groups.counts.sum())

    @property
    def G(self) -> int:
        """Number of groups of the reduced problem (K for hard labels)."""
        return self.groups.n_groups

    @property
    def rho(self) -> float:
        """Feature radius :math:`\\rho` (``sqrt(dim)`` by default); NaN for ``penalty``."""
        return self.feature_model.radius(self.dim, self.radius)

    @property
    def m(self) -> int:
        """Dimension of the feature subspace: ``d - 1`` for ``layernorm``, else ``d``."""
        return self.feature_model.subspace_dim(self.dim)

    @property
    def has_bias(self) -> bool:
        return self.lam_b is not None

    @property
    def hard_labels(self) -> bool:
        return self.soft_labels is None

    @cached_property
    def is_balanced(self) -> bool:
        """Hard labels with equal class counts."""
        return self.hard_labels and bool(np.all(self.groups.counts == self.groups.counts[0]))

    def rescaled(self, radius: float = 1.0) -> tuple[GUFM, float]:
        r"""The same problem at another radius, and the factor :math:`c = \rho/r` it used.

        Only :math:`\rho W` enters the logits, so :math:`(W, H) \mapsto (cW, H/c)` maps the
        problem with radius :math:`\rho` and :math:`\lambda_W` onto the one with radius
        :math:`r = \rho/c` and :math:`\lambda_W/c^2`, with the same logits, objective and
        optimum (see docs/problem.md).  Solvers work in a well-scaled copy and map back
        (``W = W'/c``, ``H = c H'``).  Models without a radius (``penalty``) and
        :math:`r = \rho` return ``(self, 1.0)``.

        Examples
        --------
        >>> prob = GUFM(counts=[2, 1], dim=3, features="sphere", radius=10.0, lam_W=1.0)
        >>> norm, c = prob.rescaled(1.0)
        >>> norm.rho, norm.lam_W, c
        (1.0, 0.01, 10.0)
        """
        if not self.feature_model.radial or self.rho == radius:
            return self, 1.0
        c = self.rho / float(radius)
        lam = self.lam_W / c**2
        if not (lam > 0 and math.isfinite(lam)):
            raise ValueError(f"lam_W / (rho / radius)^2 = {self.lam_W!r} / {c!r}^2 is not a "
                             "positive float")
        out = copy.copy(self)
        object.__setattr__(out, "radius", float(radius))
        object.__setattr__(out, "lam_W", lam)
        return out, c

    def normalised(self) -> tuple[GUFM, float]:
        """:meth:`rescaled` to radius 1: ``(problem, rho)``.

        Examples
        --------
        >>> GUFM(counts=[2, 1], dim=4).normalised()[1]
        2.0
        """
        return self.rescaled(1.0)

    def describe(self) -> dict:
        """A JSON-friendly description of the instance."""
        return {
            "K": self.K, "N": self.N, "G": self.G, "dim": self.dim, "loss": self.loss,
            "features": self.features, "rho": self.rho, "lam_W": self.lam_W,
            "lam_b": self.lam_b, "lam_H": self.lam_H, "balanced": self.is_balanced,
        }

    def __repr__(self) -> str:
        bits = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"GUFM({bits})"

    # ------------------------------------------------------------- lifting
    def lift(self, class_features: Array) -> Array:
        """Lift group features ``(d, G)`` to all samples ``(d, N)`` (sample order as given)."""
        idx = self.groups.sample_group
        if is_torch(class_features):
            import torch

            return class_features[:, torch.as_tensor(idx, device=class_features.device)]
        return np.asarray(class_features)[:, idx]
