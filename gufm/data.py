"""Public alias of :mod:`gufm.deep.data` (``gufm.data.load_dataset``, ``gufm.data.download``)."""

from gufm.deep.data import *  # noqa: F403
from gufm.deep.data import __all__  # noqa: F401
