"""The paper's networks with exact affine-free LayerNorm features (docs/networks.md).

``make_model(arch, depth, width, input_shape, num_classes)`` builds L-RN1 (``"rn1"``), L-RN2
(``"rn2"``), L-T11 (``"t11"``), L-T12 (``"t12"``) and pre-LN L-T11 (``"preln-t11"``); every model
has ``.features(x)`` (B, d) on the LayerNorm sphere and ``.classifier`` (``nn.Linear(d, K)``).
"""

from gufm.deep.nets.blocks import (
    Attention,
    PostLNBlock,
    PreLNBlock,
    RN1Block,
    RN2Block,
    SphereLayerNorm,
    sphere_layernorm,
)
from gufm.deep.nets.models import ARCHS, INPUT_KINDS, GUFMNet, make_model, model_for

__all__ = [
    "ARCHS", "INPUT_KINDS", "Attention", "GUFMNet", "PostLNBlock", "PreLNBlock", "RN1Block",
    "RN2Block", "SphereLayerNorm", "make_model", "model_for", "sphere_layernorm",
]
