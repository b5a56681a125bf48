"""Selection methods, each a :class:`~skmm.selectors.base.Selector` registered by name."""

from .base import REGISTRY, MethodOutput, Selector, register
from .skmm import SkMM
from .uniform import Uniform

__all__ = ["REGISTRY", "MethodOutput", "Selector", "SkMM", "Uniform", "register"]
