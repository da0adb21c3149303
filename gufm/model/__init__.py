"""The mathematics: the problem statement, losses, objective, dual certificate and geometry.

Nothing here optimises; :mod:`gufm.solvers` builds on it.
"""

from gufm.model.certificate import Certificate, certify
from gufm.model.objective import group_objective, objective
from gufm.model.problem import GUFM

__all__ = ["GUFM", "Certificate", "certify", "group_objective", "objective"]
