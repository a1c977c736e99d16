"""DRAW: a recurrent neural network for image generation (Gregor et al., 2015, arXiv:1502.04623)."""
from draw.attention import ZoomableAttentionWindow
from draw.model import DrawConfig, DrawModel, nll_bound

__all__ = ["ZoomableAttentionWindow", "DrawConfig", "DrawModel", "nll_bound"]
__version__ = "0.1.0"
