"""The criterion protocol: a group in, one score per channel out (higher = more important)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch
    from torch import nn

from ..groups import ChannelGroup


@dataclass
class ImportanceContext:
    """What a criterion may look at: the whole model, its encoder (the part being pruned, whose
    ``named_parameters`` the groups refer to), the family, and calibration ``data`` (an iterable of
    preprocessed image batches, or None). A criterion that loops over the data reports each batch to
    ``progress(done, total)`` when given (``total`` may be None)."""

    model: nn.Module
    encoder: nn.Module
    family: Any
    data: Iterable[torch.Tensor] | None = None
    params: dict[str, nn.Parameter] = field(default_factory=dict)
    cache: dict[str, torch.Tensor] = field(default_factory=dict)
    progress: Callable[[int, int | None], None] | None = None

    def __post_init__(self) -> None:
        if not self.params:
            self.params = dict(self.encoder.named_parameters())


class Criterion:
    """Base class of importance criteria.

    Implement either :meth:`saliency` (an elementwise score per parameter, summed per channel by the
    group) or :meth:`score` (any per-channel score). :meth:`prepare` runs once per pruning call, before
    any group is scored, on the unpruned model (compute gradients there). ``needs_data`` says whether
    ``prune`` must be given calibration data.
    """

    name: str = "criterion"
    needs_data: bool = False

    def prepare(self, ctx: ImportanceContext) -> None:
        """Compute whatever the scores need (e.g. gradients)."""

    def saliency(self, name: str, param: torch.Tensor) -> torch.Tensor:
        """Elementwise importance of one parameter tensor."""
        raise NotImplementedError

    def score(self, group: ChannelGroup, ctx: ImportanceContext) -> torch.Tensor:
        """One non-negative score per channel of ``group``."""
        for n, _, _ in group.members:
            if n not in ctx.cache:  # a parameter belongs to several groups: compute its saliency once
                ctx.cache[n] = self.saliency(n, ctx.params[n])
        return group.aggregate(ctx.cache)

    def describe(self) -> dict:
        """Settings recorded in provenance."""
        return {"name": self.name}


class FunctionCriterion(Criterion):
    """Wraps a plain callable ``fn(group, ctx) -> Tensor[group.size]`` as a criterion."""

    def __init__(self, fn: Callable[[ChannelGroup, ImportanceContext], torch.Tensor], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "custom")

    def score(self, group: ChannelGroup, ctx: ImportanceContext) -> torch.Tensor:
        import torch

        return torch.as_tensor(self.fn(group, ctx), dtype=torch.float64).flatten()
