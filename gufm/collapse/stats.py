r"""Sufficient statistics of labelled features: class counts, means, within-class scatter.

One algorithm computes them, in memory (:func:`collapse_stats`) and streamed
(:class:`gufm.collapse.streaming.CollapseAccumulator`): :class:`StatsEngine` reads row-major
blocks of features ``(block, d)`` and accumulates, in two passes over the data, everything every
metric of :data:`gufm.collapse.metrics.METRICS` needs, at cost :math:`O(NdK)` and memory
:math:`O(Kd)` plus one ``block x d`` buffer (see docs/metrics.md, section 1).

Pass 1
    Class counts :math:`n_k` and class sums of the rows shifted by one common vector :math:`c`
    (the mean of the first block): :math:`s_k = \sum_{y_i=k}(h_i - c)`, in blocks of the data's
    precision added in ``dtype``.  The shift removes the common offset of the features before
    float32 rounding, so the means :math:`\mu_k = c + s_k/n_k` carry rounding at the scale of
    the between-class spread, not of :math:`\lVert\mu_k\rVert`.
Between the passes
    The class means and an orthonormal basis :math:`Q` (``d x r``, :math:`r = \min(d, K-1)`) of
    the span of the centred means; :math:`\tilde\mu_k`, the means rounded to the data's precision.
Pass 2
    The residuals :math:`r_i = h_i - \tilde\mu_{y_i}` (a gather and a subtraction) and one
    product :math:`r_i^\top[Q, W^\top]` per sample give: the squared norms
    :math:`\lVert r_i\rVert^2` (within-class sums of squares, corrected for the rounding of
    :math:`\tilde\mu_k` by

    .. math:: \sum_{y_i=k}\lVert h_i-\mu_k\rVert^2 = \sum_{y_i=k}\lVert r_i\rVert^2
              - \lVert t_k\rVert^2/n_k, \quad t_k = \textstyle\sum_{y_i=k} r_i
              = n_k(\mu_k - \tilde\mu_k),

    where the part of :math:`t_k` in the span of :math:`Q` is accumulated (:math:`Q^\top t_k`)
    and the rest taken from the pass-1 means: no cancellation of
    :math:`\sum\lVert h\rVert^2 - n\lVert\mu\rVert^2`); the projections
    :math:`p_i = Q^\top r_i` (their ``r x r`` scatter is all NC1 needs: :math:`u^\top\Sigma_W u`
    for :math:`u` in the span); the cosines of NC3 (:math:`w_k^\top h_i = w_k^\top r_i +
    w_k^\top\tilde\mu_{y_i}`, over :math:`\lVert h_i\rVert` from the row itself); the
    classifier's decision :math:`\arg\max_k w_k^\top h_i + b_k` and the nearest-class-centre
    decision of NC4 (in the projected space:
    :math:`\lVert h - \mu_k\rVert^2 - \lVert Q^\top(h - \mu_k)\rVert^2` is the same for every
    ``k``, because all :math:`\mu_k - \mu_j` lie in the span).

With ``passes=1`` the engine keeps the ``d x d`` within-class scatter instead (one pass, cost
:math:`O(d^2)` per sample; NC4 is then not available, since its decision needs the final means).
Statistics accumulate in float64 (``dtype``); the per-block products run in the data's precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from gufm.backend import Array, eps, is_torch, to_numpy
from gufm.collapse._checks import as_float, check_b, check_center, check_W, fro, labels_tensor

__all__ = ["CollapseStats", "StatsEngine", "collapse_stats", "cosine_sum"]

#: above this many classes the one-pass cosine numerators use a gather, not a (block x K) product
_GEMM_CLASSES = 256
#: up to this many classes the class sums of a block are an indicator-matrix product (GPU)
_GEMM_CLASSES_SUM = 64


@dataclass(frozen=True)
class CollapseStats:
    r"""Sufficient statistics of labelled features for every metric of ``METRICS``.

    Attributes
    ----------
    counts : array (K,)
        :math:`n_k` (floating, all positive).
    means : array (d, K)
        Class means :math:`\mu_k` as columns (uncentred).
    within_ss : array (K,)
        :math:`\sum_{y_i = k} \lVert h_i - \mu_k\rVert^2` (0 for a single-sample class).
    quad : callable
        ``quad(U)`` for ``U`` of shape ``(d, r)`` inside the span of the centred class means
        returns the ``r`` values :math:`u_j^\top \Sigma_W u_j`.
    cos_sum : scalar or None
        :math:`\sum_i \cos(h_i, w_{y_i})` for the classifier of the pass (NC3).
    disagree : scalar or None
        Number of samples whose classifier decision differs from the nearest class centre (NC4).
    ood_sum, ood_count : array (d,) and scalar, or None
        Sum and number of out-of-distribution features (NC5).

    Examples
    --------
    >>> import numpy as np
    >>> st = collapse_stats(np.array([[0., 2., 0., 0.], [0., 0., 4., 6.]]), [0, 0, 1, 1])
    >>> st.means.tolist(), st.within_ss.tolist(), st.global_mean().tolist()
    ([[1.0, 0.0], [0.0, 5.0]], [2.0, 2.0], [0.5, 2.5])
    """

    counts: Array
    means: Array
    within_ss: Array
    quad: Callable[[Array], Array] = field(repr=False)
    cos_sum: Array | None = None
    disagree: Array | None = None
    ood_sum: Array | None = None
    ood_count: Array | None = None

    @property
    def K(self) -> int:
        return int(self.means.shape[1])

    @property
    def d(self) -> int:
        return int(self.means.shape[0])

    @property
    def N(self) -> Array:
        return self.counts.sum()

    def global_mean(self, center: str = "samples") -> Array:
        r"""The global mean, shape ``(d,)``: :math:`\mu_G = \sum_k n_k\mu_k/N` (``"samples"``,
        the sample mean) or :math:`\frac1K\sum_k\mu_k` (``"classes"``, the mean of the class means).
        They coincide for balanced classes."""
        if check_center(center) == "classes":
            return self.means.mean(axis=1)
        return (self.means @ self.counts) / self.N

    def centred_means(self, center: str = "samples") -> Array:
        r""":math:`\bar M = [\mu_k - \mu_G]_k`, shape ``(d, K)`` (see :meth:`global_mean`)."""
        return self.means - self.global_mean(center)[:, None]

    @property
    def ood_mean(self) -> Array:
        """Mean of the out-of-distribution features ``(d,)``; ``ValueError`` if none were given."""
        if self.ood_sum is None or float(self.ood_count) == 0:
            raise ValueError("ood: nc5 needs out-of-distribution features (none were given)")
        return self.ood_sum / self.ood_count

    def check_spread(self, center: str = "samples") -> Array:
        """The centred means; ``ValueError`` if all class means coincide (up to rounding)."""
        Mc = self.centred_means(center)
        scale = float(((self.means * self.means).sum(axis=0) ** 0.5).max())
        tol = 100.0 * math.sqrt(self.K) * eps(Mc) * scale
        spread = float(fro(Mc))
        if spread == 0.0 or spread <= tol:
            raise ValueError("H: zero between-class spread (all class means coincide); the "
                             "between-class metrics (nc1*, nc2*, nc3_duality, ...) are undefined")
        return Mc


def cosine_sum(num: torch.Tensor, H: torch.Tensor | None, wnorm: torch.Tensor, *,
               hnorm: torch.Tensor | None = None) -> torch.Tensor:
    r""":math:`\sum_i \cos(h_i, w_{y_i})` from the numerators :math:`h_i^\top w_{y_i}`, the rows
    ``H`` (or their norms ``hnorm``) and :math:`\lVert w_{y_i}\rVert`; :math:`\cos(x, 0) = 0`.
    Each cosine in the precision of ``wnorm`` (a cosine lies in [-1, 1]: float32 is exact to
    1e-7), summed in float64.

    Examples
    --------
    >>> import torch
    >>> H = torch.tensor([[0., 0.], [2., 0.], [0., 4.]])
    >>> float(cosine_sum(torch.tensor([0., 2., 4.]), H, torch.tensor([1., 1., 1.])))
    2.0
    """
    if hnorm is None:
        assert H is not None
        hnorm = torch.linalg.vector_norm(H, dim=1)
    den = hnorm.to(wnorm.dtype) * wnorm
    zero = den == 0  # (a numerator assembled from parts may be rounding, not 0, there)
    return (num.to(wnorm.dtype) * ~zero / (den + zero)).sum(dtype=torch.float64)


class StatsEngine:
    """Blockwise accumulation of :class:`CollapseStats` (torch, any device; see the module doc).

    Inputs to :meth:`add` are already validated: rows ``(B, d)`` on ``device`` and labels as a
    long tensor in ``0..K-1``.  ``name`` is the argument named in the NaN/inf error.

    Examples
    --------
    >>> import torch
    >>> eng = StatsEngine(2, 2)
    >>> X, y = torch.tensor([[0., 0.], [2., 0.], [0., 4.], [0., 6.]]), torch.tensor([0, 0, 1, 1])
    >>> eng.add(X, y); eng.next_pass(); eng.add(X, y)
    >>> eng.stats(numpy=True).within_ss.tolist()
    [2.0, 2.0]
    """

    def __init__(self, num_classes: int, dim: int, *, passes: int = 2,
                 dtype: torch.dtype = torch.float64, device: Any = None,
                 block_size: int | None = None, name: str = "H_batch") -> None:
        self.K, self.d, self.passes, self.dtype = int(num_classes), int(dim), passes, dtype
        self.device = None if device is None else torch.device(device)
        self.block_size = int(block_size) if block_size else None
        self.name = name
        self._pass = 1
        self._ready = False
        self._work: torch.dtype | None = None
        self._W: torch.Tensor | None = None
        self._b: torch.Tensor | None = None
        self._ood_s: torch.Tensor | None = None
        self._ood_n = 0

    def _init_state(self, like: torch.Tensor) -> None:
        if self.device is None:
            self.device = like.device
        # cache-resident blocks (a few MB): every block is read by several operations (a
        # subtraction, then a product or a scatter, then norms); on GPUs large blocks (fewer
        # kernel launches)
        cpu = self.device.type == "cpu"
        big = min(8192, max(256, 2**22 // self.d)) if cpu else max(2048, 2**25 // self.d)
        small = max(256, 2**20 // self.d) if cpu else big
        self._bs1 = self.block_size or (small if self.passes == 2 else big)
        self._bs2 = self.block_size or small
        self.block_size = self.block_size or big
        self._work = torch.float64 if like.dtype == torch.float64 else torch.float32
        z = {"dtype": self.dtype, "device": self.device}
        K, d = self.K, self.d
        self._n = torch.zeros(K, dtype=torch.int64, device=self.device)
        self._s, self._ss, self._cos = torch.zeros(K, d, **z), torch.zeros(K, **z), torch.zeros((), **z)
        self._shift = torch.zeros(K, d, **z)
        self._shift_w = torch.zeros(K, d, dtype=self._work, device=self.device)
        self._has_shift = torch.zeros(K, dtype=torch.bool, device=self.device)
        self._all_shifted = False
        self._c_w: torch.Tensor | None = None  # the common shift of pass 1 (passes=2)
        self._S = torch.zeros(d, d, **z) if self.passes == 1 else None
        # per-block work buffers, reused (fresh large allocations page-fault on every block)
        bmax = max(self._bs1, self._bs2)
        self._Rbuf = torch.empty(bmax, d, dtype=self._work, device=self.device)
        self._Cbuf = torch.empty(bmax, d, dtype=self._work, device=self.device)
        self._Kbuf = torch.empty(K, d, dtype=self._work, device=self.device)
        # class sums of a block: a scatter on CPUs (measured 1.7-2x faster than the indicator
        # product for K = 10, d = 512, one or two threads), the product on GPUs
        self._Ybuf = (torch.empty(K, bmax, dtype=self._work, device=self.device)
                      if K <= _GEMM_CLASSES_SUM and not cpu else None)
        if self._W is not None:
            self.set_classifier(self._W, self._b)
        self._ready = True

    def set_classifier(self, W: torch.Tensor | None, b: torch.Tensor | None = None) -> None:
        """The classifier ``(K, d)`` (and bias ``(K,)``) used during the pass (NC3, NC4)."""
        if W is None:
            return
        self._W = W.to(dtype=self.dtype, device=self.device)
        self._b = None if b is None else b.to(dtype=self.dtype, device=self.device)
        if self.device is not None and self._work is not None:
            self._Wt_w = self._W.T.to(self._work).contiguous()
            self._W_w = self._W.to(self._work)
            self._wn = ((self._W * self._W).sum(1) ** 0.5).to(self._work)

    # ------------------------------------------------------------------------- accumulation
    def add(self, H: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows ``H`` ``(B, d)`` with labels ``y`` to the current pass."""
        if not self._ready:
            self._init_state(H if H.is_floating_point() else H.to(torch.float64))
        H = H.to(device=self.device, dtype=self._work)
        if H.shape[0] == 0:
            return
        if self.passes == 1:
            self._update_shifted(H, y, scatter=True)
        elif self._pass == 1:
            self._update_first(H, y)
        else:
            self._update_second(H, y)

    def add_ood(self, H: torch.Tensor) -> None:
        """Add out-of-distribution rows ``(B, d)`` (only their sum and count are kept)."""
        s = torch.zeros(self.d, dtype=self.dtype, device=self.device or H.device)
        for Hb in H.split(self.block_size or 8192):
            s += Hb.to(device=s.device).sum(0, dtype=self.dtype)
        if not bool(torch.isfinite(s).all()):
            raise ValueError("ood contains NaN or inf")
        self._ood_s = s if self._ood_s is None else self._ood_s + s
        self._ood_n += int(H.shape[0])

    def _blocks(self, H: torch.Tensor, y: torch.Tensor, size: int, copy: bool = True
                ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        for Hb, yb in zip(H.split(size), y.split(size), strict=True):
            if copy and Hb.stride(1) != 1:  # columns of a (d, N) array: a contiguous block copy
                Hb = self._Cbuf[: Hb.shape[0]].copy_(Hb)
            yield Hb, yb

    def _class_sum(self, out: torch.Tensor, y: torch.Tensor, X: torch.Tensor) -> None:
        """``out[k] += sum_{y_i = k} X_i`` in ``out``'s precision (``out`` is ``K x d``)."""
        if self._Ybuf is not None:  # GPU, few classes: an indicator product (no atomics)
            Y = self._Ybuf[:, : y.shape[0]].zero_()
            Y.scatter_(0, y[None, :], 1.0)
            out += torch.mm(Y, X, out=self._Kbuf)
        elif self.K <= X.shape[0]:  # a per-block (K, d) buffer in the work precision
            out += self._Kbuf.zero_().index_add_(0, y, X)
        else:  # many classes: scatter straight into the accumulator
            out.index_add_(0, y, X.to(out.dtype))

    def _check_finite(self, *xs: torch.Tensor) -> None:
        if not all(bool(torch.isfinite(x).all()) for x in xs):
            raise ValueError(f"{self.name} contains NaN or inf (or values whose squares overflow)")

    def _update_first(self, H: torch.Tensor, y: torch.Tensor) -> None:
        """Pass 1 of ``passes=2``: counts and class sums of the rows shifted by ``c``."""
        s_b = torch.zeros(self.K, self.d, dtype=self.dtype, device=self.device)
        for Hb, yb in self._blocks(H, y, self._bs1, copy=False):
            if self._c_w is None:  # the common shift: the mean of the first block
                self._c_w = Hb.mean(0, dtype=self.dtype).to(self._work)
            R = torch.sub(Hb, self._c_w, out=self._Rbuf[: yb.shape[0]])
            self._class_sum(s_b, yb, R)
        self._check_finite(s_b)
        self._n += torch.bincount(y, minlength=self.K)
        self._s += s_b

    def _update_shifted(self, H: torch.Tensor, y: torch.Tensor, *, scatter: bool) -> None:
        """One-pass mode: class sums and squared norms shifted per class, the cosines and,
        with ``scatter``, the d x d scatter."""
        z = {"dtype": self.dtype, "device": self.device}
        K, d = self.K, self.d
        shift, shift_w, has = self._shift, self._shift_w, self._has_shift
        all_shifted = self._all_shifted
        s_b, ss_b, cos_b = torch.zeros(K, d, **z), torch.zeros(K, **z), torch.zeros((), **z)
        S_b = torch.zeros(d, d, **z) if scatter else None
        withW = self._W is not None
        cw = (shift * self._W).sum(1).to(self._work) if withW else None
        for Hb, yb in self._blocks(H, y, self._bs1):
            if not all_shifted:  # shift of a class = its mean in the first block that has it
                nb = torch.bincount(yb, minlength=K)
                new = (nb > 0) & ~has
                if bool(new.any()):  # (any value within the class spread of the mean works)
                    m = self._Kbuf.zero_().index_add_(0, yb, Hb) / nb.clamp(min=1)[:, None]
                    shift_w = torch.where(new[:, None], m.to(self._work), shift_w)
                    shift = shift_w.to(self.dtype)
                    has = has | new
                    all_shifted = bool(has.all())
                    cw = (shift * self._W).sum(1).to(self._work) if withW else None
            R = torch.index_select(shift_w, 0, yb, out=self._Rbuf[: yb.shape[0]])
            R = torch.sub(Hb, R, out=R)  # r_i = h_i - c_{y_i}
            self._class_sum(s_b, yb, R)
            ss_b.index_add_(0, yb, torch.linalg.vector_norm(R, dim=1).square_().to(self.dtype))
            if scatter:
                S_b += (R.T @ R).to(self.dtype)
            if withW:
                if K <= _GEMM_CLASSES:
                    num = (R @ self._Wt_w).gather(1, yb[:, None]).squeeze(1)
                else:
                    num = (R * self._W_w[yb]).sum(1)
                cos_b += cosine_sum(num + cw[yb], Hb, self._wn[yb])
        self._check_finite(ss_b, s_b)
        self._shift, self._shift_w, self._has_shift = shift, shift_w, has
        self._all_shifted = all_shifted
        self._n += torch.bincount(y, minlength=K)
        self._s += s_b
        self._ss += ss_b
        self._cos += cos_b
        if scatter:
            self._S += S_b

    def _update_second(self, H: torch.Tensor, y: torch.Tensor) -> None:
        """Pass 2: residuals from the rounded means, their squared norms and projections, the
        cosines and both decisions."""
        z = {"dtype": self.dtype, "device": self.device}
        r, K = self._Q.shape[1], self.K
        p_b, SP_b = torch.zeros(K, r, **z), torch.zeros(r, r, **z)
        ss_b, cos_b = torch.zeros(K, **z), torch.zeros((), **z)
        dis_b = torch.zeros((), dtype=torch.int64, device=self.device)
        withW = self._W is not None
        for Hb, yb in self._blocks(H, y, self._bs2, copy=False):
            b = yb.shape[0]
            R = torch.index_select(self._mu_w, 0, yb, out=self._Rbuf[:b])
            R = torch.sub(Hb, R, out=R)  # r_i = h_i - mu~_{y_i}
            rn2 = torch.linalg.vector_norm(R, dim=1).square_().to(self.dtype)
            ss_b.index_add_(0, yb, rn2)
            G = torch.mm(R, self._A, out=self._Gbuf[:b])  # (b, r [+ K] + pad)
            P = G[:, :r].to(self.dtype)  # Q^T (h_i - mu~_{y_i})
            p_b.index_add_(0, yb, P)
            SP_b += P.T @ P
            if withW:
                # scores w_k^T h_i + b_k (classifier) and h_i^T(mu_k - mu_G) - ||mu_k - mu_G||^2/2
                # - mu_G^T(mu_k - mu_G) (argmin_k ||h_i - mu_k||^2), from r_i and per-class tables
                T = torch.index_select(self._dec_t, 0, yb)  # (b, 2K): [D1 | D2]
                D1 = T[:, :K].add_(G[:, r:r + K])
                T[:, K:].addmm_(G[:, :r], self._dec_B)
                am = T.view(b, 2, K).argmax(2)  # both decisions in one call
                dis_b += (am[:, 0] != am[:, 1]).sum()
                num = D1.gather(1, yb[:, None]).squeeze(1) - self._b_w[yb]
                # ||h_i|| from the row itself: from ||r_i||, r_i^T mu~ and ||mu~|| it would lose
                # its accuracy on rows near 0 (dead post-ReLU features), whose cosine is 0
                cos_b += cosine_sum(num, Hb, self._wn[yb])
        self._check_finite(SP_b, p_b, ss_b)
        self._n2 += torch.bincount(y, minlength=K)
        self._p += p_b
        self._SP += SP_b
        self._ss += ss_b
        self._cos += cos_b
        self._dis += dis_b

    def next_pass(self) -> None:
        """End pass 1 of a two-pass engine: fix the class means and the basis ``Q``."""
        n = self._n.to(self.dtype)
        empty = (self._n == 0).nonzero()
        if empty.numel():
            raise ValueError(f"labels: class {int(empty[0, 0])} has no samples")
        mu = self._c_w.to(self.dtype) + self._s / n[:, None]  # (K, d): shifted sums
        muG = (n @ mu) / n.sum()
        Mc = mu - muG  # (K, d), rank <= K - 1
        r = min(self.d, self.K - 1)
        self._Q = torch.linalg.svd(Mc.T, full_matrices=False)[0][:, :r].contiguous()
        self._mu, self._mu_w = mu, mu.to(self._work).contiguous()
        A = self._Q if self._W is None else torch.cat([self._Q, self._W.T], dim=1)
        pad = -A.shape[1] % 8  # column counts that are multiples of 8 hit the fast GEMM paths
        A = torch.cat([A, A.new_zeros(self.d, pad)], dim=1)
        self._A = A.to(self._work).contiguous()
        self._Gbuf = torch.empty(self._bs2, A.shape[1], dtype=self._work, device=self.device)
        if self._W is not None:
            K = self.K
            mu_t = self._mu_w.to(self.dtype)  # the means the residuals are taken from
            b = torch.zeros(K, **{"dtype": self.dtype, "device": self.device}) \
                if self._b is None else self._b
            # score_k(h_i) = [r_i^T w_k + mu~_y^T w_k + b_k,
            #                 (Q^T r_i)^T Q^T Mc_k + mu~_y^T Mc_k - ||Mc_k||^2/2 - muG^T Mc_k]
            ncc = (Mc * Mc).sum(1) / 2 + Mc @ muG
            T = torch.cat([mu_t @ self._W.T + b, mu_t @ Mc.T - ncc], dim=1)  # (K, 2K)
            self._dec_B = (self._Q.T @ Mc.T).to(self._work)  # (r, K)
            self._dec_t = T.to(self._work)
            self._b_w = b.to(self._work)
        self._n2 = torch.zeros_like(self._n)
        self._p = torch.zeros(self.K, r, dtype=self.dtype, device=self.device)
        self._SP = torch.zeros(r, r, dtype=self.dtype, device=self.device)
        self._dis = torch.zeros((), dtype=torch.int64, device=self.device)
        self._ss.zero_()
        self._cos.zero_()
        self._pass = 2

    # ------------------------------------------------------------------------- results
    def stats(self, numpy: bool) -> CollapseStats:
        """The accumulated statistics, as numpy arrays or as tensors on ``device``."""
        empty = (self._n == 0).nonzero()
        if empty.numel():
            raise ValueError(f"labels: class {int(empty[0, 0])} has no samples")
        n = self._n.to(self.dtype)
        N, s = n.sum(), self._s
        if self.passes == 1:
            means = self._shift + s / n[:, None]
            within = self._ss - (s * s).sum(1) / n
            Sw = (self._S - (s / n[:, None]).T @ s) / N
            mats = {"Sw": (Sw + Sw.T) / 2}
        else:
            if not torch.equal(self._n2, self._n):
                raise ValueError("the second pass saw different data (class counts "
                                 f"{self._n2.tolist()} vs {self._n.tolist()} in the first pass)")
            p, means = self._p, self._mu
            # t_k = sum_{y_i = k} r_i: its part in span(Q) accumulated, the rest from pass 1
            D = means - self._mu_w.to(self.dtype)
            Dperp = D - (D @ self._Q) @ self._Q.T
            within = self._ss - (p * p).sum(1) / n - n * (Dperp * Dperp).sum(1)
            Cp = (self._SP - (p / n[:, None]).T @ p) / N  # Q^T Sigma_W Q
            mats = {"Cp": (Cp + Cp.T) / 2, "Q": self._Q}
        within = within * (within > 0)
        conv: Callable[[torch.Tensor], Array] = to_numpy if numpy else (lambda t: t)
        mats = {k: conv(v) for k, v in mats.items()}
        if self.passes == 1:
            Sw = mats["Sw"]

            def quad(U: Array) -> Array:
                return ((Sw @ U) * U).sum(axis=0)
        else:
            Cp, Q = mats["Cp"], mats["Q"]

            def quad(U: Array) -> Array:
                T = Q.T @ U
                return ((Cp @ T) * T).sum(axis=0)

        withW = self._W is not None
        dis = self._dis.to(self.dtype) if withW and self.passes == 2 else None
        ood = self._ood_s is not None
        return CollapseStats(
            counts=conv(n), means=conv(means.T.contiguous()), within_ss=conv(within), quad=quad,
            cos_sum=conv(self._cos) if withW else None,
            disagree=None if dis is None else conv(dis),
            ood_sum=conv(self._ood_s) if ood else None,
            ood_count=conv(torch.tensor(float(self._ood_n), dtype=self.dtype)) if ood else None)


def collapse_stats(H: Array, labels: Array, W: Array | None = None, b: Array | None = None, *,
                   num_classes: int | None = None, ood: Array | None = None,
                   block_size: int | None = None) -> CollapseStats:
    r"""Sufficient statistics (:class:`CollapseStats`) of features ``H`` (d, N) with ``labels``.

    The two passes of :class:`StatsEngine` over blocks of the columns of ``H``: cost
    :math:`O(NdK)`, no ``N x d`` temporary, on ``H``'s device (a GPU tensor stays there).
    ``K`` is ``W.shape[0]`` when ``W`` is given, else ``num_classes``, else ``labels.max() + 1``;
    every class needs a sample.  With ``W`` (and ``b``) the cosine sum of NC3 and the decision
    disagreements of NC4 are included; ``ood`` (``(d, N_ood)`` features) adds the sums of NC5.
    Arrays come back as numpy for numpy ``H``, as float64 tensors on ``H``'s device for torch.

    Examples
    --------
    >>> import numpy as np
    >>> H = np.array([[0., 2., 0., 0.], [0., 0., 4., 6.]])
    >>> st = collapse_stats(H, [0, 0, 1, 1], W=np.eye(2))
    >>> float(st.cos_sum), float(st.disagree), st.counts.tolist()
    (3.0, 0.0, [2.0, 2.0])
    """
    H = as_float(H, "H", 2, check_finite=False)  # finiteness: checked on the accumulated sums
    d, N = H.shape
    Ht = torch.as_tensor(H) if not is_torch(H) else H
    Wt = bt = None
    if W is not None:
        W = check_W(W, d)
        if num_classes is not None and int(num_classes) != W.shape[0]:
            raise ValueError(f"num_classes = {num_classes} disagrees with W's {W.shape[0]} rows")
        num_classes = W.shape[0]
        Wt = torch.as_tensor(W).to(Ht.device)
        b = check_b(b, num_classes)
        bt = None if b is None else torch.as_tensor(b).to(Ht.device)
    y, K = labels_tensor(labels, N, num_classes, Ht.device)
    eng = StatsEngine(K, d, passes=2, device=Ht.device, block_size=block_size, name="H")
    eng.set_classifier(Wt, bt)
    X = Ht.T  # (N, d) rows: a view
    eng.add(X, y)
    eng.next_pass()
    eng.add(X, y)
    if ood is not None:
        O = as_float(ood, "ood", 2, check_finite=False)
        if O.shape[0] != d:
            raise ValueError(f"ood must have shape (d, N_ood) with d = {d}, got {tuple(O.shape)}")
        eng.add_ood((torch.as_tensor(O) if not is_torch(O) else O).T.to(eng._work))
    return eng.stats(numpy=not is_torch(H))
