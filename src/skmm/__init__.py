"""skmm: select the few most useful examples of a large pool for finetuning.

Headline method: Sketchy Moment Matching (SkMM). Sketch per-sample gradients with a random
projection, then choose a coreset whose gradient moments match the pool's along the
informative directions.
"""

from .api import get_method, methods, select
from .gradients import GradientSketch, sketch_gradients
from .selection import Selection
from .selectors import Selector, SkMM, Uniform
from .sketch import SketchMap, sketch

__version__ = "0.1.0"

__all__ = [
    "GradientSketch",
    "Selection",
    "Selector",
    "SkMM",
    "SketchMap",
    "Uniform",
    "__version__",
    "get_method",
    "methods",
    "select",
    "sketch",
    "sketch_gradients",
]
