"""Channel groups: the units that are scored and removed together, built from a Structure.

A group has ``size`` channels; each member ``(param, axis, index)`` says which entries along ``axis`` of
``param`` belong to each channel: ``index`` has shape (size, k), row j listing channel j's entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .structure import Structure

PARTS = ("embedding", "bottleneck", "both")
ATTENTION_MODES = ("head_dim", "heads")


@dataclass
class ChannelGroup:
    """Channels that move together; ``kind`` is ``embedding``, ``head_dim``, ``heads`` or ``mlp``."""

    name: str
    kind: str
    size: int
    block: int | None = None
    members: list[tuple[str, int, torch.Tensor]] = field(default_factory=list)

    def aggregate(self, saliency: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum an elementwise saliency (``{param name: tensor shaped like the param}``) per channel."""
        score = torch.zeros(self.size, dtype=torch.float64)
        for name, axis, index in self.members:
            s = saliency[name].detach()
            others = [d for d in range(s.dim()) if d != axis]
            per_entry = (s.sum(dim=others) if others else s).to(torch.float64).cpu()
            score += per_entry[index].sum(1)
        return score


def _identity(n: int) -> torch.Tensor:
    return torch.arange(n)[:, None]


def embedding_group(structure: Structure) -> ChannelGroup:
    """The residual width: one channel set shared by every embedding-tied parameter."""
    idx = _identity(structure.embed_dim)
    members = [(name, axis, idx) for name, axis in structure.embedding_params]
    return ChannelGroup("embedding", "embedding", structure.embed_dim, None, members)


def qkv_rows(num_heads: int, head_dim: int, heads: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    """Rows of a (q|k|v, head, dim)-laid-out qkv weight for the given heads x dims."""
    s = torch.arange(3)[:, None, None] * num_heads * head_dim
    return (s + heads[None, :, None] * head_dim + dims[None, None, :]).flatten()


def attention_group(structure: Structure, i: int, mode: str = "head_dim") -> ChannelGroup:
    """Block ``i``'s attention: one channel per head-dim index (all heads), or per whole head."""
    a = structure.blocks[i].attn
    heads, hd = a.num_heads, a.head_dim
    all_h, all_d = torch.arange(heads), torch.arange(hd)
    if mode == "head_dim":
        size = hd
        rows = torch.stack([qkv_rows(heads, hd, all_h, torch.tensor([d])) for d in range(hd)])
        cols = torch.stack([all_h * hd + d for d in range(hd)])
        extra = [(name, axis, _identity(hd)) for name, axis in a.head_dim_params]
    elif mode == "heads":
        size = heads
        rows = torch.stack([qkv_rows(heads, hd, torch.tensor([h]), all_d) for h in range(heads)])
        cols = torch.stack([h * hd + all_d for h in range(heads)])
        extra = []
    else:
        raise ValueError(f"unknown attention mode {mode!r}: choose one of {ATTENTION_MODES}")
    members = [(f"{a.qkv}.weight", 0, rows), (f"{a.proj}.weight", 1, cols)]
    members += [(f"{a.qkv}.bias", 0, rows)]
    return ChannelGroup(f"{a.module}.{mode}", mode, size, i, members + extra)


def mlp_group(structure: Structure, i: int) -> ChannelGroup:
    """Block ``i``'s MLP hidden channels."""
    m = structure.blocks[i].mlp
    idx = _identity(m.hidden)
    members = [(f"{m.fc1}.weight", 0, idx), (f"{m.fc1}.bias", 0, idx), (f"{m.fc2}.weight", 1, idx)]
    return ChannelGroup(f"{structure.blocks[i].name}.mlp", "mlp", m.hidden, i, members)


def build_groups(structure: Structure, part: str, attention: str = "head_dim",
                 params: set[str] | None = None) -> list[ChannelGroup]:
    """Every group for ``part``; members naming parameters absent from ``params`` are dropped."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}: choose one of {PARTS}")
    groups = []
    if part in ("embedding", "both"):
        groups.append(embedding_group(structure))
    if part in ("bottleneck", "both"):
        for i in range(len(structure.blocks)):
            groups += [attention_group(structure, i, attention), mlp_group(structure, i)]
    if params is not None:
        for g in groups:
            g.members = [m for m in g.members if m[0] in params]
    return groups
