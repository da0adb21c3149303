r"""Streaming neural-collapse statistics: memory independent of N, one or two passes over data.

:class:`CollapseAccumulator` takes **row-major batches** ``H_batch`` of shape ``(batch, d)`` —
what data loaders and forward hooks produce — with labels ``(batch,)``, and accumulates the
sufficient statistics of :class:`gufm.collapse.stats.CollapseStats`.  Its
:meth:`~CollapseAccumulator.report` evaluates the very same formulas as
:func:`gufm.metrics.collapse_report` (which takes ``(d, N)`` columns) and by the same
algorithm (:class:`gufm.collapse.stats.StatsEngine`), so the numbers agree to rounding (tested:
1e-10 in float64).

Two modes
---------
``passes=1`` (default)
    One pass; keeps the ``d x d`` within-class scatter (memory :math:`O(d^2 + Kd)`, cost
    :math:`O(d^2)` per sample, a matrix product).  Usable from a forward hook during training.
``passes=2``
    Two passes over the same data (a source that can be read twice may be read twice).  The
    first accumulates class counts and class sums (shifted by one common vector);
    :meth:`~CollapseAccumulator.next_pass` fixes the class means and an orthonormal basis
    :math:`Q` (``d x min(d, K-1)``) of the span of the centred means; the second accumulates
    the squared norms of :math:`h_i - \mu_{y_i}`, the projections :math:`Q^\top(h_i - \mu_{y_i})`
    and their ``(K-1) x (K-1)`` scatter — all that NC1 needs (:math:`u^\top\Sigma_W u` for
    :math:`u` in that span) — the cosines and the two decisions of NC4.
    Memory :math:`O(Kd)`, cost :math:`O(d\min(d, K))` per sample.

NC3 and NC4 need the classifier during the pass: give ``W`` (and ``b``) to the constructor (or,
with ``passes=2``, to :meth:`~CollapseAccumulator.next_pass`); without it ``nc3`` and ``nc4`` are
left out of the report, and another pass with ``W`` is needed.  NC4 compares the classifier's
decision with the nearest class centre, which needs the final class means: it is computed in the
second pass of ``passes=2`` only.  NC5 needs out-of-distribution features: feed them once with
:meth:`~CollapseAccumulator.update_ood` (only their sum is kept).

Numerics
--------
Statistics are accumulated in ``dtype`` (float64 by default) on ``device``; each batch is cut
into blocks of ``block_size`` rows whose products run in the batch's own precision (float32
batches stay float32 for the matrix products, summed across blocks in float64).  Within-class
quantities use **shifted sums**: every sample is centred by a shift :math:`c_k` close to its
class mean before summing or squaring (with ``passes=1`` the mean of the class in the first
block that contains it; in the second pass of ``passes=2`` the first-pass mean rounded to the
batch's precision), and the exact shift correction

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

from gufm.backend import Array, is_torch
from gufm.collapse._checks import check_center, labels_tensor
from gufm.collapse.metrics import report_from_stats
from gufm.collapse.stats import CollapseStats, StatsEngine

__all__ = ["CollapseAccumulator", "stream_report"]


def _to_tensor(x: Array, name: str) -> torch.Tensor:
    if is_torch(x):
        return x.detach()
    a = np.asarray(x)
    if a.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype object")
    with warnings.catch_warnings():  # read-only memmaps: we never write into them
        warnings.simplefilter("ignore", UserWarning)
        return torch.as_tensor(a)


class CollapseAccumulator(StatsEngine):
    """Accumulate neural-collapse statistics batch by batch (see the module docstring).

    Parameters
    ----------
    num_classes : int
        K >= 2.
    dim : int
        Feature dimension d.
    W : array (K, d), optional
        Classifier, needed during the pass for ``nc3`` (and, in the second pass, ``nc4``).
    b : array (K,), optional
        Bias of the classifier's decision in ``nc4``.
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
        ``min(8192, max(256, 2**22 // d))`` rows for ``passes=1`` and ``max(256, 2**20 // d)``
        for both passes of ``passes=2`` (cache-resident: several operations read each block);
        on GPUs ``max(2048, 2**25 // d)`` (fewer kernel launches).  Class sums of a block are a
        scatter into a per-block ``(K, d)`` buffer on CPUs (an indicator-matrix product on GPUs
        for K <= 64), and a direct scatter into the accumulator when K exceeds the block.

    Examples
    --------
    >>> import numpy as np
    >>> acc = CollapseAccumulator(2, 2, W=np.eye(2), passes=2)
    >>> H, y = np.array([[0., 0.], [2., 0.], [0., 4.], [0., 6.]]), np.array([0, 0, 1, 1])
    >>> for p in range(2):
    ...     acc.update(H[:2], y[:2]); acc.update(H[2:], y[2:])
    ...     if p == 0:
    ...         acc.next_pass()
    >>> rep = acc.report()
    >>> round(rep["nc1"] * 26, 12), rep["nc3"], rep["nc4"]
    (1.0, 0.25, 0.0)

    From a forward hook::

        acc = CollapseAccumulator(K, d, W=model.fc.weight)
        handle = acc.hook(model.penultimate)
        for x, y in loader:
            with acc.labels(y):
                model(x)
        handle.remove(); acc.report()
    """

    def __init__(self, num_classes: int, dim: int, *, W: Array | None = None,
                 b: Array | None = None, passes: int = 1, dtype: torch.dtype = torch.float64,
                 device: Any = None, block_size: int | None = None) -> None:
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
        super().__init__(int(num_classes), int(dim), passes=passes, dtype=dtype, device=device,
                         block_size=block_size, name="H_batch")
        self._numpy_out = False  # report python floats when the data came as numpy
        self._pending: Any = None
        if W is not None:
            self.set_classifier(self._check_W(W), self._check_b(b))
        elif b is not None:
            raise ValueError("b was given without W")

    # ----------------------------------------------------------------------------- set-up
    def _check_W(self, W: Array) -> torch.Tensor:
        Wt = _to_tensor(W, "W")
        if Wt.ndim != 2 or tuple(Wt.shape) != (self.K, self.d):
            raise ValueError(f"W must have shape (K, d) = ({self.K}, {self.d}), got "
                             f"{tuple(Wt.shape)}")
        if not torch.isfinite(Wt).all():
            raise ValueError("W contains NaN or inf")
        return Wt

    def _check_b(self, b: Array | None) -> torch.Tensor | None:
        if b is None:
            return None
        bt = _to_tensor(b, "b")
        if tuple(bt.shape) != (self.K,):
            raise ValueError(f"b must have shape (K,) = ({self.K},), got {tuple(bt.shape)}")
        if not bool(torch.isfinite(bt).all()):
            raise ValueError("b contains NaN or inf")
        return bt

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
            o = output if transform is None else transform(output)
            if not is_torch(o):
                raise ValueError("hooked module output must be a tensor; pass transform= to "
                                 "extract it")
            if self._pending is None:
                raise ValueError("labels: no labels set for this forward call; use "
                                 "acc.set_labels(y) or `with acc.labels(y):` before model(x)")
            y, self._pending = self._pending, None
            self.update(o.detach().reshape(o.shape[0], -1), y)

        return module.register_forward_hook(_hook)

    # ----------------------------------------------------------------------------- updates
    def _rows(self, H_batch: Array, name: str) -> torch.Tensor:
        H = _to_tensor(H_batch, name)
        if H.ndim != 2 or H.shape[1] != self.d:
            hint = (" (features are rows here; pass H.T if yours are columns)"
                    if H.ndim == 2 and H.shape[0] == self.d else "")
            raise ValueError(f"{name} must have shape (batch, d) = (B, {self.d}), got "
                             f"{tuple(H.shape)}{hint}")
        if H.is_complex():
            raise ValueError(f"{name} must be real, got {H.dtype}")
        if not self._ready:
            self._numpy_out = not is_torch(H_batch)
            self._init_state(H if H.is_floating_point() else H.to(torch.float64))
        return H.to(device=self.device, dtype=self._work)

    def update(self, H_batch: Array, labels_batch: Array) -> None:
        """Add a batch: ``H_batch`` of shape ``(batch, d)`` (**rows are samples**), labels
        ``(batch,)`` in ``0..K-1``.  numpy arrays or torch tensors (any device; moved to
        ``device``)."""
        H = self._rows(H_batch, "H_batch")
        y = self._check_labels(labels_batch, H.shape[0])
        self.add(H, y)

    def update_ood(self, H_batch: Array) -> None:
        """Add a batch of out-of-distribution features ``(batch, d)`` for ``nc5`` (feed each
        OOD sample once, in either pass)."""
        self.add_ood(self._rows(H_batch, "ood"))

    def _check_labels(self, labels: Array, B: int) -> torch.Tensor:
        return labels_tensor(labels, B, self.K, self.device, "labels_batch", allow_empty=True)[0]

    # ----------------------------------------------------------------------------- passes
    def next_pass(self, W: Array | None = None, b: Array | None = None) -> None:
        """End the first pass of a ``passes=2`` accumulator; feed the same data again next.

        Fixes the class means and the orthonormal basis :math:`Q` (``d x min(d, K-1)``) of the
        span of the centred means.  ``W`` and ``b`` (optional) are the classifier for ``nc3``
        and ``nc4`` if they were not given to the constructor.
        """
        if self.passes != 2:
            raise ValueError("next_pass() is for passes=2 accumulators")
        if self._pass != 1:
            raise ValueError("next_pass() was already called")
        if not self._ready:
            raise ValueError("next_pass(): no data seen in the first pass")
        if W is not None:
            if self._W is not None:
                raise ValueError("W was already given to the constructor")
            self.set_classifier(self._check_W(W), self._check_b(b))
        elif b is not None:
            raise ValueError("b was given without W")
        super().next_pass()

    # ----------------------------------------------------------------------------- results
    @property
    def num_samples(self) -> int:
        """Samples seen in the current pass."""
        if not self._ready:
            return 0
        return int((self._n2 if self._pass == 2 else self._n).sum())

    def stats(self, like: Array | None = None) -> CollapseStats:  # type: ignore[override]
        """The accumulated :class:`~gufm.collapse.stats.CollapseStats` (float ``dtype``).

        Arrays are numpy when ``like`` is numpy (or, without ``like``, when the batches were
        numpy), else torch tensors on ``device``.
        """
        if not self._ready:
            raise ValueError("no data: call update() first")
        if self.passes == 2 and self._pass == 1:
            raise ValueError("passes=2: call next_pass() and feed the data a second time first")
        return super().stats(numpy=(not is_torch(like)) if like is not None else self._numpy_out)

    def report(self, W: Array | None = None, b: Array | None = None, *, center: str = "samples",
               as_frame: bool = False, gufm_reference: Any = None, lam: float | None = None,
               loss: str = "ce", lam_b: float | None = None, features: str = "layernorm") -> Any:
        """The metrics of :func:`gufm.metrics.collapse_report` from the accumulated data.

        ``W`` defaults to the classifier given before; if both are given they must be equal
        (the cosines were accumulated with the first), and so must ``b``.  Without any ``W``
        only the ``W``-free metrics are reported; with a ``W`` (or a ``b``) that was not there
        during the pass, ``nc3`` and ``nc4`` are left out (another pass is needed).  Values are
        python floats for numpy ``W`` (or numpy batches without ``W``), 0-d ``dtype`` tensors
        otherwise.
        """
        check_center(center)
        like = None
        late = False
        if W is not None:
            Wt = self._check_W(W)
            if self._W is not None and not torch.equal(
                    Wt.to(dtype=self.dtype, device=self.device), self._W):
                raise ValueError("W differs from the classifier the cosines were accumulated "
                                 "with")
            late = self._W is None
            like = W
        elif self._W is not None:
            W = self._W.cpu().numpy() if self._numpy_out else self._W
            like = np.zeros(0) if self._numpy_out else self._W
        bt = self._check_b(b)
        if bt is not None and self._W is not None:
            same = self._b is not None and torch.equal(
                bt.to(dtype=self.dtype, device=self.device), self._b)
            if self._b is not None and not same:
                raise ValueError("b differs from the bias the decisions were accumulated with")
            late = late or not same
        st = self.stats(like)
        if late:  # the cosines and decisions of the pass do not belong to this W / b
            st = CollapseStats(counts=st.counts, means=st.means, within_ss=st.within_ss,
                               quad=st.quad, ood_sum=st.ood_sum, ood_count=st.ood_count)
        return report_from_stats(st, W, center=center, as_frame=as_frame,
                                 gufm_reference=gufm_reference, lam=lam, loss=loss, lam_b=lam_b,
                                 features=features)


def stream_report(source: Any, num_classes: int, W: Array | None = None, b: Array | None = None,
                  *, passes: int = 2, dtype: torch.dtype = torch.float64, device: Any = None,
                  block_size: int | None = None, ood: Any = None, **report_kw: Any) -> Any:
    """Collapse report of a stream of ``(H_batch (batch, d), labels_batch)`` pairs.

    ``source`` is a callable returning a fresh iterable of batches, or a re-iterable
    (a list, a ``DataLoader``).  With ``passes=2`` (default) it is read twice — a source that
    can be read twice may be read twice — with memory ``O(Kd)``; with ``passes=1`` once, with
    the ``d x d`` scatter (and no ``nc4``).  ``ood``: an iterable of out-of-distribution batches
    ``(batch, d)`` for ``nc5``, read once.  ``report_kw`` goes to
    :meth:`CollapseAccumulator.report`.

    Examples
    --------
    >>> import numpy as np
    >>> batches = [(np.array([[0., 0.], [2., 0.]]), [0, 0]), (np.array([[0., 4.], [0., 6.]]), [1, 1])]
    >>> round(stream_report(batches, 2, np.eye(2))["nc1_trace_ratio"] * 13, 12)
    2.0
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
                acc = CollapseAccumulator(num_classes, int(H.shape[1]), W=W, b=b, passes=passes,
                                          dtype=dtype, device=device, block_size=block_size)
            acc.update(H, y)
        if acc is None:
            raise ValueError("source yielded no batches")
        if p == 0 and passes == 2:
            acc.next_pass()
    assert acc is not None
    for Ho in ood if ood is not None else ():
        acc.update_ood(Ho)
    return acc.report(b=b, **report_kw)
