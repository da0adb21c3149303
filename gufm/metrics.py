"""Public alias of :mod:`gufm.collapse.metrics` (``gufm.metrics.collapse_report``)."""

from gufm.collapse.metrics import *  # noqa: F403
from gufm.collapse.metrics import __all__  # noqa: F401
