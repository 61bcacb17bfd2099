"""Random scores, reproducible with a seed: the baseline every criterion must beat."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch

from ..groups import ChannelGroup
from .base import Criterion, ImportanceContext


class RandomImportance(Criterion):
    """Uniform random scores from a generator seeded once per pruning call."""

    name = "random"

    def __init__(self, seed: int = 0):
        import torch

        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)

    def prepare(self, ctx: ImportanceContext) -> None:
        import torch

        self._gen = torch.Generator().manual_seed(self.seed)

    def score(self, group: ChannelGroup, ctx: ImportanceContext) -> torch.Tensor:
        import torch

        return torch.rand(group.size, generator=self._gen, dtype=torch.float64)

    def describe(self) -> dict:
        return {"name": self.name, "seed": self.seed}
