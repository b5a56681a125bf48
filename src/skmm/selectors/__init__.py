"""Selection methods, each a :class:`~skmm.selectors.base.Selector` registered by name."""

from . import (
    deepfool,
    diversity,
    gradient_matching,
    herding,
    kcenter,
    leverage,
    pivoting,
    scores,
    submodular,
    targeted,
)
from .base import REGISTRY, MethodOutput, Selector, register
from .skmm import SkMM
from .uniform import Uniform

__all__ = [
    "REGISTRY",
    "MethodOutput",
    "Selector",
    "SkMM",
    "Uniform",
    "deepfool",
    "diversity",
    "gradient_matching",
    "herding",
    "kcenter",
    "leverage",
    "pivoting",
    "register",
    "scores",
    "submodular",
    "targeted",
]
