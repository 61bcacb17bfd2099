"""Ranking: from channel scores to the channels each group keeps."""

from __future__ import annotations

import torch

from .groups import ChannelGroup

RANKINGS = ("global", "uniform")


def _round(n: int, size: int, round_to: int, floor: int) -> int:
    """Kept width: a multiple of ``round_to`` (nearest), at least ``floor``, at most ``size``."""
    if round_to > 1:
        n = int(round(n / round_to)) * round_to
    return max(min(n, size), min(max(floor, round_to), size))


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores, in increasing index order (ties: lower index wins)."""
    order = torch.sort(-scores, stable=True).indices
    return torch.sort(order[:k]).values


def select(
    groups: list[ChannelGroup], scores: dict[str, torch.Tensor], ratio: float,
    ranking: str = "global", round_to: int = 1, floor: int = 1,
) -> dict[str, torch.Tensor]:
    """Kept channel indices per group name, removing about ``ratio`` of each kind's channels.

    ``uniform`` keeps the same fraction of every group. ``global`` pools the groups of one kind (all
    blocks' head-dim groups, all MLP groups, ...) with each group's scores divided by their mean, so that
    each block gets its own width; ``floor`` keeps every group from being emptied. A one-stream encoder's
    embedding group is alone of its kind, so it is uniform by nature; a hierarchical encoder's streams
    are pooled like blocks.
    """
    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}: choose one of {RANKINGS}")
    keep: dict[str, torch.Tensor] = {}
    by_kind: dict[str, list[ChannelGroup]] = {}
    for g in groups:
        by_kind.setdefault(g.kind, []).append(g)
    for kind, members in by_kind.items():
        if ranking == "uniform" or len(members) == 1:
            for g in members:
                k = _round(int(g.size * (1 - ratio) + 1e-9), g.size, round_to, floor)
                keep[g.name] = _top(scores[g.name], k)
            continue
        normed = []
        for g in members:
            s = scores[g.name].to(torch.float64)
            mean = s.mean()
            normed.append(s / mean if mean > 0 else s)
        flat = torch.cat(normed)
        owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(members)])
        n_keep = int(round(flat.numel() * (1 - ratio)))
        winners = owner[_top(flat, n_keep)] if n_keep > 0 else owner[:0]
        counts = torch.bincount(winners, minlength=len(members))
        for i, g in enumerate(members):
            k = _round(int(counts[i]), g.size, round_to, floor)
            keep[g.name] = _top(normed[i], k)
    return keep
