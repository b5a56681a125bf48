"""Sketched per-sample gradients of PyTorch models (see :func:`sketch_gradients`)."""

from .per_sample import additive_attention_mask
from .sketching import GradientSketch, load_gradient_sketch, model_fingerprint, sketch_gradients

__all__ = [
    "GradientSketch",
    "additive_attention_mask",
    "load_gradient_sketch",
    "model_fingerprint",
    "sketch_gradients",
]
