"""A training-time callback: the collapse report every ``every`` epochs, to a CSV and TensorBoard.

For users' own training loops::

    logger = CollapseLogger(every=5, path="nc.csv", tensorboard="runs/nc")
    for epoch in range(epochs):
        train_one_epoch(...)
        if logger.due(epoch):
            H, y = penultimate_features(model, loader)      # (d, N), (N,)
            logger.log(epoch, H, y, model.fc.weight, model.fc.bias)
    logger.close()

or, with a streamed report, ``logger.log_report(epoch, acc.report())``.  The CSV is in long format
(one row per epoch and metric: ``epoch,metric,value``), appended to and flushed at each log, so
a crashed run keeps every epoch logged before the crash.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from gufm.backend import Array
from gufm.collapse.metrics import METRICS, collapse_report

__all__ = ["CollapseLogger"]

_HEADER = ["epoch", "metric", "value"]


class CollapseLogger:
    """Log :func:`gufm.metrics.collapse_report` every ``every`` epochs.

    Parameters
    ----------
    every : int
        Log at the epochs with ``epoch % every == 0`` (:meth:`due`).
    path : str or Path or None
        CSV file (long format ``epoch,metric,value``), appended to; a header is written when the
        file is new or empty.  None: no CSV.
    tensorboard : str or Path or writer or None
        A log directory for ``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard``
        package: ``ImportError`` saying so otherwise), or any object with
        ``add_scalar(tag, value, step)`` (an existing writer).  Scalars are tagged
        ``"collapse/<metric>"``.
    metrics : sequence of str, optional
        Log only these keys of the report (names of :data:`~gufm.collapse.metrics.METRICS`).
    **report_kw
        Passed to :func:`~gufm.collapse.metrics.collapse_report` (``center``, ``lam``,
        ``gufm_reference``, ...).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "nc.csv")
    >>> logger = CollapseLogger(every=2, path=path, metrics=["nc1", "nc3"])
    >>> H, y = np.array([[0., 2., 0., 0.], [0., 0., 4., 6.]]), np.array([0, 0, 1, 1])
    >>> for epoch in range(3):
    ...     if logger.due(epoch):
    ...         _ = logger.log(epoch, H, y, np.eye(2))
    >>> logger.close()
    >>> for line in open(path).read().split()[1:]:   # nc1 = 1/26 exactly, up to rounding
    ...     epoch, name, value = line.split(",")
    ...     print(epoch, name, round(float(value), 12))
    0 nc1 0.038461538462
    0 nc3 0.25
    2 nc1 0.038461538462
    2 nc3 0.25
    >>> open(path).readline().strip()
    'epoch,metric,value'
    """

    def __init__(self, every: int = 1, path: str | os.PathLike | None = "nc.csv",
                 tensorboard: Any = None, *, metrics: Any = None, **report_kw: Any) -> None:
        if isinstance(every, bool) or not isinstance(every, int):
            raise TypeError(f"every must be an int, got {type(every).__name__}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if path is None and tensorboard is None:
            raise ValueError("path and tensorboard are both None: nothing to log to")
        if metrics is not None:
            metrics = [metrics] if isinstance(metrics, str) else list(metrics)
            unknown = [m for m in metrics if m not in METRICS]
            if unknown:
                raise ValueError(f"metrics: unknown names {unknown}; choose from {list(METRICS)}")
        self.every = every
        self.path = None if path is None else Path(path)
        self.metrics = metrics
        self.report_kw = report_kw
        self.writer = self._writer(tensorboard)
        self._own_writer = tensorboard is not None and not hasattr(tensorboard, "add_scalar")
        self.history: list[tuple[int, str, float]] = []

    @staticmethod
    def _writer(tensorboard: Any) -> Any:
        if tensorboard is None or hasattr(tensorboard, "add_scalar"):
            return tensorboard
        if not isinstance(tensorboard, (str, os.PathLike)):
            raise TypeError("tensorboard must be a log directory, a writer with add_scalar, or "
                            f"None; got {type(tensorboard).__name__}")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch's module imports the tensorboard package
            raise ImportError(
                f"tensorboard={str(tensorboard)!r} needs the tensorboard package, which is not "
                "installed: pip install tensorboard (or pass tensorboard=None and log to the "
                "CSV only)") from exc
        return SummaryWriter(log_dir=str(tensorboard))

    def due(self, epoch: int) -> bool:
        """True when ``epoch`` is one to log (``epoch % every == 0``)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise TypeError(f"epoch must be an int, got {type(epoch).__name__}")
        return epoch % self.every == 0

    def log(self, epoch: int, H: Array, labels: Array, W: Array, b: Array | None = None, *,
            ood: Array | None = None) -> dict[str, float] | None:
        """The report of ``H`` (d, N), ``labels``, ``W``, ``b`` at ``epoch`` if :meth:`due`
        (else None, and nothing is computed); returns the logged values."""
        if not self.due(epoch):
            return None
        rep = collapse_report(H, labels, W, b, ood=ood, **self.report_kw)
        return self.log_report(epoch, rep)

    __call__ = log

    def log_report(self, epoch: int, report: dict[str, Any]) -> dict[str, float]:
        """Write an already computed report (e.g. a streamed one) for ``epoch``."""
        self.due(epoch)  # validates epoch
        values = {k: float(v) for k, v in report.items()
                  if self.metrics is None or k in self.metrics}
        if self.path is not None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(_HEADER)
                w.writerows([epoch, k, repr(v)] for k, v in values.items())
                f.flush()
                os.fsync(f.fileno())
        if self.writer is not None:
            for k, v in values.items():
                if math.isfinite(v):
                    self.writer.add_scalar(f"collapse/{k}", v, epoch)
        self.history.extend((epoch, k, v) for k, v in values.items())
        return values

    def close(self) -> None:
        """Flush and close a writer this logger created."""
        if self.writer is not None and self._own_writer:
            self.writer.close()

    def __enter__(self) -> CollapseLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
