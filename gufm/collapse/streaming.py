r"""Streaming neural-collapse statistics: memory independent of N, one or two passes over data.

:class:`CollapseAccumulator` takes **row-major batches** ``H_batch`` of shape ``(batch, d)`` —
what data loaders and forward hooks produce — with labels ``(batch,)``, and accumulates the
sufficient statistics of :class:`gufm.metrics.CollapseStats`.  Its
:meth:`~CollapseAccumulator.report` evaluates the very same formulas as
:func:`gufm.metrics.collapse_report` (which takes ``(d, N)`` columns), so the numbers agree to
rounding (tested: 1e-10 in float64).

Two modes
---------
``passes=1`` (default)
    One pass; keeps the ``d x d`` within-class scatter (memory :math:`O(d^2 + Kd)`, cost
    :math:`O(d^2)` per sample, a matrix product).  Usable from a forward hook during training.
``passes=2``
    Two passes over the same data (a source that can be read twice may be read twice).  The
    first accumulates class counts, shifted class sums and squared norms;
    :meth:`~CollapseAccumulator.next_pass` fixes the class means and an orthonormal basis
    :math:`Q` (``d x min(d, K-1)``) of the span of the centred means; the second accumulates
    the projections :math:`Q^\top(h_i - \mu_{y_i})` and their ``(K-1) x (K-1)`` scatter — all
    that NC1 needs (:math:`u^\top\Sigma_W u` for :math:`u` in that span) — and the cosines.
    Memory :math:`O(Kd)`, cost :math:`O(d\min(d, K))` per sample.

NC3 needs the classifier during the pass: give ``W`` to the constructor (or, with
``passes=2``, to :meth:`~CollapseAccumulator.next_pass`); without it ``nc3`` is left out of the
report, and another pass with ``W`` is needed.

Numerics
--------
Statistics are accumulated in ``dtype`` (float64 by default) on ``device``; each batch is cut
into blocks of ``block_size`` rows whose products run in the batch's own precision (float32
batches stay float32 for the matrix products, summed across blocks in float64).  Within-class
quantities use **shifted sums**: every sample is centred by a per-class shift :math:`c_k`
before summing or squaring (the mean of the class in the first block that contains it; in the
second pass of ``passes=2`` the projected first-pass mean :math:`Q^\top\mu_k`), and the exact
shift correction

.. math:: \sum_{y_i=k}(h_i-\mu_k)(h_i-\mu_k)^\top = \sum_{y_i=k} r_ir_i^\top - s_ks_k^\top/n_k,
          \quad r_i = h_i - c_{y_i},\ s_k = \textstyle\sum_{y_i=k} r_i,

is applied at the end — so rounding scales with the within-class spread, not with
:math:`\lVert\mu_k\rVert` (no catastrophic cancellation of :math:`\sum hh^\top - n\mu\mu^\top`).
With float32 batches the report agrees with a float64 in-memory computation to about 1e-5
relative (tested at 1e-4 for N = 2*10^5); in float64 to about 1e-12.

Degenerate input: a class with a single sample has within-class variance 0; a class never
seen, all class means equal (zero between-class spread), NaN/inf features, wrong shapes and
labels out of range raise ``ValueError`` naming the argument (an invalid batch leaves the
accumulator unchanged).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from gufm.backend import Array, is_torch, to_numpy
from gufm.collapse.metrics import CollapseStats, report_from_stats

__all__ = ["CollapseAccumulator", "stream_report"]

#: above this many classes the cosine numerators use a gather instead of a (block x K) product
_GEMM_CLASSES = 256
#: up to this many classes the class sums of a block are an indicator-matrix product
_GEMM_CLASSES_SUM = 64


def _to_tensor(x: Array, name: str) -> torch.Tensor:
    if is_torch(x):
        return x.detach()
    a = np.asarray(x)
    if a.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype object")
    with warnings.catch_warnings():  # read-only memmaps: we never write into them
        warnings.simplefilter("ignore", UserWarning)
        return torch.as_tensor(a)


class CollapseAccumulator:
    """Accumulate neural-collapse statistics batch by batch (see the module docstring).

    Parameters
    ----------
    num_classes : int
        K >= 2.
    dim : int
        Feature dimension d.
    W : array (K, d), optional
        Classifier, needed during the pass for the cosine sum of ``nc3``.
    passes : {1, 2}
        1: one pass with the ``d x d`` scatter; 2: two passes, memory ``O(Kd)``.
    dtype : torch.dtype
        Accumulation precision (default float64).
    device : torch.device or str, optional
        Where statistics live; default: the device of the first batch.
    block_size : int, optional
        Rows per block when processing a batch.  Bounds the temporaries to
        ``block_size x (d + K)`` regardless of batch size and the float32 rounding of the
        per-block products (blocks are summed in ``dtype``).  Default on CPU
        ``min(8192, max(256, 2**22 // d))`` (blocks of a few MB, cache-resident); on GPUs
        ``max(2048, 2**25 // d)`` (fewer kernel launches; float32 streamed on an H100 at 65536
        rows per block agreed with float64 to 4e-8).  Class sums of a block are an
        indicator-matrix product for K <= 64, a scatter into a per-block ``(K, d)`` buffer
        for K up to ``block_size``, and a direct scatter into the accumulator for larger K
        (blockwise: no ``(K, d)`` work per block); the cosines use a ``(block, K)`` product up
        to K = 256 and a gather beyond.

    Examples
    --------
    >>> acc = CollapseAccumulator(K, d, W=model.fc.weight)       # doctest: +SKIP
    >>> handle = acc.hook(model.penultimate)                     # doctest: +SKIP
    >>> for x, y in loader:                                      # doctest: +SKIP
    ...     with acc.labels(y):
    ...         model(x)
    >>> handle.remove(); acc.report()                            # doctest: +SKIP
    """

    def __init__(self, num_classes: int, dim: int, *, W: Array | None = None, passes: int = 1,
                 dtype: torch.dtype = torch.float64, device: Any = None,
                 block_size: int | None = None) -> None:
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if isinstance(dim, bool) or int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if passes not in (1, 2):
            raise ValueError(f"passes must be 1 or 2, got {passes!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if block_size is not None and (int(block_size) != block_size or block_size < 1):
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        self.K = int(num_classes)
        self.d = int(dim)
        self.passes = passes
        self.dtype = dtype
        self.device = None if device is None else torch.device(device)
        self.block_size = int(block_size) if block_size else None  # default: see _init_state
        self._W_in = None if W is None else self._check_W(W)
        self._pass = 1
        self._numpy_out = False  # report python floats when the data came as numpy
        self._work: torch.dtype | None = None  # precision of the per-block products
        self._pending: Any = None
        self._ready = False

    # ----------------------------------------------------------------------------- set-up
    def _check_W(self, W: Array) -> torch.Tensor:
        Wt = _to_tensor(W, "W")
        if Wt.ndim != 2 or tuple(Wt.shape) != (self.K, self.d):
            raise ValueError(f"W must have shape (K, d) = ({self.K}, {self.d}), got "
                             f"{tuple(Wt.shape)}")
        if not torch.isfinite(Wt).all():
            raise ValueError("W contains NaN or inf")
        return Wt

    def _init_state(self, like: torch.Tensor) -> None:
        if self.device is None:
            self.device = like.device
        if self.block_size is None:
            self.block_size = (min(8192, max(256, 2**22 // self.d)) if self.device.type == "cpu"
                               else max(2048, 2**25 // self.d))
        self._work = torch.float64 if like.dtype == torch.float64 else torch.float32
        z = {"dtype": self.dtype, "device": self.device}
        K, d = self.K, self.d
        self._n = torch.zeros(K, dtype=torch.int64, device=self.device)
        self._s = torch.zeros(K, d, **z)
        self._ss = torch.zeros(K, **z)
        self._cos = torch.zeros((), **z)
        self._shift = torch.zeros(K, d, **z)
        self._shift_w = torch.zeros(K, d, dtype=self._work, device=self.device)
        self._has_shift = torch.zeros(K, dtype=torch.bool, device=self.device)
        self._all_shifted = False
        self._S = torch.zeros(d, d, **z) if self.passes == 1 else None
        # per-block work buffers, reused (fresh large allocations page-fault on every block)
        self._Rbuf = torch.empty(self.block_size, d, dtype=self._work, device=self.device)
        self._Kbuf = torch.empty(K, d, dtype=self._work, device=self.device)
        self._Ybuf = (torch.empty(K, self.block_size, dtype=self._work, device=self.device)
                      if K <= _GEMM_CLASSES_SUM else None)
        self._W = None
        if self._W_in is not None:
            self._set_W(self._W_in)
        self._ready = True

    def _set_W(self, W: torch.Tensor) -> None:
        self._W = W.to(dtype=self.dtype, device=self.device)
        self._Wt_w = self._W.T.to(self._work).contiguous()
        self._W_w = self._W.to(self._work)
        self._wn = (self._W * self._W).sum(1) ** 0.5

    # ----------------------------------------------------------------------------- labels/hooks
    def set_labels(self, labels: Array) -> None:
        """Labels for the next batch a :meth:`hook` sees (consumed by that one forward call)."""
        self._pending = labels

    @contextlib.contextmanager
    def labels(self, labels: Array) -> Iterator[CollapseAccumulator]:
        """Context manager: ``with acc.labels(y): model(x)`` feeds ``y`` to the hooked layer."""
        self.set_labels(labels)
        try:
            yield self
        finally:
            self._pending = None

    def hook(self, module: torch.nn.Module,
             transform: Callable[[Any], torch.Tensor] | None = None
             ) -> torch.utils.hooks.RemovableHandle:
        """Register a forward hook on ``module`` that feeds its output to :meth:`update`.

        The output (after ``transform``, e.g. ``lambda out: out[0]`` for tuple outputs) is
        detached and flattened to ``(batch, d)``.  Labels come from :meth:`set_labels` or the
        :meth:`labels` context and are consumed by one forward call (a second call of the
        module without new labels raises ``ValueError``).  Returns the torch handle (call
        ``.remove()``, or use it as a context manager).
        """
        def _hook(mod: torch.nn.Module, inputs: Any, output: Any) -> None:
            out = output if transform is None else transform(output)
            if not is_torch(out):
                raise ValueError("hooked module output must be a tensor; pass transform= to "
                                 "extract it")
            if self._pending is None:
                raise ValueError("labels: no labels set for this forward call; use "
                                 "acc.set_labels(y) or `with acc.labels(y):` before model(x)")
            y, self._pending = self._pending, None
            self.update(out.detach().reshape(out.shape[0], -1), y)

        return module.register_forward_hook(_hook)

    # ----------------------------------------------------------------------------- updates
    def update(self, H_batch: Array, labels_batch: Array) -> None:
        """Add a batch: ``H_batch`` of shape ``(batch, d)`` (**rows are samples**), labels
        ``(batch,)`` in ``0..K-1``.  numpy arrays or torch tensors (any device; moved to
        ``device``)."""
        H = _to_tensor(H_batch, "H_batch")
        if H.ndim != 2 or H.shape[1] != self.d:
            hint = (" (features are rows here; pass H.T if yours are columns)"
                    if H.ndim == 2 and H.shape[0] == self.d else "")
            raise ValueError(f"H_batch must have shape (batch, d) = (B, {self.d}), got "
                             f"{tuple(H.shape)}{hint}")
        if H.is_complex():
            raise ValueError(f"H_batch must be real, got {H.dtype}")
        if not self._ready:
            self._numpy_out = not is_torch(H_batch)
            self._init_state(H if H.is_floating_point() else H.to(torch.float64))
        H = H.to(device=self.device, dtype=self._work)
        y = self._check_labels(labels_batch, H.shape[0])
        if H.shape[0] == 0:
            return
        if self._pass == 1:
            self._update_shifted(H, y, scatter=self.passes == 1)
        else:
            self._update_second(H, y)

    def _check_labels(self, labels: Array, B: int) -> torch.Tensor:
        yt = _to_tensor(labels, "labels_batch")
        if yt.ndim != 1 or yt.shape[0] != B:
            raise ValueError(f"labels_batch must have shape (batch,) = ({B},), got "
                             f"{tuple(yt.shape)}")
        if yt.is_floating_point():
            if not bool(torch.isfinite(yt).all()) or bool((yt != yt.round()).any()):
                raise ValueError("labels_batch must be integers")
        elif yt.dtype == torch.bool or yt.is_complex():
            raise ValueError(f"labels_batch must be integers, got {yt.dtype}")
        y = yt.to(device=self.device, dtype=torch.long)
        if B:
            lo, hi = torch.stack(torch.aminmax(y)).tolist()  # one device sync
            if lo < 0 or hi >= self.K:
                raise ValueError(f"labels_batch must lie in [0, K-1] = [0, {self.K - 1}], got "
                                 f"values in [{lo}, {hi}]")
        return y

    def _blocks(self, H: torch.Tensor, y: torch.Tensor) -> Iterable[tuple[torch.Tensor,
                                                                          torch.Tensor]]:
        return zip(H.split(self.block_size), y.split(self.block_size), strict=True)

    def _class_sum(self, out: torch.Tensor, y: torch.Tensor, X: torch.Tensor) -> None:
        """``out[k] += sum_{y_i = k} X_i`` in ``out``'s precision (``out`` is ``K x d``)."""
        if self.K <= _GEMM_CLASSES_SUM:  # indicator product: a (multi-threaded) matrix product
            Y = self._Ybuf[:, : y.shape[0]].zero_()
            Y.scatter_(0, y[None, :], 1.0)
            out += torch.mm(Y, X, out=self._Kbuf)
        elif self.K <= X.shape[0]:  # a per-block (K, d) buffer in the work precision
            out += self._Kbuf.zero_().index_add_(0, y, X)
        else:  # many classes: scatter straight into the accumulator
            out.index_add_(0, y, X.to(out.dtype))

    def _cos_sum(self, num: torch.Tensor, Hb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""Sum over the block of :math:`\cos(h_i, w_{y_i})` given the numerators
        :math:`h_i^\top w_{y_i}`; 0 where either vector is zero."""
        den = torch.linalg.vector_norm(Hb, dim=1).to(self.dtype) * self._wn[y]
        return (num.to(self.dtype) / (den + (den == 0))).sum()

    def _update_shifted(self, H: torch.Tensor, y: torch.Tensor, *, scatter: bool) -> None:
        """Shifted class sums and squared norms; with ``scatter`` also the d x d scatter and
        the cosines (one-pass mode)."""
        z = {"dtype": self.dtype, "device": self.device}
        K, d = self.K, self.d
        shift, shift_w, has = self._shift, self._shift_w, self._has_shift
        all_shifted = self._all_shifted
        s_b = torch.zeros(K, d, **z)
        ss_b = torch.zeros(K, **z)
        S_b = torch.zeros(d, d, **z) if scatter else None
        cos_b = torch.zeros((), **z)
        withW = scatter and self._W is not None
        cw = (shift * self._W).sum(1) if withW else None
        for Hb, yb in self._blocks(H, y):
            if not all_shifted:  # shift of a class = its mean in the first block that has it
                nb = torch.bincount(yb, minlength=K)
                new = (nb > 0) & ~has
                if bool(new.any()):  # (any value within the class spread of the mean works)
                    m = self._Kbuf.zero_().index_add_(0, yb, Hb) / nb.clamp(min=1)[:, None]
                    shift_w = torch.where(new[:, None], m.to(self._work), shift_w)
                    shift = shift_w.to(self.dtype)
                    has = has | new
                    all_shifted = bool(has.all())
                    cw = (shift * self._W).sum(1) if withW else None
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
                cos_b += self._cos_sum(num.to(self.dtype) + cw[yb], Hb, yb)
        if not bool(torch.isfinite(ss_b).all() & torch.isfinite(s_b).all()):
            raise ValueError("H_batch contains NaN or inf (or values whose squares overflow)")
        self._shift, self._shift_w, self._has_shift = shift, shift_w, has
        self._all_shifted = all_shifted
        self._n += torch.bincount(y, minlength=K)
        self._s += s_b
        self._ss += ss_b
        if scatter:
            self._S += S_b
            self._cos += cos_b

    def _update_second(self, H: torch.Tensor, y: torch.Tensor) -> None:
        """Projections of the features onto Q, shifted by the projected first-pass means."""
        z = {"dtype": self.dtype, "device": self.device}
        r = self._Q.shape[1]
        p_b = torch.zeros(self.K, r, **z)
        SP_b = torch.zeros(r, r, **z)
        cos_b = torch.zeros((), **z)
        withW = self._W is not None
        gemm_cos = withW and self.K <= _GEMM_CLASSES
        for Hb, yb in self._blocks(H, y):
            G = torch.mm(Hb, self._A, out=self._Gbuf[: yb.shape[0]])  # (b, r [+ K] + pad)
            # Q^T (h_i - c_{y_i}), only r <= K - 1 columns: cheap to square in full precision
            P = (G[:, :r] - torch.index_select(self._QM_w, 0, yb)).to(self.dtype)
            p_b.index_add_(0, yb, P)
            SP_b += P.T @ P
            if withW:
                if gemm_cos:
                    num = G[:, r:r + self.K].gather(1, yb[:, None]).squeeze(1)
                else:
                    num = (Hb * self._W_w[yb]).sum(1)
                cos_b += self._cos_sum(num, Hb, yb)
        if not bool(torch.isfinite(SP_b).all() & torch.isfinite(p_b).all()):
            raise ValueError("H_batch contains NaN or inf (or values whose squares overflow)")
        self._n2 += torch.bincount(y, minlength=self.K)
        self._p += p_b
        self._SP += SP_b
        self._cos += cos_b

    # ----------------------------------------------------------------------------- passes
    def next_pass(self, W: Array | None = None) -> None:
        """End the first pass of a ``passes=2`` accumulator; feed the same data again next.

        Fixes the class means and the orthonormal basis :math:`Q` (``d x min(d, K-1)``) of the
        span of the centred means.  ``W`` (optional) is the classifier for the cosines of
        ``nc3`` if it was not given to the constructor.
        """
        if self.passes != 2:
            raise ValueError("next_pass() is for passes=2 accumulators")
        if self._pass != 1:
            raise ValueError("next_pass() was already called")
        if not self._ready:
            raise ValueError("next_pass(): no data seen in the first pass")
        self._check_nonempty(self._n)
        if W is not None:
            if self._W is not None:
                raise ValueError("W was already given to the constructor")
            self._set_W(self._check_W(W))
        n = self._n.to(self.dtype)
        mu = self._shift + self._s / n[:, None]  # (K, d): shifted sums, no cancellation
        Mc = (mu - (n @ mu) / n.sum()).T  # (d, K), rank <= K - 1
        r = min(self.d, self.K - 1)
        self._Q = torch.linalg.svd(Mc, full_matrices=False)[0][:, :r].contiguous()
        A = self._Q if self._W is None or self.K > _GEMM_CLASSES else torch.cat(
            [self._Q, self._W.T], dim=1)
        pad = -A.shape[1] % 8  # column counts that are multiples of 8 hit the fast GEMM paths
        A = torch.cat([A, A.new_zeros(self.d, pad)], dim=1)
        self._A = A.to(self._work).contiguous()
        self._Gbuf = torch.empty(self.block_size, A.shape[1], dtype=self._work, device=self.device)
        self._QM_w = (mu @ self._Q).to(self._work)  # projected shifts (K, r)
        self._n2 = torch.zeros_like(self._n)
        self._p = torch.zeros(self.K, r, dtype=self.dtype, device=self.device)
        self._SP = torch.zeros(r, r, dtype=self.dtype, device=self.device)
        self._cos.zero_()
        self._pass = 2

    def _check_nonempty(self, n: torch.Tensor) -> None:
        empty = (n == 0).nonzero()
        if empty.numel():
            raise ValueError(f"labels: class {int(empty[0, 0])} has no samples")

    # ----------------------------------------------------------------------------- results
    @property
    def num_samples(self) -> int:
        """Samples seen in the current pass."""
        if not self._ready:
            return 0
        return int((self._n2 if self._pass == 2 else self._n).sum())

    def stats(self, like: Array | None = None) -> CollapseStats:
        """The accumulated :class:`~gufm.metrics.CollapseStats` (float ``dtype``).

        Arrays are numpy when ``like`` is numpy (or, without ``like``, when the batches were
        numpy), else torch tensors on ``device``.
        """
        if not self._ready:
            raise ValueError("no data: call update() first")
        if self.passes == 2 and self._pass == 1:
            raise ValueError("passes=2: call next_pass() and feed the data a second time first")
        self._check_nonempty(self._n)
        n = self._n.to(self.dtype)
        N = n.sum()
        s = self._s
        means = self._shift + s / n[:, None]
        within = self._ss - (s * s).sum(1) / n
        if self.passes == 1:
            Sw = (self._S - (s / n[:, None]).T @ s) / N
            mats = {"Sw": (Sw + Sw.T) / 2}
        else:
            if not torch.equal(self._n2, self._n):
                raise ValueError("the second pass saw different data (class counts "
                                 f"{self._n2.tolist()} vs {self._n.tolist()} in the first pass)")
            p = self._p
            Cp = (self._SP - (p / n[:, None]).T @ p) / N  # Q^T Sigma_W Q
            mats = {"Cp": (Cp + Cp.T) / 2, "Q": self._Q}
        within = within * (within > 0)
        cos = self._cos if self._W is not None else None
        to_np = (not is_torch(like)) if like is not None else self._numpy_out
        conv: Callable[[torch.Tensor], Array] = to_numpy if to_np else (lambda t: t)
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

        return CollapseStats(counts=conv(n), means=conv(means.T.contiguous()),
                             within_ss=conv(within), quad=quad,
                             cos_sum=None if cos is None else conv(cos))

    def report(self, W: Array | None = None, b: Array | None = None, *, as_frame: bool = False,
               gufm_reference: Any = None, lam: float | None = None, loss: str = "ce",
               lam_b: float | None = None, features: str = "layernorm") -> Any:
        """The metrics of :func:`gufm.metrics.collapse_report` from the accumulated data.

        ``W`` defaults to the classifier given before; if both are given they must be equal
        (the cosines were accumulated with the first).  Without any ``W`` only the
        ``W``-free metrics are reported; with a ``W`` that was not there during the pass,
        ``nc3`` is left out (another pass with ``W`` is needed).  Values are python floats
        for numpy ``W`` (or numpy batches without ``W``), 0-d float64 tensors otherwise.
        ``b`` is validated and unused.
        """
        like = None
        if W is not None:
            Wt = self._check_W(W)
            if self._W is not None and not torch.equal(
                    Wt.to(dtype=self.dtype, device=self.device), self._W):
                raise ValueError("W differs from the classifier the cosines were accumulated "
                                 "with")
            like = W
        elif self._W is not None:
            W = self._W
            like = np.zeros(0) if self._numpy_out else self._W
            W = to_numpy(W) if self._numpy_out else W
        if b is not None:
            bt = _to_tensor(b, "b")
            if tuple(bt.shape) != (self.K,):
                raise ValueError(f"b must have shape (K,) = ({self.K},), got {tuple(bt.shape)}")
            if not bool(torch.isfinite(bt).all()):
                raise ValueError("b contains NaN or inf")
        st = self.stats(like)
        return report_from_stats(st, W, as_frame=as_frame, gufm_reference=gufm_reference,
                                 lam=lam, loss=loss, lam_b=lam_b, features=features)


def stream_report(source: Any, num_classes: int, W: Array | None = None, b: Array | None = None,
                  *, passes: int = 2, dtype: torch.dtype = torch.float64, device: Any = None,
                  block_size: int | None = None, **report_kw: Any) -> Any:
    """Collapse report of a stream of ``(H_batch (batch, d), labels_batch)`` pairs.

    ``source`` is a callable returning a fresh iterable of batches, or a re-iterable
    (a list, a ``DataLoader``).  With ``passes=2`` (default) it is read twice — a source that
    can be read twice may be read twice — with memory ``O(Kd)``; with ``passes=1`` once, with
    the ``d x d`` scatter.  ``report_kw`` goes to :meth:`CollapseAccumulator.report`.
    """
    if not callable(source):
        if passes == 2 and iter(source) is source:
            raise ValueError("source is a one-shot iterator but passes=2 reads it twice: pass a "
                             "callable returning a fresh iterator, a re-iterable, or passes=1")
        src = source

        def source() -> Iterable:  # noqa: F811 - same data, re-read
            return src

    acc: CollapseAccumulator | None = None
    for p in range(passes):
        for H, y in source():
            if acc is None:
                acc = CollapseAccumulator(num_classes, int(H.shape[1]), W=W, passes=passes,
                                          dtype=dtype, device=device, block_size=block_size)
            acc.update(H, y)
        if acc is None:
            raise ValueError("source yielded no batches")
        if p == 0 and passes == 2:
            acc.next_pass()
    assert acc is not None
    return acc.report(b=b, **report_kw)
