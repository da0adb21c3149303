r"""The reduced GUFM as a Riemannian manifold: cost, gradient, Hessian-vector products (float64).

The reduced problem (see docs/reduction.md) in working dimension ``p`` has the variables
:math:`W \in R^{K\times p}`, an optional bias :math:`b \in R^K` and one feature per group.
For sphere-type features (``layernorm`` in Helmert coordinates, ``sphere``) the features are
:math:`h_g = \rho u_g` with :math:`u_g` on the unit sphere :math:`S^{p-1}`; for ``penalty`` they
are free.  With :math:`Z = W H + b\mathbf 1^\top` and :math:`Y = \nabla g(Z)`
(see docs/problem.md) the Euclidean gradient is

.. math::

    \nabla_W F = Y H^\top + \lambda_W W, \quad \nabla_b F = Y\mathbf 1 + \lambda_b b, \quad
    \nabla_H F = W^\top Y \;[+\, \lambda_H H \operatorname{diag}(n)],

and the Hessian applied to a direction :math:`(\dot W, \dot b, \dot H)` is, with
:math:`\dot Z = \dot W H + W\dot H + \dot b\mathbf 1^\top` and the loss curvature
:math:`\dot Y = \nabla^2 g(Z)[\dot Z]` (CE: :math:`p_g(\operatorname{diag}(s_g) - s_g s_g^\top)\dot z_g`,
MSE: :math:`p_g \dot z_g`),

.. math::

    \dot W \mapsto \dot Y H^\top + Y\dot H^\top + \lambda_W \dot W,\quad
    \dot b \mapsto \dot Y\mathbf 1 + \lambda_b \dot b,\quad
    \dot H \mapsto \dot W^\top Y + W^\top \dot Y\;[+\, \lambda_H \dot H\operatorname{diag}(n)].

On the sphere the Riemannian gradient and Hessian are the tangent projections
:math:`P_u(v) = v - u\,u^\top v` of these with the Weingarten term
:math:`-(u_g^\top \nabla_{u_g} F)\,\dot u_g` (Absil, Mahony & Sepulchre 2008, section 5.5).
Every product is a dense matrix product, so the same code runs on numpy and on torch tensors
(any device).  :func:`gufm.solvers.riemannian.trust_region` minimises over this manifold.
"""


from __future__ import annotations

import math
from typing import Any

import numpy as np

from gufm.backend import Array, is_torch
from gufm.model.losses import weighted_loss_and_grad
from gufm.model.objective import column_data
from gufm.model.problem import GUFM
from gufm.solvers.lowrank import compress, transpose_into

__all__ = ["ReducedManifold", "frame_start", "imul_add", "mul_into", "supports"]


def supports(prob: GUFM) -> bool:
    """True for the feature models :func:`gufm.solvers.riemannian.trust_region` handles:
    radial equality constraints (``layernorm``, ``sphere``) and penalised free features
    (``penalty``); the ``ball`` (an inequality) stays with L-BFGS.

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> supports(GUFM(counts=[2, 3], dim=3)), supports(GUFM(counts=[2, 3], dim=3, features="ball"))
    (True, False)
    """
    fm = prob.feature_model
    return bool((fm.radial and fm.equality) or fm.penalised)


def frame_start(prob: GUFM, p: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    r"""Warm start for MSE with hard labels and ``p >= K``: the closed form's orthogonal frame.

    Features :math:`H = \rho [I_K; 0]` (:math:`\rho = 1` for ``penalty``; orthogonal, the
    balanced MSE optimum for
    :math:`m \ge K`, see docs/closed_forms.md) and the exact minimiser over ``W`` for them,
    the ridge regression :math:`W = Q P H^\top (H P H^\top + \lambda_W I)^{-1}`
    (:math:`P = \operatorname{diag}(p_g)`), which is :math:`w_k = \rho p_k/(\rho^2 p_k +
    \lambda_W)\, e_k`.  For imbalanced counts this point is already stationary; the
    certificate decides whether it is optimal.

    Examples
    --------
    >>> from gufm.model.problem import GUFM
    >>> W, b, H = frame_start(GUFM(counts=[1, 3], dim=3, loss="mse", features="sphere",
    ...                            lam_W=0.5), 2)
    >>> W.round(4).tolist(), b, H.round(4).tolist()
    ([[0.3464, 0.0], [0.0, 0.4724]], None, [[1.7321, 0.0], [0.0, 1.7321]])
    """
    K = prob.K
    if p < K:
        raise ValueError(f"frame_start needs p >= K = {K}, got p = {p}")
    if not prob.hard_labels:
        raise ValueError("frame_start needs hard labels")
    rho = prob.rho if prob.feature_model.radial else 1.0  # penalty: unit features to start
    H = rho * np.eye(p, K)
    pk = prob.groups.weights
    W = np.zeros((K, p))
    W[np.arange(K), np.arange(K)] = rho * pk / (rho**2 * pk + prob.lam_W)
    return W, (np.zeros(K) if prob.has_bias else None), H


def _dot(u: Array, v: Array) -> Array:
    """``sum(u * v)``; for numpy one BLAS dot product, no ``u * v`` temporary (4x faster on
    ``3000 x 3001`` blocks)."""
    if isinstance(u, np.ndarray) and isinstance(v, np.ndarray):
        return np.vdot(u, v)
    return (u * v).sum()


def _coldot(u: Array, v: Array) -> Array:
    """Column dot products ``(u * v).sum(0)``; for numpy without the ``u * v`` temporary."""
    if isinstance(u, np.ndarray) and isinstance(v, np.ndarray):
        return np.einsum("ij,ij->j", u, v)
    return (u * v).sum(0)


def _axpy(u: Array, s: float, v: Array) -> Array:
    """``u + s v`` as a new array; for numpy with one allocation instead of two."""
    if isinstance(u, np.ndarray) and isinstance(v, np.ndarray) and u.shape == v.shape:
        out = np.multiply(v, s)
        if out.dtype == np.result_type(u, out):  # (no silent down-cast into ``out``)
            return np.add(u, out, out=out)
    return u + s * v


def mul_into(v: Array, w: Array | float, out: Array) -> Array:
    """``out = v * w`` without allocating (numpy or torch); returns ``out``."""
    if is_torch(out):
        import torch

        return torch.mul(v, w, out=out)
    return np.multiply(v, w, out=out)


def imul_add(u: Array, v: Array, w: Array | float, work: Array | None = None) -> Array:
    """``u += v * w`` in place, ``w`` an array or a scalar; with ``work`` (a buffer of
    ``v``'s shape) nothing is allocated and ``work`` holds ``v * w`` afterwards.  Returns ``u``.

    Deliberately not scipy's BLAS ``daxpy``: interleaving the OpenBLAS copies of numpy and
    scipy, each with its own spinning threads, slowed every small product down 10-50x.
    """
    if work is None:
        u += v * w
    else:
        u += mul_into(v, w, work)
    return u


class ReducedManifold:
    """The reduced GUFM on ``R^{K x p} x [R^K] x (S^{p-1})^G`` (or free features for penalty).

    Points and tangent vectors are lists ``[W, b, H]`` (``b`` omitted without bias) of numpy
    arrays or torch tensors (float64); the flat layout is the one of
    :class:`gufm.solvers.reduced` (``[W.ravel(), b, H.ravel()]``).

    Parameters
    ----------
    prob : GUFM
        A feature model that :func:`supports` accepts.
    p : int
        Working dimension.
    device : str, optional
        ``None``: numpy; else a torch device string (float64 tensors on it).

    Examples
    --------
    >>> import numpy as np
    >>> from gufm.model.problem import GUFM
    >>> man = ReducedManifold(GUFM(counts=[3, 4, 5], dim=4), p=3)
    >>> x = man.random_point(np.random.default_rng(0))
    >>> f, g, cache = man.cost_grad(x)
    >>> v = man.proj(x, [np.ones((3, 3)), np.ones((3, 3))])
    >>> bool(abs(man.inner(v, man.hess(x, cache, v)) - man.inner(man.hess(x, cache, v), v)) < 1e-12)
    True
    """

    def __init__(self, prob: GUFM, p: int, device: str | None = None) -> None:
        if not supports(prob):
            raise ValueError(
                f"the trust-region solver handles sphere-type and penalty features, not "
                f"features={prob.features!r}"
            )
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 1 <= p <= prob.dim:
            raise ValueError(f"p must be an integer in [1, dim] = [1, {prob.dim}], got {p!r}")
        self.prob, self.p, self.device = prob, int(p), device
        self.mixed = False  # float32 Hessian products (numpy only; see riemannian.trust_region)
        #: relative tolerance of the diagonal-plus-low-rank Hessian products (numpy only;
        #: gufm.solvers.lowrank), None: dense products
        self.lowrank_tol: float | None = None
        self.K, self.G = prob.K, prob.G
        self._work: dict[tuple[str, tuple[int, ...], Any], Array] = {}
        self._lr_start: dict[str, Any] = {}  # the last low-rank factors of W, H and Y
        self.sphere = bool(prob.feature_model.radial)
        self.rho = prob.rho if self.sphere else 1.0
        Q, w, n = column_data(prob, prob.G, "groups")
        self.Q, self.w, self.n = (self._arr(a) for a in (Q, w, n))
        self.shapes = [(self.K, self.p)] + ([(self.K,)] if prob.has_bias else []) + [
            (self.p, self.G)]

    # ----------------------------------------------------------------- conversions
    def buffer(self, name: str, shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
        """A numpy work array reused across calls (contents undefined): on large problems a
        fresh ``K x p`` array costs page faults that outlast the bandwidth-bound arithmetic
        done in it."""
        key = (name, tuple(shape), np.dtype(dtype))
        buf = self._work.get(key)
        if buf is None:
            buf = self._work[key] = np.empty(shape, dtype=dtype)
        return buf

    def _arr(self, a: Any) -> Array:
        if self.device is None:
            return np.asarray(a, dtype=float)
        import torch

        return torch.as_tensor(np.asarray(a), dtype=torch.float64, device=self.device)

    def from_flat(self, x: np.ndarray) -> list[Array]:
        """Split a flat vector into ``[W, (b), H]`` and put the features on the sphere."""
        x = np.asarray(x, dtype=float)
        n = int(sum(np.prod(shp) for shp in self.shapes))
        if x.ndim != 1 or x.size != n:
            raise ValueError(f"x must be a flat vector with {n} entries for this problem, "
                             f"got shape {x.shape}")
        out, i = [], 0
        for shp in self.shapes:
            size = int(np.prod(shp))
            out.append(self._arr(x[i:i + size].reshape(shp)))
            i += size
        if self.sphere:
            H = out[-1]
            out[-1] = H / (H**2).sum(0) ** 0.5
        return out

    def to_flat(self, x: list[Array]) -> np.ndarray:
        """Flat numpy vector ``[W.ravel(), b, H.ravel()]`` with ``H = rho U``."""
        parts = list(x[:-1]) + [self.rho * x[-1]]
        if self.device is None:
            return np.concatenate([np.asarray(a).ravel() for a in parts])
        return np.concatenate([a.detach().cpu().numpy().ravel() for a in parts])

    def random_point(self, rng: np.random.Generator) -> list[Array]:
        """A random point (Gaussian ``W``, zero bias, uniform features)."""
        W = rng.standard_normal((self.K, self.p)) / math.sqrt(self.p)
        H = rng.standard_normal((self.p, self.G))
        b = [np.zeros(self.K)] if self.prob.has_bias else []
        return self.from_flat(np.concatenate([W.ravel(), *b, H.ravel()]))

    # ----------------------------------------------------------------- geometry
    @staticmethod
    def inner(a: list[Array], b: list[Array]) -> float:
        """Euclidean inner product of two tangent vectors."""
        return float(sum(_dot(u, v) for u, v in zip(a, b, strict=True)))

    @staticmethod
    def lin(a: list[Array], s: float, b: list[Array]) -> list[Array]:
        """``a + s b`` (a new list of new arrays)."""
        return [_axpy(u, s, v) for u, v in zip(a, b, strict=True)]

    def proj(self, x: list[Array], v: list[Array]) -> list[Array]:
        """Tangent projection ``v_H - u (uᵀ v_H)`` of the feature block (identity elsewhere)."""
        if not self.sphere:
            return list(v)
        out = x[-1] * _coldot(x[-1], v[-1])  # one new array: out = v_H - u (uᵀ v_H)
        out *= -1
        out += v[-1]
        return list(v[:-1]) + [out]

    def proj_(self, x: list[Array], v: list[Array], work: list[Array] | None = None
              ) -> list[Array]:
        """:meth:`proj` in place (``work``: optional buffers shaped like ``v``); returns ``v``."""
        if not self.sphere:
            return v
        U, vH = x[-1], v[-1]
        imul_add(vH, U, -_coldot(U, vH), None if work is None else work[-1])
        return v

    def retract(self, x: list[Array], v: list[Array]) -> list[Array]:
        """``x + v`` followed by normalising every feature (the sphere's metric projection)."""
        y = self.lin(x, 1.0, v)
        if self.sphere:
            y[-1] = y[-1] / (y[-1] ** 2).sum(0) ** 0.5
        return y

    # ----------------------------------------------------------------- calculus
    def _split(self, x: list[Array]) -> tuple[Array, Array | None, Array]:
        W, H = x[0], (x[-1] if self.rho == 1.0 else self.rho * x[-1])
        b = x[1] if self.prob.has_bias else None
        return W, b, H

    def cost_grad(self, x: list[Array]) -> tuple[float, list[Array], dict[str, Array]]:
        """Value, Riemannian gradient and the cache :meth:`hess` needs."""
        prob = self.prob
        W, b, H = self._split(x)
        Z = W @ H
        if b is not None:
            Z += b[:, None]
        val, Y, S = weighted_loss_and_grad(prob.loss, Z, self.Q, self.w, with_softmax=True)
        val = val + 0.5 * prob.lam_W * _dot(W, W)
        gW = imul_add(Y @ H.T, W, prob.lam_W)  # (in place: these arrays are K x p)
        gH = W.T @ Y
        g = [gW]
        if b is not None:
            val = val + 0.5 * prob.lam_b * (b**2).sum()
            g.append(Y.sum(1) + prob.lam_b * b)
        if self.sphere:
            gU = gH
            if self.rho != 1.0:
                gU *= self.rho
            c = _coldot(x[-1], gU)  # u_gᵀ ∇_u F: the Weingarten coefficient
            g.append(imul_add(gU, x[-1], -c))
        else:
            val = val + 0.5 * prob.lam_H * ((H**2).sum(0) * self.n).sum()
            c = None
            g.append(gH + prob.lam_H * H * self.n)
        cache = {"Y": Y, "S": S, "c": c}
        if self.lowrank_tol is not None and self.device is None:
            parts = []
            for name, M in (("W", W), ("H", H), ("Y", Y)):
                # warm-started from the last factors (consecutive iterates are close)
                parts.append(compress(M, self.lowrank_tol, start=self._lr_start.get(name)))
                if parts[-1] is None:
                    break
                self._lr_start[name] = parts[-1]
            cache["lr"] = None if parts[-1] is None else tuple(parts)
            if cache["lr"] is not None and self.mixed:
                # the whole low-rank product in float32: it is bandwidth-bound on K x p arrays
                f4 = np.float32
                cache["lr"] = tuple(part.astype(f4) for part in cache["lr"])
                cache["S32"] = None if S is None else S.astype(f4)
                cache["SW32"] = None if S is None else np.multiply(
                    S, self.w, out=np.empty(S.shape, f4), casting="same_kind")
                cache["U32"] = x[-1].astype(f4) if self.sphere else None
                cache["c32"] = None if c is None else c.astype(f4)
        if self.mixed and cache.get("lr") is None:
            cache["lp"] = tuple(a.astype(np.float32) for a in (W, H, Y))
        return float(val), g, cache

    def _dY(self, cache: dict[str, Array], dZ: Array) -> Array:
        """Loss curvature ``∇²g(Z)[dZ]`` (see the module docstring)."""
        S = cache["S"]
        if S is None:
            return dZ * self.w
        SdZ = S * dZ
        return (SdZ - S * SdZ.sum(0)) * self.w

    def hess(self, x: list[Array], cache: dict[str, Array], v: list[Array],
             out: list[Array] | None = None) -> list[Array]:
        """Riemannian Hessian applied to the tangent vector ``v``; written into ``out``
        (arrays shaped like ``v``) when given, and returned."""
        lp, lr = cache.get("lp"), cache.get("lr")
        if lr is not None and lr[0].d.dtype == np.float32:
            return self._hess_lowrank32(cache, v, out)
        res = self._hess(x, cache, v, lp, lr)
        if out is None:
            return res
        for o, r in zip(out, res, strict=True):
            o[...] = r
        return out

    def _hess(self, x: list[Array], cache: dict[str, Array], v: list[Array], lp: Any,
              lr: Any) -> list[Array]:
        prob = self.prob
        W, b, H = self._split(x)
        dW, dH = v[0], self.rho * v[-1]
        db = v[1] if b is not None else None
        Y = cache["Y"]
        if lr is not None:  # diagonal plus low rank (gufm.solvers.lowrank): O(K p r) products
            Wc, Hc, Yc = lr
            dZ = Hc.rmm(dW) + Wc.mm(dH)
        elif lp is None:
            dZ = dW @ H + W @ dH
        else:  # the products in float32 (numpy): an inexact Newton step, all sums in float64
            W, H, Y = lp
            dWl, dHl = dW.astype(np.float32), dH.astype(np.float32)
            dZ = (dWl @ H + W @ dHl).astype(float)
        if db is not None:
            dZ = dZ + db[:, None]
        dY = self._dY(cache, dZ)
        if lr is not None:
            out = [Hc.rtmm(dY) + Yc.mm(dH.T) + prob.lam_W * dW]
            hH = Yc.rmm(dW.T) + Wc.tmm(dY)
        elif lp is None:
            out = [dY @ H.T + Y @ dH.T + prob.lam_W * dW]
            hH = dW.T @ Y + W.T @ dY
        else:
            dYl = dY.astype(np.float32)
            out = [(dYl @ H.T + Y @ dHl.T).astype(float) + prob.lam_W * dW]
            hH = (dWl.T @ Y + W.T @ dYl).astype(float)
        if db is not None:
            out.append(dY.sum(1) + prob.lam_b * db)
        if self.sphere:
            U = x[-1]
            hU = self.rho * hH
            out.append(hU - U * (U * hU).sum(0) - v[-1] * cache["c"])
        else:
            out.append(hH + prob.lam_H * v[-1] * self.n)
        return out

    def _hess_lowrank32(self, cache: dict[str, Array], v: list[Array],
                        out: list[Array] | None) -> list[Array]:
        """:meth:`hess` from float32 diagonal-plus-low-rank factors (numpy, ``mixed``).

        The same formulas as :meth:`hess`, evaluated in float32 in reused buffers
        (:meth:`buffer`): every step streams ``K x p`` arrays, so halving their width halves
        the time, and allocating none spares the page faults; the relative error (~1e-7) is
        far below the inner CG's tolerance, as for the float32 dense products.
        """
        prob = self.prob
        f4 = np.float32
        K, p, G = self.K, self.p, self.G
        buf = self.buffer
        Wc, Hc, Yc = cache["lr"]
        vW, vH = v[0], v[-1]
        db = v[1] if prob.has_bias else None
        if out is None:
            out = [np.empty_like(a) for a in v]
        dW = buf("dW", (K, p), f4)
        dW[...] = vW
        dH = buf("dH", (p, G), f4)
        np.multiply(vH, self.rho, out=dH, casting="same_kind")
        dHT = transpose_into(dH, buf("dHT", (G, p), f4))
        dWT = transpose_into(dW, buf("dWT", (p, K), f4))
        wKG, wKp, wpG = buf("wKG", (K, G), f4), buf("wKp", (K, p), f4), buf("wpG", (p, G), f4)
        dZ = Hc.rmm(dW, out=buf("dZ", (K, G), f4), work=wKG)  # dW H
        Wc.mm(dH, out=dZ, add=True, work=wKG)  # + W dH
        if db is not None:
            dZ += db.astype(f4)[:, None]
        SW = cache["SW32"]
        if SW is None:  # MSE: the loss curvature is diag(w)
            dZ *= self.w.astype(f4)
        else:  # CE: dY = (S dZ - S (1ᵀ S dZ)) w = (S w) (dZ - 1 sᵀ), s = 1ᵀ(S dZ)
            dZ -= _coldot(cache["S32"], dZ)
            dZ *= SW
        dY = dZ
        gW = Hc.rtmm(dY, out=buf("gW", (K, p), f4), work=wKp)  # dY Hᵀ
        Yc.mm(dHT, out=gW, add=True, work=wKp)  # + Y dHᵀ
        np.multiply(vW, prob.lam_W, out=out[0])
        out[0] += gW
        if db is not None:
            out[1][...] = dY.sum(1, dtype=float) + prob.lam_b * db
        hH = Wc.tmm(dY, out=buf("hH", (p, G), f4), work=wpG)  # Wᵀ dY
        Yc.rmm(dWT, out=hH, add=True, work=wpG)  # + dWᵀ Y
        if self.sphere:
            U = cache["U32"]
            if self.rho != 1.0:
                hH *= f4(self.rho)
            self.proj_([U], [hH], [wpG])  # the tangent projection, in float32
            hH -= np.multiply(vH, cache["c32"], out=wpG, casting="same_kind")
            out[-1][...] = hH
        else:
            np.multiply(vH, self.n, out=out[-1])
            out[-1] *= prob.lam_H
            out[-1] += hH
        return out

    def _hess_diag_lowrank(self, cache: dict[str, Array], bias: bool,
                           floor: float) -> list[Array]:
        """:meth:`hess_diag` from the factors of ``W`` and ``H`` (their entrywise squares are
        diagonal plus rank ``r^2``, :meth:`gufm.solvers.lowrank.DiagLowRank.hadamard_square`)."""
        prob = self.prob
        Wc, Hc, _ = cache["lr"]
        dt = Wc.d.dtype
        w = self.w.astype(dt)
        S = cache.get("S32") if dt == np.float32 else cache["S"]
        if S is None:  # MSE
            Jd = np.ascontiguousarray(np.broadcast_to(w, (self.K, self.G)))
            dW = Hc.hadamard_square().rtmm(Jd)
            dH = Wc.hadamard_square().tmm(Jd)
        else:
            SW = cache["SW32"] if dt == np.float32 else S * w
            Jd = np.subtract(1, S, out=self.buffer("Jd", S.shape, dt))
            Jd *= SW
            dW = Hc.hadamard_square().rtmm(Jd)
            WS = Wc.tmm(S)
            WS *= WS
            WS *= w
            dH = Wc.hadamard_square().tmm(SW)
            dH -= WS
        dW = dW.astype(float)
        dW += prob.lam_W
        return self._diag_blocks(dW, dH.astype(float), Jd.astype(float) if bias else None,
                                 cache, floor)

    def _diag_blocks(self, dW: Array, dH: Array, Jd: Array | None, cache: dict[str, Array],
                     floor: float) -> list[Array]:
        """The diagonal's blocks ``[W, (b), features]`` from the ``W`` block, the features'
        raw block and (with a bias) the loss curvature's diagonal ``Jd``, clipped at ``floor``
        (``-inf``: not clipped).  ``dW`` and ``dH`` are fresh arrays, updated in place."""
        prob = self.prob
        out = [dW]
        if Jd is not None:
            out.append(Jd.sum(1) + prob.lam_b)
        if self.sphere:
            dH *= self.rho**2
            dH -= cache["c"]
        else:
            imul_add(dH, self.n, prob.lam_H)
        out.append(dH)
        if floor == -math.inf:
            return out
        return [d.clip(floor, None) if not is_torch(d) else d.clamp(min=floor) for d in out]

    def hess_diag(self, x: list[Array], cache: dict[str, Array], floor: float) -> list[Array]:
        """Diagonal of the Hessian (in the ambient coordinates), clipped below at ``floor``.

        ``W``: :math:`\\lambda_W + \\sum_g J_{g,kk} h_{gj}^2`; ``H``:
        :math:`\\sum_{k,l} W_{kj} J_{g,kl} W_{lj}` (times :math:`\\rho^2`, minus the Weingarten
        coefficient); ``J_g`` the loss Hessian of column ``g``.  Used as a preconditioner; with
        ``mixed`` its products run in float32.
        """
        prob = self.prob
        W, b, H = self._split(x)
        S, w = cache["S"], self.w
        lr = cache.get("lr")
        if lr is not None:  # from the diagonal-plus-low-rank factors: O(K p r^2)
            return self._hess_diag_lowrank(cache, b is not None, floor)
        if self.mixed:  # a preconditioner needs no float64 products (numpy only)
            W, H, w = W.astype(np.float32), H.astype(np.float32), w.astype(np.float32)
            S = None if S is None else S.astype(np.float32)
        if S is None:
            Jd = w + 0 * cache["Y"]
            dW = prob.lam_W + Jd @ (H * H).T
            dH = (W * W).T @ Jd
        else:
            SW = S * w
            Jd = SW * (1 - S)
            dW = prob.lam_W + Jd @ (H * H).T
            dH = (W * W).T @ SW - (W.T @ S) ** 2 * w
        if self.mixed:
            dW, dH, Jd = dW.astype(float), dH.astype(float), Jd.astype(float)
        return self._diag_blocks(dW, dH, Jd if b is not None else None, cache, floor)
