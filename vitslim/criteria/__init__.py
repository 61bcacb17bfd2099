"""Importance criteria: score channel groups so the least important can be removed.

Built in: ``disturbed_taylor`` (default, label-free), ``taylor``, ``magnitude``, ``random``. Your own:
subclass :class:`Criterion`, pass a callable ``fn(group, ctx) -> scores``, or register a name through
the ``vitslim_importances`` plugin hook.
"""

from .base import Criterion, FunctionCriterion, ImportanceContext
from .magnitude import MagnitudeImportance
from .random import RandomImportance
from .taylor import DisturbedTaylorImportance, TaylorImportance

__all__ = [
    "Criterion", "FunctionCriterion", "ImportanceContext", "MagnitudeImportance", "RandomImportance",
    "TaylorImportance", "DisturbedTaylorImportance",
]
