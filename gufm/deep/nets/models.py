r"""The paper's networks (docs/networks.md, section 1): L-RN1, L-RN2, L-T11, L-T12 and pre-LN L-T11.

A network is ``embedding -> L blocks -> (pool) -> LN -> classifier``:

* **embedding**, then an affine-free LayerNorm :math:`\operatorname{LN}_\varepsilon`
  (:func:`gufm.nets.blocks.layernorm`, ``eps = ln_eps``):
  images/vectors for ResNets: flatten, :math:`x_0 = \operatorname{LN}(E\,\mathrm{vec}(x))`;
  images for transformers: non-overlapping ``p x p`` patches,
  :math:`x_{0,t} = \operatorname{LN}(E\,\mathrm{patch}_t + P_t)`;
  tokens: :math:`x_{0,t} = \operatorname{LN}(E_{\mathrm{tok}}[s_t] + P_t)` (a ResNet on tokens
  mean-pools the embedded tokens first);
* **blocks**: :class:`~gufm.nets.blocks.RN1Block`, :class:`~gufm.nets.blocks.RN2Block`,
  :class:`~gufm.nets.blocks.PostLNBlock` or :class:`~gufm.nets.blocks.PreLNBlock`;
* **features**: transformers mean-pool the tokens (padding excluded), then every model applies
  :math:`h = \sqrt d\,(x-\bar x)/\lVert x-\bar x\rVert`, so ``(classifier, features)`` is feasible
  for the GUFM ``features="layernorm"`` with :math:`\rho = \sqrt d` (this last LayerNorm is
  the exact ``eps = 0`` one whatever ``ln_eps``);
* **classifier**: ``nn.Linear(d, K, bias=False)`` (``bias=True`` adds a bias, regularised by the
  trainer like every other parameter, i.e. a GUFM with ``lam_b = lam``).

No layer has a bias and no LayerNorm has affine parameters, so the trainer's penalty
:math:`\tfrac{\lambda}{2}\sum_\theta\lVert\theta\rVert^2` covers every weight matrix, the
embeddings and the positional embeddings.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gufm.deep.nets.blocks import PostLNBlock, PreLNBlock, RN1Block, RN2Block, layernorm, sphere_layernorm

#: serialises the seeded model builds (the seed goes through torch's global generator)
_SEED_LOCK = threading.Lock()

#: arch name -> (family, MLP layers per block)
ARCHS: dict[str, tuple[str, int]] = {
    "rn1": ("resnet", 1),
    "rn2": ("resnet", 2),
    "t11": ("postln", 1),
    "t12": ("postln", 2),
    "preln-t11": ("preln", 1),
    "preln-t12": ("preln", 2),
}

INPUT_KINDS = ("image", "vector", "tokens")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class FlatEmbedding(nn.Module):
    r"""ResNet input: :math:`x_0 = \operatorname{LN}(E\,\mathrm{vec}(x))`, ``E`` of shape (d, D).

    Examples
    --------
    >>> import torch
    >>> FlatEmbedding(16, 8)(torch.randn(3, 1, 4, 4))[0].shape
    torch.Size([3, 8])
    """

    def __init__(self, in_dim: int, width: int, ln_eps: float = 1e-5) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.ln_eps = ln_eps
        self.E = nn.Linear(in_dim, width, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.in_dim:
            raise ValueError(f"input has {x.shape[1]} features per sample, expected {self.in_dim}")
        return layernorm(self.E(x), self.ln_eps), None


class PatchEmbedding(nn.Module):
    r"""Transformer image input: ``p x p`` patches, :math:`\operatorname{LN}(E\,\mathrm{patch}_t + P_t)`.

    Examples
    --------
    >>> import torch
    >>> PatchEmbedding((1, 4, 4), 2, 8)(torch.randn(3, 1, 4, 4))[0].shape
    torch.Size([3, 4, 8])
    """

    def __init__(self, image_shape: Sequence[int], patch_size: int, width: int,
                 ln_eps: float = 1e-5) -> None:
        super().__init__()
        self.ln_eps = ln_eps
        C, H, W = image_shape
        if H % patch_size or W % patch_size:
            raise ValueError(
                f"patch_size={patch_size} must divide the image height {H} and width {W}"
            )
        self.image_shape = (C, H, W)
        self.p = patch_size
        self.n_tokens = (H // patch_size) * (W // patch_size)
        self.E = nn.Linear(C * patch_size * patch_size, width, bias=False)
        self.pos = nn.Parameter(0.02 * torch.randn(self.n_tokens, width))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        C, H, W = self.image_shape
        x = x.reshape(x.shape[0], C, H, W)
        p = self.p
        patches = x.unfold(2, p, p).unfold(3, p, p)  # (B, C, H/p, W/p, p, p)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(x.shape[0], self.n_tokens, C * p * p)
        return layernorm(self.E(patches) + self.pos, self.ln_eps), None


class TokenEmbedding(nn.Module):
    r"""Text input: :math:`\operatorname{LN}(E_{\mathrm{tok}}[s_t] + P_t)`; padding masked.

    Examples
    --------
    >>> import torch
    >>> z, mask = TokenEmbedding(5, 3, 8, pad_id=0)(torch.tensor([[1, 2, 0]]))
    >>> z.shape, mask.tolist()
    (torch.Size([1, 3, 8]), [[True, True, False]])
    """

    def __init__(self, vocab_size: int, seq_len: int, width: int, pad_id: int | None,
                 ln_eps: float = 1e-5) -> None:
        super().__init__()
        self.ln_eps = ln_eps
        self.seq_len = seq_len
        self.pad_id = pad_id
        self.tok = nn.Embedding(vocab_size, width)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.pos = nn.Parameter(0.02 * torch.randn(seq_len, width))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if x.ndim != 2 or x.shape[1] > self.seq_len:
            raise ValueError(
                f"token input must have shape (B, T) with T <= {self.seq_len}, got {tuple(x.shape)}"
            )
        x = x.long()
        mask = None if self.pad_id is None else x != self.pad_id
        if mask is not None:
            # a sequence of only padding attends to / pools its first position
            mask = mask.clone()
            mask[:, 0] |= ~mask.any(dim=1)
        return layernorm(self.tok(x) + self.pos[: x.shape[1]], self.ln_eps), mask


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the token axis (dim 1), over the positions where ``mask`` is True.

    Examples
    --------
    >>> import torch
    >>> masked_mean(torch.tensor([[[1.0], [3.0]]]), torch.tensor([[True, False]])).tolist()
    [[1.0]]
    """
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(dim=1) / m.sum(dim=1)


class GUFMNet(nn.Module):
    """A network whose last features are LayerNorm outputs (see the module docstring).

    Use :func:`make_model` to build one.

    Attributes
    ----------
    arch : str
    depth, width, num_classes : int
    embed : nn.Module
    blocks : nn.ModuleList
    classifier : nn.Linear (d -> K)
    build_args : dict
        The :func:`make_model` arguments (set by it; what network files store).

    Examples
    --------
    >>> m = make_model("rn1", 2, 8, (1, 4, 4), 3)
    >>> m.arch, m.depth, m.width, m.num_classes
    ('rn1', 2, 8, 3)
    """

    def __init__(self, arch: str, depth: int, width: int, num_classes: int, embed: nn.Module,
                 blocks: nn.ModuleList, bias: bool, ln_eps: float = 1e-5) -> None:
        super().__init__()
        self.ln_eps = ln_eps
        self.arch = arch
        self.family = ARCHS[arch][0]
        self.depth = depth
        self.width = width
        self.num_classes = num_classes
        self.embed = embed
        self.blocks = blocks
        self.classifier = nn.Linear(width, num_classes, bias=bias)

    def features(self, x: Tensor) -> Tensor:
        r"""Last-layer features :math:`h(x)`, shape (B, d): mean 0 and norm :math:`\sqrt d`.

        Examples
        --------
        >>> import torch
        >>> make_model("rn1", 1, 8, (1, 4, 4), 3).features(torch.randn(2, 1, 4, 4)).shape
        torch.Size([2, 8])
        """
        z, mask = self.embed(x)
        if self.family == "resnet":
            if z.ndim == 3:  # tokens into a ResNet: pool the embedded tokens, re-normalise
                z = layernorm(masked_mean(z, mask), self.ln_eps)
            for blk in self.blocks:
                z = blk(z)
            return sphere_layernorm(z)  # the exact sphere (also after an eps-LN block)
        for blk in self.blocks:
            z = blk(z, mask)
        return sphere_layernorm(masked_mean(z, mask))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``classifier(features(x))``, shape (B, K)."""
        return self.classifier(self.features(x))

    def scale_invariant_groups(self) -> dict[str, list[nn.Parameter]]:
        r"""Parameter groups :math:`\theta_G` with :math:`f_{c\theta_G} = f_{\theta_G}` for all
        :math:`c > 0` (the features, hence the logits, do not change).

        Returns ``{"embed": [E, (P)]}`` (every parameter of the input embedding, scaled jointly)
        when

        * the network is a ResNet on image/vector input (``FlatEmbedding``), **whatever**
          ``ln_eps``, or
        * ``ln_eps == 0`` (any architecture and input),

        and ``{}`` otherwise.  No other group exists (see below).

        Proof (ResNets, ``ln_eps >= 0``).  Write :math:`u = E\,\mathrm{vec}(x)` and
        :math:`\operatorname{LN}_\varepsilon(z) = (z-\bar z)/\sqrt{\operatorname{var}(z)+
        \varepsilon}`.  For :math:`a > 0`, :math:`\operatorname{LN}_\varepsilon(a z) =
        \beta\,\operatorname{LN}_\varepsilon(z)` with
        :math:`\beta = a\sqrt{\operatorname{var}(z)+\varepsilon}/
        \sqrt{a^2\operatorname{var}(z)+\varepsilon} > 0` (both sides are 0 when
        :math:`z = \bar z\mathbf 1`).  So :math:`x_0(cE) = \beta_0 x_0(E)` with a per-sample
        :math:`\beta_0 > 0`.  A block's branch :math:`r(x) = x + V\,\mathrm{relu}(x)` (L-RN1)
        or :math:`x + V_2\,\mathrm{relu}(V_1 x)` (L-RN2) is positively homogeneous,
        :math:`r(\beta x) = \beta r(x)`, hence :math:`x_{l+1}(cE) = \beta_{l+1} x_{l+1}(E)` with
        :math:`\beta_{l+1} > 0` by induction, and the last LayerNorm is exact
        (:func:`~gufm.deep.nets.blocks.sphere_layernorm`, invariant under any positive scale):
        :math:`h(cE) = h(E)`.

        ``ln_eps = 0``.  Every embedding ends in the exact LayerNorm of a linear function of its
        parameters, :math:`\operatorname{LN}_0(c(E p + P)) = \operatorname{LN}_0(Ep + P)`, so
        :math:`x_0` itself does not change.

        Why nothing else.  With ``ln_eps > 0`` the factors :math:`\beta_{0,t}` differ between
        the tokens of one sample (their variances differ); attention
        :math:`\operatorname{softmax}(X Q^\top K X^\top/\sqrt d)` is not homogeneous in
        :math:`X`, and a ResNet on tokens mean-pools the tokens: the embedding is not invariant.
        Scaling any block matrix (``V``, ``V1``, ``V2``, ``VO``, ``Q``, ``K``) or the classifier
        changes the function (the residual ``x + c\,g(x)`` and the scores
        :math:`c^2 QK^\top` change).  The pairs :math:`(Q, K) \to (aQ, K/a)` and
        :math:`(V_1, V_2) \to (aV_1, V_2/a)` keep the function but not the penalty: they are
        rebalancing symmetries with a minimiser, not invariant groups.  See docs/training.md.

        Examples
        --------
        >>> from gufm.deep.nets import make_model
        >>> sorted(make_model("rn1", 2, 8, (1, 4, 4), 3).scale_invariant_groups())
        ['embed']
        >>> make_model("t11", 2, 8, (1, 4, 4), 3, patch_size=2).scale_invariant_groups()
        {}
        >>> [p.shape for p in make_model("t11", 2, 8, (1, 4, 4), 3, patch_size=2,
        ...                               ln_eps=0.0).scale_invariant_groups()["embed"]]
        [torch.Size([4, 8]), torch.Size([8, 4])]
        """
        flat = self.family == "resnet" and isinstance(self.embed, FlatEmbedding)
        if flat or self.ln_eps == 0:
            return {"embed": list(self.embed.parameters())}
        return {}

    def scale_invariant_parameters(self) -> list[nn.Parameter]:
        """Every parameter of :meth:`scale_invariant_groups`, in one list.

        Examples
        --------
        >>> from gufm.deep.nets import make_model
        >>> len(make_model("rn2", 2, 8, (1, 4, 4), 3).scale_invariant_parameters())
        1
        """
        return [p for g in self.scale_invariant_groups().values() for p in g]

    def param_sq_norm(self) -> Tensor:
        r""":math:`\sum_\theta \lVert\theta\rVert^2` over all parameters.

        Examples
        --------
        >>> m = make_model("rn1", 1, 4, (1, 2, 2), 2)
        >>> bool(m.param_sq_norm() > 0)
        True
        """
        return sum((p * p).sum() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, depth={self.depth}, width={self.width}, K={self.num_classes}"


def make_model(
    arch: str,
    depth: int,
    width: int,
    input_shape: Sequence[int] | None = None,
    num_classes: int = 10,
    *,
    in_dim: int | None = None,
    input_kind: str | None = None,
    vocab_size: int | None = None,
    seq_len: int | None = None,
    pad_id: int | None = None,
    patch_size: int | None = None,
    mlp_hidden: int | None = None,
    bias: bool = False,
    ln_eps: float = 1e-5,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
) -> GUFMNet:
    """Build one of the paper's networks.

    Parameters
    ----------
    arch : {"rn1", "rn2", "t11", "t12", "preln-t11", "preln-t12"}
    depth : int
        Number of blocks ``L >= 1``.
    width : int
        ``d >= 2``, the residual-stream and feature dimension.
    input_shape : sequence of int, optional
        Image shape ``(C, H, W)`` (or ``(H, W)``) for ``input_kind="image"``; ``(T,)`` for tokens.
    num_classes : int
        ``K >= 2``.
    in_dim : int, optional
        Vector inputs of this dimension (ResNets only; ``input_kind="vector"``).
    input_kind : {"image", "vector", "tokens"}, optional
        Inferred: ``"tokens"`` when ``vocab_size`` is given, ``"vector"`` with ``in_dim``,
        else ``"image"``.
    vocab_size, seq_len, pad_id : int, optional
        Token inputs: vocabulary size, maximal sequence length (default ``input_shape[0]``) and
        the padding id (masked in attention and pooling; ``None``: no padding).
    patch_size : int, optional
        Transformers on images; default ``H // 4`` (16 patches) when it divides ``H`` and ``W``.
    mlp_hidden : int, optional
        Hidden width of two-layer MLPs (default ``width``).
    bias : bool
        Classifier bias (regularised like the weights: a GUFM with ``lam_b = lam``).
    ln_eps : float
        ``eps`` of the LayerNorms inside the network (the one before the classifier is always
        exact); ``0`` makes all of them exact (see :mod:`gufm.nets.blocks`).
    seed : int, optional
        Seeds the parameter initialisation (``torch.manual_seed``) for reproducible models.
    dtype : torch.dtype, optional
        Parameter dtype (default float32).

    Raises
    ------
    ValueError
        Unknown ``arch`` or ``input_kind``, ``depth < 1``, ``width < 2``, ``num_classes < 2``,
        missing or inconsistent input description.

    Examples
    --------
    >>> import torch
    >>> m = make_model("t11", 2, 8, (1, 8, 8), 3, seed=0)
    >>> h = m.features(torch.randn(4, 1, 8, 8)).detach()
    >>> h.shape, round(float(h.norm(dim=1)[0]) ** 2, 4)
    (torch.Size([4, 8]), 8.0)
    """
    if not isinstance(arch, str) or arch.lower() not in ARCHS:
        raise ValueError(f"arch must be one of {tuple(ARCHS)}, got {arch!r}")
    arch = arch.lower()
    depth = _check_int("depth", depth, 1)
    width = _check_int("width", width, 2)
    num_classes = _check_int("num_classes", num_classes, 2)
    if input_kind is None:
        input_kind = "tokens" if vocab_size is not None else "vector" if in_dim is not None else "image"
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
    family, mlp_layers = ARCHS[arch]
    if not isinstance(ln_eps, int | float) or isinstance(ln_eps, bool) or not ln_eps >= 0:
        raise ValueError(f"ln_eps must be a non-negative number, got {ln_eps!r}")
    ln_eps = float(ln_eps)
    gen_state = None
    if seed is not None:
        # torch's global generator seeds the initialisation: hold the lock so that models
        # built at once in several threads (a Dask worker's) do not interleave their draws
        _SEED_LOCK.acquire()
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(int(seed))
    try:
        embed = _make_embedding(family, width, input_kind, input_shape, in_dim, vocab_size,
                                seq_len, pad_id, patch_size, ln_eps)
        if family == "resnet":
            blocks = nn.ModuleList(
                [RN1Block(width, ln_eps) if mlp_layers == 1
                 else RN2Block(width, mlp_hidden, ln_eps) for _ in range(depth)]
            )
        else:
            cls = PostLNBlock if family == "postln" else PreLNBlock
            blocks = nn.ModuleList([cls(width, mlp_layers, mlp_hidden, ln_eps)
                                    for _ in range(depth)])
        model = GUFMNet(arch, depth, width, num_classes, embed, blocks, bias, ln_eps)
    finally:
        if gen_state is not None:
            torch.random.set_rng_state(gen_state)
            _SEED_LOCK.release()
    model.build_args = {
        "arch": arch, "depth": depth, "width": width, "num_classes": num_classes,
        "input_shape": None if input_shape is None else [int(s) for s in input_shape],
        "in_dim": in_dim, "input_kind": input_kind, "vocab_size": vocab_size,
        "seq_len": seq_len, "pad_id": pad_id, "patch_size": patch_size,
        "mlp_hidden": mlp_hidden, "bias": bool(bias), "ln_eps": ln_eps}
    if dtype is not None:
        model = model.to(dtype)
    return model


def _make_embedding(family: str, width: int, kind: str, input_shape: Sequence[int] | None,
                    in_dim: int | None, vocab_size: int | None, seq_len: int | None,
                    pad_id: int | None, patch_size: int | None, ln_eps: float) -> nn.Module:
    if kind == "tokens":
        if vocab_size is None:
            raise ValueError("vocab_size is required for input_kind='tokens'")
        vocab_size = _check_int("vocab_size", vocab_size, 1)
        if seq_len is None:
            if input_shape is None:
                raise ValueError("seq_len (or input_shape=(T,)) is required for token input")
            seq_len = int(tuple(input_shape)[-1])
        seq_len = _check_int("seq_len", seq_len, 1)
        if pad_id is not None and not 0 <= int(pad_id) < vocab_size:
            raise ValueError(f"pad_id must lie in [0, vocab_size), got {pad_id!r}")
        return TokenEmbedding(vocab_size, seq_len, width, pad_id, ln_eps)
    if kind == "vector":
        if family != "resnet":
            raise ValueError(
                "transformers need image (patches) or token input; input_kind='vector' is for "
                "ResNets only"
            )
        if in_dim is None:
            if input_shape is None:
                raise ValueError("in_dim (or input_shape) is required for vector input")
            in_dim = math.prod(int(s) for s in input_shape)
        return FlatEmbedding(_check_int("in_dim", in_dim, 1), width, ln_eps)
    # images
    if input_shape is None:
        if in_dim is not None and family == "resnet":
            return FlatEmbedding(_check_int("in_dim", in_dim, 1), width, ln_eps)
        raise ValueError("input_shape=(C, H, W) is required for image input")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (H, W), got {tuple(input_shape)!r}")
    if family == "resnet":
        return FlatEmbedding(math.prod(shape), width, ln_eps)
    if patch_size is None:
        patch_size = max(1, shape[1] // 4)
    patch_size = _check_int("patch_size", patch_size, 1)
    return PatchEmbedding(shape, patch_size, width, ln_eps)


def model_for(dataset: Any, arch: str, depth: int, width: int, **kwargs: Any) -> GUFMNet:
    """:func:`make_model` with the input description taken from a :class:`gufm.data.Dataset`.

    Examples
    --------
    >>> from gufm.deep.data import load_dataset
    >>> model_for(load_dataset("digits", n_per_class=2), "rn2", 1, 8).embed.in_dim
    64
    """
    if dataset.kind == "tokens":
        kw: dict[str, Any] = dict(input_kind="tokens", vocab_size=dataset.vocab_size,
                                  seq_len=int(dataset.X.shape[1]), pad_id=dataset.pad_id)
    elif dataset.kind == "image":
        kw = dict(input_kind="image", input_shape=dataset.image_shape)
    else:
        kw = dict(input_kind="vector", in_dim=int(dataset.X[0].numel()))
    kw.update(kwargs)
    return make_model(arch, depth, width, num_classes=dataset.num_classes, **kw)
