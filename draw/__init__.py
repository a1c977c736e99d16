"""DRAW: a recurrent neural network for image generation (Gregor et al., 2015, arXiv:1502.04623).

The names below load on first use (PEP 562), so that `import draw.startup`, the first import of
every script, does not load torch: a Ctrl-C in the seconds torch takes to load then finds the
scripts' handler in place (draw/startup.py) instead of printing a traceback.
"""
import importlib

_EXPORTS = {"ZoomableAttentionWindow": "draw.attention", "DrawConfig": "draw.model",
            "DrawModel": "draw.model", "nll_bound": "draw.model"}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'draw' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
