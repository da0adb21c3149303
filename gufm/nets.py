"""Public alias of :mod:`gufm.deep.nets` (``gufm.nets.make_model``)."""

from gufm.deep.nets import *  # noqa: F403
from gufm.deep.nets import __all__  # noqa: F401
