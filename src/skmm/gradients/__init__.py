"""Sketched per-sample gradients of PyTorch models (see :func:`sketch_gradients`)."""

from .sketching import GradientSketch, load_gradient_sketch, model_fingerprint, sketch_gradients

__all__ = ["GradientSketch", "load_gradient_sketch", "model_fingerprint", "sketch_gradients"]
