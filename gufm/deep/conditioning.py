r"""Distance of the training samples to the LayerNorm singularity.

LayerNorm divides by the centred norm of its input, :math:`\lVert x - \bar x\mathbf 1\rVert`.
In the paper's networks every operation between two LayerNorms is positively homogeneous per
sample (bias-free linear maps, relu, residual sums), an inner :math:`\operatorname{LN}_\varepsilon`
only rescales a sample, and the last LayerNorm is exact.  So a sample whose centred input to
*some* LayerNorm is tiny compared with the other samples' has a feature direction set by that
tiny vector: moving the parameters by :math:`\delta` turns its feature by about
:math:`\delta / r`, where ``r`` is its relative centred norm, and the curvature of the objective
grows like :math:`1/r^2`.  The training objective rewards this: a sample placed near the
singular set (for a ResNet: :math:`E x_i \in \operatorname{span}(\mathbf 1)`, a linear
condition on the embedding) can be given almost any feature.  Measured on L-RN1 (digits,
width 32, N = 300, defaults; ``python -m benchmarks.singular``): at L = 2 and L = 8 one
sample's centred embedding is 1.7e-6 and 4.8e-6 of the median, the curvature of the objective
along the gradient is 1.7e8 and 6.3e6, and the L-BFGS polish stops with a gradient norm of
2e-3 and 7e-4 with no relu input within 1e-8 of its kink relative to its sample (the kinks
matter later, on the singular limit: :mod:`gufm.deep.kinks`).

:func:`layernorm_margin` measures it: for every LayerNorm call of a forward pass, each input
row's centred norm divided by the median over the rows of that call; the smallest ratio, the
sample and the call it belongs to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gufm.deep.nets.blocks import record_layernorm_inputs
from gufm.deep.objective import chunks

__all__ = ["LN_MARGIN_FLAG", "LayerNormMargin", "layernorm_margin", "layernorm_ratios"]

#: a relative centred norm below this flags a sample as near the LayerNorm singularity
LN_MARGIN_FLAG = 1e-3


@dataclass(frozen=True)
class LayerNormMargin:
    """Smallest relative centred input norm over the LayerNorm calls of a forward pass.

    Attributes
    ----------
    ratio : float
        :math:`\\min` over calls and rows of the row's centred norm over the call's median.
    sample : int
        The sample of that row.
    call : int
        Index of that LayerNorm call in the forward pass (0: the embedding's).
    calls : int
        LayerNorm calls in a forward pass.

    Examples
    --------
    >>> LayerNormMargin(1e-6, 263, 0, 3).flagged
    True
    """

    ratio: float
    sample: int
    call: int
    calls: int

    @property
    def flagged(self) -> bool:
        """``ratio < LN_MARGIN_FLAG``."""
        return self.ratio < LN_MARGIN_FLAG

    def describe(self) -> str:
        """One clause for a stop reason."""
        return (f"sample {self.sample} is near the LayerNorm singularity (centred input "
                f"{self.ratio:.1e} of the median at LayerNorm call {self.call} of "
                f"{self.calls}): its feature turns with tiny parameter changes and the "
                "objective's curvature grows like 1/ratio^2 there")


@torch.no_grad()
def layernorm_ratios(model: nn.Module, X: Tensor, chunk_size: int | None = None
                     ) -> list[Tensor]:
    """For every LayerNorm call of a forward pass, each sample's relative centred input norm:
    the smallest centred norm of its rows over the median of all rows of that call, float64,
    shape ``(N,)`` (``inf`` for a call whose median is 0).  Call 0 is the embedding's.

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> m = make_model("rn1", 2, 8, (1, 2, 2), 3, seed=0)
    >>> X = torch.randn(20, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    >>> X[7] = 0.0
    >>> r = layernorm_ratios(m, X)
    >>> len(r), int(r[0].argmin()), float(r[0][7])
    (4, 7, 0.0)
    """
    was_training = model.training
    model.eval()
    parts: list[list[Tensor]] = []
    try:
        for sl in chunks(X.shape[0], chunk_size):
            with record_layernorm_inputs() as norms:
                model(X[sl])
            parts.append([n.reshape(n.shape[0], -1) for n in norms])  # (batch, rows/sample)
    finally:
        model.train(was_training)
    out = []
    for c in range(len(parts[0]) if parts else 0):
        n = torch.cat([p[c] for p in parts]).double()  # (N, rows per sample)
        med = float(n.median())
        out.append(n.min(dim=1).values / med if med > 0
                   else torch.full((n.shape[0],), math.inf, dtype=n.dtype))
    return out


def layernorm_margin(model: nn.Module, X: Tensor, chunk_size: int | None = None
                     ) -> LayerNormMargin:
    """:class:`LayerNormMargin` of ``model`` on the samples ``X`` (module docstring): the
    smallest of :func:`layernorm_ratios`.

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> m = make_model("rn1", 2, 8, (1, 2, 2), 3, seed=0)
    >>> X = torch.randn(20, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    >>> healthy = layernorm_margin(m, X)
    >>> healthy.calls, healthy.flagged
    (4, False)
    >>> X[7] = 0.0                                   # a sample at the singular set itself
    >>> layernorm_margin(m, X).sample
    7
    """
    ratios = layernorm_ratios(model, X, chunk_size)
    best = (float("inf"), -1, -1)
    for c, per_sample in enumerate(ratios):
        i = int(per_sample.argmin())
        r = float(per_sample[i])
        if r < best[0]:
            best = (r, i, c)
    return LayerNormMargin(best[0], best[1], best[2], len(ratios))
