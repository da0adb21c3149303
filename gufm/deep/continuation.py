r"""Depth continuation: deepen a trained network by splitting its blocks.

Every block of the paper's networks adds residual branches that are **linear in their last
matrix** :math:`M` (L-RN1: :math:`r(x) = V\,\mathrm{relu}(x)`, :math:`M = V`; L-RN2 and the
two-layer MLPs: :math:`V_2\,\mathrm{relu}(V_1 x)`, :math:`M = V_2`; attention:
:math:`\operatorname{softmax}(\cdot)\,X V_O^\top`, :math:`M = V_O`).  Splitting a block into
:math:`k` consecutive copies whose last matrices are :math:`M/k` (everything else copied)
keeps the function **to first order in the branches**:

* post-LN / ResNet block :math:`x \leftarrow N(x + r(x))` with :math:`N(x) = \beta x` on the
  image of :math:`N` (:math:`\beta > 0`; exactly 1 for the exact LayerNorm, and positive
  per-sample scales do not change a ResNet's features, see
  :meth:`gufm.deep.nets.GUFMNet.scale_invariant_groups`):
  :math:`N(x + r/k) = \beta x + \beta\,DN\,r/k + O(\lVert r\rVert^2)`, and :math:`k` of them
  compose to :math:`\beta^k x + \beta^k DN\,r(x) + O(\lVert r\rVert^2)`, which is the original
  :math:`N(x + r(x))` up to the positive factor and :math:`O(\lVert r\rVert^2)`;
* pre-LN block :math:`x \leftarrow x + r(N(x))`: :math:`k` copies give
  :math:`x + r(N(x)) + O(\lVert r\rVert^2)`.

So the second-order remainder shrinks by 4 when the branches are halved (what the tests
check).  The last matrices' penalty :math:`\tfrac\lambda2\lVert M\rVert^2` falls to
:math:`\tfrac\lambda{2k}\lVert M\rVert^2` in total; the copied matrices (``Q``, ``K``, ``V1``)
count :math:`k` times.  A two-layer MLP is also rebalanced: each copy gets
:math:`(aV_1, V_2/(ka))` with :math:`a = \sqrt{\lVert V_2\rVert/(k\lVert V_1\rVert)}`, which
keeps its output :math:`V_2\,\mathrm{relu}(V_1x)/k` exactly (ReLU is positively homogeneous)
and minimises :math:`\lVert aV_1\rVert^2 + \lVert V_2/(ka)\rVert^2` (to
:math:`2\lVert V_1\rVert\lVert V_2\rVert/k`).

From depth :math:`L` to :math:`L' \ge L`: block :math:`l` is split into :math:`k_l` copies,
:math:`k_l = \lfloor L'/L\rfloor` plus one for the :math:`L' \bmod L` blocks with the largest
last-matrix norm, so :math:`\sum_l k_l = L'`.  See docs/training.md, section 6.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from gufm.deep.nets import make_model

#: the names of the matrices a residual branch is linear in, per sub-module
LAST_MATRICES = ("mlp.V.weight", "mlp.V2.weight", "attn.VO.weight")


def _last_sq_norm(block: nn.Module) -> float:
    sd = block.state_dict()
    return sum(float((sd[k].double() ** 2).sum()) for k in LAST_MATRICES if k in sd)


def split_counts(norms: list[float], depth: int) -> list[int]:
    r"""How many copies :math:`k_l` each block becomes (module docstring).

    Parameters
    ----------
    norms : list of float
        A size (e.g. the last matrices' squared norm) of each of the :math:`L` blocks.
    depth : int
        :math:`L' \ge L`.

    Examples
    --------
    >>> split_counts([1.0, 3.0, 2.0], 7)
    [2, 3, 2]
    """
    L = len(norms)
    if L < 1 or isinstance(depth, bool) or not isinstance(depth, int) or depth < L:
        raise ValueError(f"depth must be an integer >= the current depth {L}, got {depth!r}")
    base, extra = divmod(depth, L)
    order = sorted(range(L), key=lambda i: (-norms[i], i))[:extra]
    return [base + (i in order) for i in range(L)]


@torch.no_grad()
def split_block(block: nn.Module, k: int) -> list[nn.Module]:
    """``k`` copies of ``block`` whose residual branches are 1/k of the original's (module
    docstring; two-layer MLPs rebalanced).

    Examples
    --------
    >>> from gufm.deep.nets.blocks import RN1Block
    >>> b = RN1Block(4)
    >>> parts = split_block(b, 2)
    >>> bool(torch.allclose(parts[1].mlp.V.weight, b.mlp.V.weight / 2))
    True
    """
    out = []
    for _ in range(int(k)):
        c = copy.deepcopy(block)
        mlp = getattr(c, "mlp", None)
        if mlp is not None and getattr(mlp, "layers", 1) == 2:
            n1, n2 = float(mlp.V1.weight.norm()), float(mlp.V2.weight.norm())
            a = math.sqrt(n2 / (k * n1)) if n1 > 0 and n2 > 0 else 1.0
            mlp.V1.weight.mul_(a)
            mlp.V2.weight.div_(k * a)
        elif mlp is not None:
            mlp.V.weight.div_(k)
        attn = getattr(c, "attn", None)
        if attn is not None:
            attn.VO.weight.div_(k)
        out.append(c)
    return out


def deepen(model: nn.Module, depth: int) -> nn.Module:
    r"""A network of depth ``depth`` made from ``model`` by splitting its blocks.

    The embedding and the classifier are copied; block :math:`l` becomes :math:`k_l` blocks
    (:func:`split_counts`, :func:`split_block`).  The function is kept to first order in the
    residual branches (module docstring); ``model`` is not modified.

    Parameters
    ----------
    model : GUFMNet
        Built by :func:`gufm.deep.nets.make_model` (has ``build_args``).
    depth : int
        New depth :math:`L' \ge L` (``L' = L`` returns a copy).

    Returns
    -------
    GUFMNet
        Same dtype and device as ``model``; ``build_args["depth"] == depth``.

    Examples
    --------
    >>> import torch
    >>> from gufm.deep.nets import make_model
    >>> m = make_model("rn1", 2, 8, (1, 4, 4), 3, seed=0)
    >>> big = deepen(m, 5)
    >>> big.depth, len(big.blocks)
    (5, 5)
    """
    args = getattr(model, "build_args", None)
    if args is None:
        raise ValueError("model must be built by gufm.deep.nets.make_model (no build_args)")
    counts = split_counts([_last_sq_norm(b) for b in model.blocks], depth)
    build = dict(args)
    build["depth"] = int(depth)
    arch, _, width = build.pop("arch"), build.pop("depth"), build.pop("width")
    p0 = next(model.parameters())
    new = make_model(arch, int(depth), width, **build).to(device=p0.device, dtype=p0.dtype)
    new.embed.load_state_dict(model.embed.state_dict())
    new.classifier.load_state_dict(model.classifier.state_dict())
    pieces = [c for b, k in zip(model.blocks, counts, strict=True) for c in split_block(b, k)]
    for dst, src in zip(new.blocks, pieces, strict=True):
        dst.load_state_dict(src.state_dict())
    return new
