"""Channel surgery: physically remove the channels a ranking dropped.

Driven only by the channel groups (built from the family's structure description): each member says
which entries along which axis of which parameter belong to each channel, so removal is an
``index_select`` of the kept entries. Module size attributes are then synced, and the family updates
its attention attributes (head count, head dim; the original attention scale is kept).
"""

from __future__ import annotations

import torch
from torch import nn

from .family import Family
from .groups import ChannelGroup
from .reshape import replace_parameter, sync_attributes
from .structure import Structure


def remove_group_channels(encoder: nn.Module, group: ChannelGroup, keep: torch.Tensor) -> None:
    """Keep only channels ``keep`` (indices into ``group``) in every member parameter."""
    removed = torch.ones(group.size, dtype=torch.bool)
    removed[keep] = False
    if not removed.any():
        return
    params = dict(encoder.named_parameters())
    for name, axis, index in group.members:
        param = params[name]
        drop = torch.zeros(param.shape[axis], dtype=torch.bool)
        drop[index[removed].flatten()] = True
        kept = torch.nonzero(~drop).flatten().to(param.device)
        with torch.no_grad():
            replace_parameter(encoder, name, param.detach().index_select(axis, kept))


def remove_channels(
    model: nn.Module, family: Family, structure: Structure,
    groups: list[ChannelGroup], keep: dict[str, torch.Tensor],
) -> None:
    """Apply every group's kept channels to ``model``'s encoder, then fix module attributes."""
    encoder = family.encoder(model)
    for group in groups:
        remove_group_channels(encoder, group, keep[group.name])
    sync_attributes(encoder)
    widths = [s.width for s in structure.streams()]
    for group in groups:
        if group.kind == "embedding":
            widths[group.block or 0] = len(keep[group.name])
    if any(g.kind == "embedding" for g in groups):
        family.set_residual_widths(encoder, widths)
    for group in groups:
        if group.kind not in ("head_dim", "heads"):
            continue
        spec = structure.blocks[group.block].attn
        kept = len(keep[group.name])
        per_group = spec.num_heads // spec.kv_heads  # query heads per key/value head (grouped-query attention)
        heads, head_dim = (spec.num_heads, kept) if group.kind == "head_dim" else (kept * per_group, spec.head_dim)
        attn = encoder.get_submodule(spec.module)
        family.set_attention_shape(attn, heads, head_dim)
        if head_dim != spec.head_dim:
            family.on_head_dim_pruned(attn, spec.head_dim)
