r"""Building blocks of the paper's networks: affine-free LayerNorm, attention, residual blocks.

Two affine-free LayerNorms are used.  Inside the network (after the embedding and in the
blocks) the standard one, :math:`\operatorname{LN}_\varepsilon(x) = (x-\bar x)/
\sqrt{\operatorname{var}(x) + \varepsilon}` (:func:`torch.nn.functional.layer_norm`,
``eps = ln_eps``, default ``1e-5``).  Before the classifier the *exact* one of the GUFM feature
model (docs/problem.md, section 3), which is ``eps = 0``:

.. math::

    \operatorname{LN}(x) = \sqrt d\, \frac{x - \bar x\mathbf 1}{\lVert x - \bar x \mathbf 1\rVert},
    \qquad \bar x = \tfrac1d \mathbf 1^\top x,

i.e. :class:`torch.nn.LayerNorm` without affine parameters in the limit ``eps -> 0``.  Its output
lies exactly on the sphere of radius :math:`\sqrt d` in :math:`\mathbf 1^\perp`.  The norm is
computed as :math:`\sqrt{\max(\lVert x-\bar x\rVert^2, \tau^2)}` with a tiny :math:`\tau`, so a
zero input maps to zero instead of NaN (the only point where the formula is undefined).
``ln_eps=0`` uses the exact LayerNorm everywhere; it is singular at inputs
:math:`x \approx \bar x\mathbf 1`, which an optimiser can exploit (a training sample whose
embedding sits there can be given any feature at almost no cost), so the default keeps the
standard ``eps`` inside the network.

Blocks (width ``d``; no biases; every matrix is a parameter and is regularised by the trainer):

(``LN`` below is :math:`\operatorname{LN}_\varepsilon`.)

* :class:`RN1Block`  (L-RN1):  :math:`x \leftarrow \operatorname{LN}(x + V\,\mathrm{relu}(x))`
* :class:`RN2Block`  (L-RN2):  :math:`x \leftarrow \operatorname{LN}(x + V_2\,\mathrm{relu}(V_1 x))`
* :class:`PostLNBlock` (L-T11 / L-T12): :math:`x \leftarrow \operatorname{LN}(x + \mathrm{Attn}(x))`,
  :math:`x \leftarrow \operatorname{LN}(x + \mathrm{MLP}(x))`
* :class:`PreLNBlock` (pre-LN L-T11): :math:`x \leftarrow x + \mathrm{Attn}(\operatorname{LN}(x))`,
  :math:`x \leftarrow x + \mathrm{MLP}(\operatorname{LN}(x))`

with the one-layer MLP :math:`V\,\mathrm{relu}(x)` (``mlp_layers=1``) or the two-layer
:math:`V_2\,\mathrm{relu}(V_1 x)` (``mlp_layers=2``), and single-head attention with query/key
matrices and one merged value-output matrix :math:`V_{O}`:

.. math::

    \mathrm{Attn}(X) = \operatorname{softmax}\!\Big(\frac{(X Q^\top)(X K^\top)^\top}{\sqrt d}
    + M\Big)\, X V_O^\top

for tokens ``X`` of shape ``(T, d)`` and a key mask ``M`` (``-inf`` at padding).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: floor of the centred norm inside :func:`sphere_layernorm` (avoids 0/0 at x = mean * 1)
NORM_FLOOR = 1e-30

#: per thread: when ``.norms`` is a list, every LayerNorm call of that thread appends the
#: centred norms of its input rows (:func:`record_layernorm_inputs`)
_RECORD = threading.local()


@contextlib.contextmanager
def record_layernorm_inputs() -> Iterator[list[Tensor]]:
    r"""Collect, for every LayerNorm call inside the block, the centred norms
    :math:`\lVert x - \bar x\mathbf 1\rVert` of its input rows, shape ``x.shape[:-1]``
    (detached): what :mod:`gufm.deep.conditioning` reads.  Only the calling thread's calls
    are recorded.

    Examples
    --------
    >>> import torch
    >>> with record_layernorm_inputs() as norms:
    ...     _ = sphere_layernorm(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
    >>> norms[0].tolist()
    [1.4142135381698608, 0.0]
    """
    previous = getattr(_RECORD, "norms", None)
    _RECORD.norms = norms = []
    try:
        yield norms
    finally:
        _RECORD.norms = previous


def _record(x: Tensor) -> None:
    norms = getattr(_RECORD, "norms", None)
    if norms is not None:
        xc = x.detach() - x.detach().mean(dim=-1, keepdim=True)
        norms.append(torch.linalg.vector_norm(xc, dim=-1))


#: per thread: ``.inputs`` (a list: every relu call of that thread appends its detached input)
#: and ``.slopes`` (``{call: (mask, value)}``: the derivative taken at those entries), read by
#: :func:`relu`
_RELU = threading.local()


@contextlib.contextmanager
def record_relu_inputs(slopes: dict[int, tuple[Tensor, Tensor]] | None = None
                       ) -> Iterator[list[Tensor]]:
    r"""Collect the input of every relu call inside the blocks (detached, in call order), and
    optionally choose the relu's derivative at some entries: what :mod:`gufm.deep.kinks` reads.

    Parameters
    ----------
    slopes : dict, optional
        ``{call: (mask, value)}``: at call ``call`` (its index in the forward pass), the
        entries where the boolean ``mask`` is set are computed as :math:`z\,s` with the given
        ``value`` :math:`s\in[0, 1]` (a tensor broadcast to the masked entries) instead of
        :math:`\mathrm{relu}(z) = z\,\mathbf 1[z > 0]`.  At a kink (:math:`z = 0`) the value
        is unchanged and the gradient is the one-sided derivative :math:`s` (any element of
        the subdifferential :math:`[0, 1]`); elsewhere the value moves by
        :math:`z\,(s - \mathbf 1[z>0])`.  ``value`` broadcasts to the input's shape (a
        scalar, or a full tensor of which the masked entries are used).

    Only the calling thread's calls are affected.

    Examples
    --------
    >>> import torch
    >>> z = torch.tensor([[0.0, -1.0, 2.0]], requires_grad=True)
    >>> with record_relu_inputs({0: (torch.tensor([[True, False, False]]), torch.tensor(1.0))}
    ...                         ) as inputs:
    ...     relu(z).sum().backward()
    >>> inputs[0].tolist(), z.grad.tolist()
    ([[0.0, -1.0, 2.0]], [[1.0, 0.0, 1.0]])
    """
    previous = (getattr(_RELU, "inputs", None), getattr(_RELU, "slopes", None))
    _RELU.inputs = inputs = []
    _RELU.slopes = slopes or {}
    try:
        yield inputs
    finally:
        _RELU.inputs, _RELU.slopes = previous


def relu(x: Tensor) -> Tensor:
    r""":func:`torch.relu`, recorded (and its derivative chosen at given entries) inside
    :func:`record_relu_inputs`.

    Examples
    --------
    >>> import torch
    >>> relu(torch.tensor([-1.0, 0.5])).tolist()
    [0.0, 0.5]
    """
    inputs = getattr(_RELU, "inputs", None)
    if inputs is None:
        return torch.relu(x)
    call = len(inputs)
    inputs.append(x.detach())
    chosen = _RELU.slopes.get(call)
    if chosen is None:
        return torch.relu(x)
    mask, value = chosen
    s = torch.where(mask, value.to(x.dtype), (x > 0).to(x.dtype))
    return x * s


def sphere_layernorm(x: Tensor, radius: float | None = None) -> Tensor:
    r"""Affine-free LayerNorm with ``eps = 0``: :math:`\rho (x - \bar x)/\lVert x - \bar x\rVert`.

    Parameters
    ----------
    x : Tensor, shape (..., d)
    radius : float, optional
        :math:`\rho`; default :math:`\sqrt d` (what :class:`torch.nn.LayerNorm` gives as
        ``eps -> 0``).

    Returns
    -------
    Tensor of the same shape, every row with mean 0 and norm ``radius`` (rows equal to a
    multiple of the all-ones vector map to 0, with a zero gradient).

    Examples
    --------
    >>> import torch
    >>> h = sphere_layernorm(torch.tensor([[1.0, 2.0, 3.0, 6.0]]))
    >>> round(float(h.sum()), 6), round(float(h.norm()), 6)
    (0.0, 2.0)
    """
    _record(x)
    d = x.shape[-1]
    rho = math.sqrt(d) if radius is None else float(radius)
    xc = x - x.mean(dim=-1, keepdim=True)
    sq = (xc * xc).sum(dim=-1, keepdim=True)
    # a row at the singular set (centred norm at most the floor) maps to 0 with a zero
    # gradient: clamping alone gave it a gradient of 1/NORM_FLOOR, which overflows Adam's
    # second moment and turns the whole network into NaN (one all-zero input did that)
    ok = sq > max(NORM_FLOOR**2, torch.finfo(sq.dtype).tiny)
    inv = torch.where(ok, torch.rsqrt(torch.where(ok, sq, torch.ones_like(sq))), 0.0)
    return xc * (rho * inv)


def layernorm(x: Tensor, eps: float) -> Tensor:
    r"""Affine-free LayerNorm over the last axis: :math:`(x-\bar x)/\sqrt{\operatorname{var}(x)
    + \varepsilon}` for ``eps > 0``, :func:`sphere_layernorm` for ``eps = 0``.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    >>> layernorm(x, 0.0).tolist(), [round(v, 4) for v in layernorm(x, 1.0)[0].tolist()]
    ([[-1.0, 1.0]], [-0.7071, 0.7071])
    """
    if eps > 0:
        _record(x)
        return F.layer_norm(x, (x.shape[-1],), eps=eps)
    return sphere_layernorm(x)


class SphereLayerNorm(nn.Module):
    """Module form of :func:`sphere_layernorm` (no parameters).

    Examples
    --------
    >>> import torch
    >>> SphereLayerNorm(2)(torch.tensor([[0.0, 4.0]], dtype=torch.float64)).tolist()
    [[-1.0, 1.0]]
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = int(dim)

    def forward(self, x: Tensor) -> Tensor:
        return sphere_layernorm(x)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, radius=sqrt(dim), affine=False, eps=0"


def _linear(d_in: int, d_out: int) -> nn.Linear:
    return nn.Linear(d_in, d_out, bias=False)


class MLP(nn.Module):
    r"""``V relu(x)`` (one layer) or ``V2 relu(V1 x)`` (two layers), no biases.

    Examples
    --------
    >>> import torch
    >>> MLP(4, 2)(torch.zeros(3, 4)).shape
    torch.Size([3, 4])
    """

    def __init__(self, width: int, layers: int = 1, hidden: int | None = None) -> None:
        super().__init__()
        if layers not in (1, 2):
            raise ValueError(f"mlp_layers must be 1 or 2, got {layers!r}")
        self.layers = layers
        if layers == 1:
            self.V = _linear(width, width)
        else:
            h = width if hidden is None else int(hidden)
            self.V1 = _linear(width, h)
            self.V2 = _linear(h, width)

    def forward(self, x: Tensor) -> Tensor:
        if self.layers == 1:
            return self.V(relu(x))
        return self.V2(relu(self.V1(x)))


class Attention(nn.Module):
    r"""Single-head self-attention with query ``Q``, key ``K`` and merged value-output ``V_O``.

    :math:`\mathrm{Attn}(X) = \operatorname{softmax}(X Q^\top K X^\top/\sqrt d + M)\, X V_O^\top`,
    bidirectional (no causal mask); ``key_mask`` (B, T) with True at real tokens masks padding.

    Examples
    --------
    >>> import torch
    >>> Attention(4)(torch.randn(2, 5, 4)).shape
    torch.Size([2, 5, 4])
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.Q = _linear(width, width)
        self.K = _linear(width, width)
        self.VO = _linear(width, width)
        self.scale = 1.0 / math.sqrt(width)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        scores = (self.Q(x) @ self.K(x).transpose(-1, -2)) * self.scale  # (B, T, T)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
        return torch.softmax(scores, dim=-1) @ self.VO(x)


class RN1Block(nn.Module):
    r"""L-RN1 block: :math:`x \leftarrow \operatorname{LN}(x + V\,\mathrm{relu}(x))`.

    Examples
    --------
    >>> import torch
    >>> y = RN1Block(4)(torch.randn(3, 4))
    >>> bool(y.mean(dim=1).abs().max() < 1e-6)
    True
    """

    def __init__(self, width: int, ln_eps: float = 1e-5) -> None:
        super().__init__()
        self.mlp = MLP(width, 1)
        self.ln_eps = ln_eps

    def forward(self, x: Tensor) -> Tensor:
        return layernorm(x + self.mlp(x), self.ln_eps)


class RN2Block(nn.Module):
    r"""L-RN2 block: :math:`x \leftarrow \operatorname{LN}(x + V_2\,\mathrm{relu}(V_1 x))`.

    Examples
    --------
    >>> import torch
    >>> RN2Block(4, hidden=6)(torch.randn(3, 4)).shape
    torch.Size([3, 4])
    """

    def __init__(self, width: int, hidden: int | None = None, ln_eps: float = 1e-5) -> None:
        super().__init__()
        self.mlp = MLP(width, 2, hidden)
        self.ln_eps = ln_eps

    def forward(self, x: Tensor) -> Tensor:
        return layernorm(x + self.mlp(x), self.ln_eps)


class _TransformerBlock(nn.Module):
    """Shared parameters of the transformer blocks: one :class:`Attention` and one :class:`MLP`
    of ``width``; subclasses define where the LayerNorm goes in ``forward``."""

    def __init__(self, width: int, mlp_layers: int = 1, hidden: int | None = None,
                 ln_eps: float = 1e-5) -> None:
        super().__init__()
        self.attn = Attention(width)
        self.mlp = MLP(width, mlp_layers, hidden)
        self.ln_eps = ln_eps


class PostLNBlock(_TransformerBlock):
    r"""Post-LN transformer block (L-T11 with ``mlp_layers=1``, L-T12 with 2).

    :math:`x \leftarrow \operatorname{LN}(x + \mathrm{Attn}(x))`, then
    :math:`x \leftarrow \operatorname{LN}(x + \mathrm{MLP}(x))`.

    Examples
    --------
    >>> import torch
    >>> PostLNBlock(4)(torch.randn(2, 5, 4)).shape
    torch.Size([2, 5, 4])
    """

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = layernorm(x + self.attn(x, key_mask), self.ln_eps)
        return layernorm(x + self.mlp(x), self.ln_eps)


class PreLNBlock(_TransformerBlock):
    r"""Pre-LN transformer block (pre-LN L-T11 with ``mlp_layers=1``).

    :math:`x \leftarrow x + \mathrm{Attn}(\operatorname{LN}(x))`, then
    :math:`x \leftarrow x + \mathrm{MLP}(\operatorname{LN}(x))`; the model applies the final LN.

    Examples
    --------
    >>> import torch
    >>> PreLNBlock(4, mlp_layers=2)(torch.randn(2, 5, 4)).shape
    torch.Size([2, 5, 4])
    """

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(layernorm(x, self.ln_eps), key_mask)
        return x + self.mlp(layernorm(x, self.ln_eps))
