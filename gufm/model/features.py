r"""Feature models of the GUFM: one class each, carrying everything that depends on the model.

A feature model constrains (or penalises) every feature column :math:`h`:

========== ====================================================================== =========================
class      constraint                                                             subspace dimension m
========== ====================================================================== =========================
LayerNorm  :math:`\mathbf 1^\top h = 0,\ \lVert h\rVert = \rho`                    ``d - 1`` (Helmert basis)
Sphere     :math:`\lVert h\rVert = \rho`                                           ``d``
Ball       :math:`\lVert h\rVert \le \rho`                                         ``d``
Penalty    none; adds :math:`\tfrac{\lambda_H}{2}\sum_g n_g\lVert h_g\rVert^2`     ``d``
========== ====================================================================== =========================

Each class provides (see docs/problem.md and docs/certificate.md):

* its **parametrisation** :math:`V \mapsto H` for unconstrained optimisers and its VJP.  The
  radial models use :math:`H = \rho V/\lVert V\rVert` column-wise (the ball takes the first
  ``p`` rows of a sphere in :math:`R^{p+1}`), with the chain rule

  .. math:: \nabla_v = \frac{\rho}{\lVert v\rVert}\big(I - uu^\top\big)\nabla_h,
            \qquad u = v/\lVert v\rVert,

  written once, in :func:`radial_vjp`;
* its **feasibility** violation (relative to :math:`\rho`) and a projection onto the set;
* its **basis** of the feature subspace (reduced solutions live in its first ``p`` columns);
* its part of the **SDP** (constraints on :math:`\operatorname{diag}B`, the penalty term);
* its part of the **dual certificate**: the lower-right block :math:`\operatorname{diag}(\mu)`
  and the feature term :math:`\rho^2\sum_g\mu_g` of the bound.

Adding a feature model means adding one class here and an entry in :data:`FEATURE_MODELS`.
No other module names a feature model.

Examples
--------
>>> from gufm.model.features import feature_model
>>> fm = feature_model("sphere")
>>> fm.name, fm.subspace_dim(5), fm.radial
('sphere', 5, True)
>>> feature_model(fm) is fm
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gufm.backend import Array, get_backend
from gufm.model.geometry import helmert_apply, helmert_basis

__all__ = [
    "FEATURE_MODELS", "FeatureModel", "LayerNorm", "Sphere", "Ball", "Penalty",
    "feature_model", "feature_basis", "radial_map", "radial_vjp", "DualDiagonal",
]


def radial_map(V: Array, rho: float) -> tuple[Array, tuple[Array, Array]]:
    r"""Column-wise :math:`H = \rho V/\lVert V\rVert` and the data its VJP needs.

    Returns ``(H, (U, norms))`` with ``U = V / norms``.

    Examples
    --------
    >>> import numpy as np
    >>> H, _ = radial_map(np.array([[3.0], [4.0]]), 2.0)
    >>> H.ravel().tolist()
    [1.2, 1.6]
    """
    norms = (V**2).sum(0) ** 0.5
    U = V / norms
    return rho * U, (U, norms)


def radial_vjp(gH: Array, aux: tuple[Array, Array], rho: float) -> Array:
    r"""Chain rule of :func:`radial_map`: :math:`\nabla_v = \rho (g - u\,u^\top g)/\lVert v\rVert`.

    ``gH`` may have fewer rows than ``U`` (the ball's slack row): missing rows count as zero.

    Examples
    --------
    >>> import numpy as np
    >>> V = np.array([[3.0], [4.0]]); H, aux = radial_map(V, 1.0)
    >>> float(abs(radial_vjp(H, aux, 1.0)).max()) < 1e-15  # radial directions have no gradient
    True
    """
    U, norms = aux
    if gH.shape[0] < U.shape[0]:
        nx = get_backend(gH)
        gH = nx.concatenate([gH, nx.zeros((U.shape[0] - gH.shape[0], gH.shape[1]), gH)], 0)
    return rho * (gH - U * (U * gH).sum(0)) / norms


@dataclass(frozen=True)
class DualDiagonal:
    """The feature model's part of the dual certificate (see docs/certificate.md).

    Attributes
    ----------
    diag : ndarray (G,)
        Lower-right block of the dual matrix: :math:`\\mu` (radial) or :math:`\\lambda_H n_g/2`.
    repair : {"shift", "scale"}
        How exact feasibility is restored: raise every :math:`\\mu_g` by the same amount
        (constrained models), or scale :math:`Y \\to sY` (penalty, whose block is fixed).

    Examples
    --------
    >>> import numpy as np
    >>> feature_model("penalty").dual_diagonal(None, None, None, np.array([3, 1]), 0.5)
    DualDiagonal(diag=array([0.75, 0.25]), repair='scale')
    """

    diag: np.ndarray
    repair: str


class FeatureModel:
    """Base class of the feature models.

    Attributes
    ----------
    name : str
        The public name (``GUFM(features=name)``).
    radial : bool
        Constrained by the radius :math:`\\rho` (every model but :class:`Penalty`).
    penalised : bool
        Uses :math:`\\lambda_H` (only :class:`Penalty`).
    equality : bool
        Norms are fixed (:math:`\\lVert h\\rVert = \\rho`): LayerNorm and Sphere.
    codim : int
        ``d - m``: 1 for LayerNorm, else 0.

    Examples
    --------
    >>> Sphere() == Sphere(), Sphere() == Ball()
    (True, False)
    """

    name = ""
    radial = True
    penalised = False
    equality = True
    codim = 0
    slack_rows = 0  # extra latent rows of the parametrisation (the ball's slack)

    # -------------------------------------------------------------- identity
    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------ parameters
    def check_params(self, radius: float | None, lam_H: float | None) -> None:
        """Raise ``ValueError`` when ``radius``/``lam_H`` do not fit the model."""
        if lam_H is not None:
            raise ValueError(f"lam_H applies only to features='penalty', not {self.name!r}")

    def radius(self, dim: int, radius: float | None) -> float:
        """:math:`\\rho`: ``radius``, or :math:`\\sqrt d` (the LayerNorm radius) when None."""
        return math.sqrt(dim) if radius is None else float(radius)

    def subspace_dim(self, dim: int) -> int:
        """Dimension ``m`` of the feature subspace."""
        return dim - self.codim

    def basis(self, dim: int, p: int) -> np.ndarray:
        """Orthonormal ``(dim, p)`` basis of the span of ``p``-dimensional reduced solutions."""
        return np.eye(dim, p)

    def embed(self, X: np.ndarray, dim: int, axis: int = 0) -> np.ndarray:
        """``basis(dim, p) @ X`` for reduced coordinates ``X`` (p, n): the vectors in ``R^dim``
        (``axis=1``: ``X @ basis(dim, p).T`` for ``X`` of shape (n, p)).

        Override it with a product that needs no matrix (the default pads with zeros, which is
        what the identity basis does).
        """
        X = np.asarray(X, dtype=float)
        if axis == 1:
            return self.embed(X.T, dim).T
        out = np.zeros((dim,) + X.shape[1:])
        out[: X.shape[0]] = X
        return out

    # ------------------------------------------------------- parametrisation
    def latent_rows(self, p: int) -> int:
        """Rows of the latent matrix ``V`` behind ``p``-dimensional features."""
        return p + self.slack_rows

    def parametrise(self, V: Array, rho: float, *, ambient: bool = False) -> tuple[Array, Any]:
        """Features ``H`` from latent ``V`` and the data :meth:`vjp` needs.

        ``ambient=True``: ``V`` holds ambient ``d``-dimensional coordinates (the full-N solver)
        rather than coordinates in :meth:`basis` (matters only for LayerNorm).
        """
        H, aux = radial_map(V, rho)
        return (H[: H.shape[0] - self.slack_rows] if self.slack_rows else H), aux

    def vjp(self, gH: Array, aux: Any, rho: float, *, ambient: bool = False) -> Array:
        """Gradient with respect to ``V`` from the gradient ``gH`` with respect to ``H``."""
        return radial_vjp(gH, aux, rho)

    def to_latent(self, H: np.ndarray, rho: float) -> np.ndarray:
        """A latent ``V`` with ``parametrise(V) = H`` for a feasible ``H``."""
        return H

    def on_boundary(self, H: np.ndarray, rho: float) -> np.ndarray:
        """Random-start features: columns scaled to norm :math:`\\rho` (radial models)."""
        return H * (rho / np.linalg.norm(H, axis=0))

    def project(self, H: np.ndarray, rho: float) -> np.ndarray:
        """The nearest feasible features (column-wise) in subspace coordinates."""
        n = np.linalg.norm(H, axis=0)
        n[n == 0] = 1.0
        return H * (rho / n)

    # ----------------------------------------------------------- feasibility
    def violation(self, H: Array, rho: float) -> float:
        """Largest violation of the constraints by ambient features ``H``, relative to ρ."""
        H = get_backend(H).detach(H)
        norms = (H**2).sum(0) ** 0.5
        return float(abs(norms - rho).max()) / rho

    # ------------------------------------------------------------- objective
    def regulariser(self, H: Array, n: Array, lam_H: float | None) -> tuple[Array, Array | None]:
        """The feature term of the objective and its gradient in ``H`` (0 and None here)."""
        return 0.0, None

    # ------------------------------------------------------------------- SDP
    def sdp_terms(self, diag_B: Any, rho: float, counts: np.ndarray,
                  lam_H: float | None) -> tuple[Any, list]:
        """``(objective term, constraints)`` on :math:`\\operatorname{diag}B` in the SDP."""
        return 0.0, [diag_B == rho**2]

    # ----------------------------------------------------------- certificate
    def dual_diagonal(self, Z: np.ndarray, Y: np.ndarray, rho: float, counts: np.ndarray,
                      lam_H: float | None) -> DualDiagonal:
        r"""Lower-right block of the dual matrix at the point with logits' gradient ``Y``.

        :math:`\mu_g = -Z_{:,g}^\top Y_{:,g}/(2\rho^2)`, the multiplier of the norm constraint
        from Riemannian stationarity :math:`W^\top Y_{:,g} = -2\mu_g h_g`.
        """
        return DualDiagonal(-(Z * Y).sum(0) / (2.0 * rho**2), "shift")

    def dual_term(self, mu: np.ndarray, rho: float) -> float:
        r"""The feature term :math:`\rho^2\sum_g\mu_g` subtracted from the dual bound."""
        return rho**2 * float(mu.sum())


class LayerNorm(FeatureModel):
    """LayerNorm without affine parameters: :math:`\\mathbf 1^\\top h = 0`, ``‖h‖ = ρ``.

    Examples
    --------
    >>> import numpy as np
    >>> E = LayerNorm().basis(4, 3)
    >>> bool(np.allclose(E.sum(0), 0)), bool(np.allclose(E.T @ E, np.eye(3)))
    (True, True)
    """

    name = "layernorm"
    codim = 1

    def basis(self, dim: int, p: int) -> np.ndarray:
        return helmert_basis(dim, p)

    def embed(self, X: np.ndarray, dim: int, axis: int = 0) -> np.ndarray:
        return helmert_apply(X, dim, axis)  # O(dim n) instead of a (dim, p) x (p, n) product

    def parametrise(self, V: Array, rho: float, *, ambient: bool = False) -> tuple[Array, Any]:
        # ambient: h = rho P v / ||P v|| with P = I - 11ᵀ/d (LayerNorm, eps = 0)
        return radial_map(V - V.mean(0) if ambient else V, rho)

    def vjp(self, gH: Array, aux: Any, rho: float, *, ambient: bool = False) -> Array:
        gV = radial_vjp(gH, aux, rho)
        return gV - gV.mean(0) if ambient else gV  # P is symmetric: the VJP of P is P

    def violation(self, H: Array, rho: float) -> float:
        H = get_backend(H).detach(H)
        v = super().violation(H, rho)
        return max(v, float(abs(H.sum(0)).max()) / H.shape[0] ** 0.5 / rho)


class Sphere(FeatureModel):
    """Features on the sphere ``‖h‖ = ρ``.

    Examples
    --------
    >>> import numpy as np
    >>> Sphere().violation(np.array([[2.0, 0.0], [0.0, 2.2]]), 2.0)
    0.1...
    """

    name = "sphere"


class Ball(FeatureModel):
    """Features in the ball ``‖h‖ ≤ ρ``, parametrised as the first rows of a sphere one
    dimension up (the slack row holds :math:`\\sqrt{\\rho^2 - \\lVert h\\rVert^2}`).

    Examples
    --------
    >>> import numpy as np
    >>> fm = Ball(); H = np.array([[0.6], [0.0]])
    >>> V = fm.to_latent(H, 1.0); bool(np.allclose(fm.parametrise(V, 1.0)[0], H))
    True
    """

    name = "ball"
    equality = False
    slack_rows = 1

    def to_latent(self, H: np.ndarray, rho: float) -> np.ndarray:
        slack = np.sqrt(np.maximum(rho**2 - (H**2).sum(0), 0.0))
        return np.vstack([H, slack[None, :]])

    def project(self, H: np.ndarray, rho: float) -> np.ndarray:
        n = np.linalg.norm(H, axis=0)
        return H * np.minimum(1.0, rho / np.maximum(n, 1e-300))

    def violation(self, H: Array, rho: float) -> float:
        nx = get_backend(H)
        H = nx.detach(H)
        norms = (H**2).sum(0) ** 0.5
        return float(nx.clip_min(norms - rho, 0.0).max()) / rho

    def sdp_terms(self, diag_B: Any, rho: float, counts: np.ndarray,
                  lam_H: float | None) -> tuple[Any, list]:
        return 0.0, [diag_B <= rho**2]

    def dual_diagonal(self, Z: np.ndarray, Y: np.ndarray, rho: float, counts: np.ndarray,
                      lam_H: float | None) -> DualDiagonal:
        # an inequality constraint has a non-negative multiplier
        mu = super().dual_diagonal(Z, Y, rho, counts, lam_H).diag
        return DualDiagonal(np.maximum(mu, 0.0), "shift")


class Penalty(FeatureModel):
    r"""Unconstrained features with the penalty :math:`\tfrac{\lambda_H}{2}\sum_g n_g\lVert h_g\rVert^2`
    (the classic UFM).

    Examples
    --------
    >>> import numpy as np
    >>> val, grad = Penalty().regulariser(np.ones((2, 1)), np.array([3.0]), 0.5)
    >>> float(val), grad.ravel().tolist()
    (1.5, [1.5, 1.5])
    """

    name = "penalty"
    radial = False
    penalised = True
    equality = False

    def check_params(self, radius: float | None, lam_H: float | None) -> None:
        if lam_H is None:
            raise ValueError(
                "lam_H is required for features='penalty': pass lam_H > 0 (e.g. lam_H=5e-3). "
                "The penalty lam_H/2 sum ||h_i||^2 replaces the norm constraint; without it "
                "H is unconstrained and F has no minimiser (scale H up and W down)"
            )
        if radius is not None:
            raise ValueError("radius is not used by features='penalty'; leave it as None")

    def radius(self, dim: int, radius: float | None) -> float:
        return math.nan

    def parametrise(self, V: Array, rho: float, *, ambient: bool = False) -> tuple[Array, Any]:
        return V, None

    def vjp(self, gH: Array, aux: Any, rho: float, *, ambient: bool = False) -> Array:
        return gH

    def on_boundary(self, H: np.ndarray, rho: float) -> np.ndarray:
        return H

    def project(self, H: np.ndarray, rho: float) -> np.ndarray:
        return H

    def violation(self, H: Array, rho: float) -> float:
        return 0.0

    def regulariser(self, H: Array, n: Array, lam_H: float | None) -> tuple[Array, Array | None]:
        return 0.5 * lam_H * ((H**2).sum(0) * n).sum(), lam_H * H * n

    def sdp_terms(self, diag_B: Any, rho: float, counts: np.ndarray,
                  lam_H: float | None) -> tuple[Any, list]:
        w = lam_H / 2 * np.asarray(counts, dtype=float)
        return w @ diag_B, []

    def dual_diagonal(self, Z: np.ndarray, Y: np.ndarray, rho: float, counts: np.ndarray,
                      lam_H: float | None) -> DualDiagonal:
        return DualDiagonal(lam_H * np.asarray(counts, dtype=float) / 2.0, "scale")

    def dual_term(self, mu: np.ndarray, rho: float) -> float:
        return 0.0


#: The feature models by name (the order is the documented one).
FEATURE_MODELS: dict[str, type[FeatureModel]] = {
    c.name: c for c in (LayerNorm, Sphere, Ball, Penalty)
}


def feature_model(features: str | FeatureModel) -> FeatureModel:
    """The :class:`FeatureModel` for a name or an instance (returned as it is).

    Raises
    ------
    ValueError
        For an unknown name.
    TypeError
        For anything that is neither a string nor a :class:`FeatureModel`.

    Examples
    --------
    >>> feature_model("ball")
    Ball()
    """
    if isinstance(features, FeatureModel):
        return features
    if not isinstance(features, str):
        raise TypeError(
            "features must be a name or a gufm.model.features.FeatureModel, got "
            f"{type(features).__name__}"
        )
    if features not in FEATURE_MODELS:
        raise ValueError(f"features must be one of {tuple(FEATURE_MODELS)}, got {features!r}")
    return FEATURE_MODELS[features]()


def feature_basis(features: str | FeatureModel, d: int, p: int) -> np.ndarray:
    """Orthonormal ``(d, p)`` basis of the span used for ``p``-dimensional reduced solutions.

    Examples
    --------
    >>> feature_basis("sphere", 3, 2).tolist()
    [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    """
    return feature_model(features).basis(d, p)
