"""Neural-collapse metrics: named NC1/NC2/NC3 variants, streaming accumulation, GUFM distance."""

from gufm.collapse.metrics import METRICS, collapse_report, collapse_stats
from gufm.collapse.streaming import CollapseAccumulator, stream_report

__all__ = ["METRICS", "CollapseAccumulator", "collapse_report", "collapse_stats", "stream_report"]
