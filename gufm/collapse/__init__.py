"""Neural-collapse metrics: named NC1 ... NC5 variants, streaming accumulation, GUFM distance.

Modules (each one job): :mod:`~gufm.collapse.stats` (sufficient statistics, the blockwise
two-pass algorithm), :mod:`~gufm.collapse.formulas` (each variant as a formula on them),
:mod:`~gufm.collapse.variants` (the public functions), :mod:`~gufm.collapse.reference` (the
distance to a GUFM optimum), :mod:`~gufm.collapse.metrics` (the registry and the report),
:mod:`~gufm.collapse.streaming` (batches and forward hooks), :mod:`~gufm.collapse.logger`
(a callback for training loops).
"""

from gufm.collapse.logger import CollapseLogger
from gufm.collapse.metrics import METRICS, collapse_report, collapse_stats
from gufm.collapse.streaming import CollapseAccumulator, stream_report

__all__ = ["METRICS", "CollapseAccumulator", "CollapseLogger", "collapse_report", "collapse_stats",
           "stream_report"]
