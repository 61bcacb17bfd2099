"""Magnitude: the Lp norm (to the p-th power) of each channel's weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch

from .base import Criterion


class MagnitudeImportance(Criterion):
    """Sum of |w|^p over the channel's entries (p=1: L1, p=2: squared L2)."""

    name = "magnitude"

    def __init__(self, p: int = 2):
        if p not in (1, 2):
            raise ValueError("magnitude p must be 1 or 2")
        self.p = p

    def saliency(self, name: str, param: torch.Tensor) -> torch.Tensor:
        w = param.detach()
        return w.abs() if self.p == 1 else w.square()

    def describe(self) -> dict:
        return {"name": self.name, "p": self.p}
