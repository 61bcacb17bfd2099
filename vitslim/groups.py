"""Channel groups: the units that are scored and removed together, built from a Structure.

Which parameters move together is declared once, here: the residual width by the structure's
``embedding_params``, each block's bottlenecks by :func:`block_members`. Pruning builds its groups from
these declarations, and loading a file (:mod:`vitslim.reshape`) resizes exactly the same parameters.

A group has ``size`` channels; each member ``(param, axis, index)`` says which entries along ``axis`` of
``param`` belong to each channel: ``index`` has shape (size, k), row j listing channel j's entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass, field

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch

from .structure import BlockSpec, MlpSpec, Structure

PARTS = ("embedding", "bottleneck", "both")
ATTENTION_MODES = ("head_dim", "heads")

# How a bottleneck member's axis is laid out: qkv rows (q|k|v, head, dim), attention width (head, dim)
# read by proj, key/value width (kv head, dim), one entry per head-dim channel shared by all heads, one
# entry per head, MLP hidden channels.
QKV, ATTN, KV, HEAD_DIM, HEAD, MLP, GLU = "qkv", "attn", "kv", "head_dim", "head", "mlp", "glu"  # glu: MLP, twice


@dataclass(frozen=True)
class Member:
    """A parameter axis tied to one of a block's bottleneck widths (``layout`` is one of the above)."""

    param: str
    axis: int
    layout: str

    def size(self, num_heads: int, head_dim: int, mlp_hidden: int, num_kv_heads: int | None = None) -> int:
        """The axis length for the given widths."""
        return {QKV: 3 * num_heads * head_dim, ATTN: num_heads * head_dim, KV: (num_kv_heads or num_heads) * head_dim,
                HEAD_DIM: head_dim, HEAD: num_heads, MLP: mlp_hidden, GLU: 2 * mlp_hidden}[self.layout]


def mlp_members(m: MlpSpec) -> list[Member]:
    """Every parameter axis an MLP's hidden width decides."""
    fc1 = GLU if m.fused_gate else MLP
    return [
        Member(f"{m.fc1}.weight", 0, fc1), Member(f"{m.fc1}.bias", 0, fc1), Member(f"{m.fc2}.weight", 1, MLP),
        *((Member(f"{m.gate}.weight", 0, MLP), Member(f"{m.gate}.bias", 0, MLP)) if m.gate else ()),
        *(Member(name, axis, MLP) for name, axis in m.hidden_params),
    ]


def block_members(block: BlockSpec) -> list[Member]:
    """Every parameter axis of ``block`` that its attention or MLP widths decide."""
    a = block.attn
    if isinstance(a.qkv, str):
        inputs = [Member(f"{a.qkv}.weight", 0, QKV), Member(f"{a.qkv}.bias", 0, QKV)]
    else:  # separate q, k and v layers
        inputs = [Member(f"{name}.{leaf}", 0, ATTN if i == 0 else KV) for i, name in enumerate(a.qkv)
                  for leaf in ("weight", "bias")]
    return [
        *inputs, Member(f"{a.proj}.weight", 1, ATTN),
        *(Member(name, axis, HEAD_DIM) for name, axis in a.head_dim_params),
        *(Member(name, axis, ATTN) for name, axis in a.width_params),
        *(Member(name, axis, HEAD) for name, axis in a.head_params),
        *mlp_members(block.mlp),
    ]


@dataclass
class ChannelGroup:
    """Channels that move together; ``kind`` is ``embedding``, ``head_dim``, ``heads`` or ``mlp``.
    ``block`` is the block index of a bottleneck group, the residual stream's index of an embedding group."""

    name: str
    kind: str
    size: int
    block: int | None = None
    members: list[tuple[str, int, torch.Tensor]] = field(default_factory=list)

    def aggregate(self, saliency: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum an elementwise saliency (``{param name: tensor shaped like the param}``) per channel."""
        import torch

        score = torch.zeros(self.size, dtype=torch.float64)
        for name, axis, index in self.members:
            s = saliency[name].detach()
            others = [d for d in range(s.dim()) if d != axis]
            per_entry = (s.sum(dim=others) if others else s).to(torch.float64).cpu()
            score += per_entry[index].sum(1)
        return score


def _identity(n: int) -> torch.Tensor:
    import torch

    return torch.arange(n)[:, None]


def embedding_group(structure: Structure, stream: int = 0) -> ChannelGroup:
    """A residual width: one channel set shared by every parameter tied to residual stream ``stream``
    (``embedding`` for the first, ``embedding.<i>`` for a hierarchical encoder's later stages)."""
    s = structure.streams()[stream]
    idx = _identity(s.width)
    members = [(name, axis, idx) for name, axis in s.params]
    return ChannelGroup("embedding" if stream == 0 else f"embedding.{stream}", "embedding", s.width, stream, members)


def qkv_rows(num_heads: int, head_dim: int, heads: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    """Rows of a (q|k|v, head, dim)-laid-out qkv weight for the given heads x dims."""
    import torch

    s = torch.arange(3)[:, None, None] * num_heads * head_dim
    return (s + heads[None, :, None] * head_dim + dims[None, None, :]).flatten()


def _attention_index(layout: str, heads: int, hd: int, mode: str, kv_heads: int) -> torch.Tensor | None:
    """Per-channel entries of an attention member (None: the member does not move with this mode). In
    ``heads`` mode a channel is a key/value group: kv head g and the query heads that share it."""
    import torch

    all_h, all_kv, all_d = torch.arange(heads), torch.arange(kv_heads), torch.arange(hd)
    if mode == "head_dim":
        if layout == QKV:
            return torch.stack([qkv_rows(heads, hd, all_h, torch.tensor([d])) for d in range(hd)])
        if layout in (ATTN, KV):
            return torch.stack([(all_h if layout == ATTN else all_kv) * hd + d for d in range(hd)])
        return _identity(hd) if layout == HEAD_DIM else None  # every head stays
    per = heads // kv_heads  # query heads per group
    q_heads = [torch.arange(g * per, (g + 1) * per) for g in range(kv_heads)]
    if layout == QKV:
        return torch.stack([qkv_rows(heads, hd, h, all_d) for h in q_heads])
    if layout == ATTN:
        return torch.stack([(h[:, None] * hd + all_d).flatten() for h in q_heads])
    if layout == KV:
        return torch.stack([g * hd + all_d for g in range(kv_heads)])
    return torch.stack(q_heads) if layout == HEAD else None  # the remaining heads keep their head dim


def attention_group(structure: Structure, i: int, mode: str = "head_dim") -> ChannelGroup:
    """Block ``i``'s attention: one channel per head-dim index (all heads), or per whole head (the
    block's own mode where it allows only one, see :class:`~vitslim.structure.AttentionSpec`)."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {mode!r}: choose one of {ATTENTION_MODES}")
    block = structure.blocks[i]
    a = block.attn
    if mode not in a.modes:
        mode = a.modes[0]
    members = []
    for m in block_members(block):
        if m.layout not in (MLP, GLU):
            index = _attention_index(m.layout, a.num_heads, a.head_dim, mode, a.kv_heads)
            if index is not None:
                members.append((m.param, m.axis, index))
    size = a.head_dim if mode == "head_dim" else a.kv_heads
    return ChannelGroup(f"{a.module}.{mode}", mode, size, i, members)


def mlp_group(structure: Structure, i: int) -> ChannelGroup:
    """Block ``i``'s MLP hidden channels."""
    block = structure.blocks[i]
    return _mlp_group(f"{block.name}.mlp", block.mlp, i)


def _mlp_group(name: str, mlp: MlpSpec, block: int | None) -> ChannelGroup:
    import torch

    idx = _identity(mlp.hidden)
    both_halves = torch.stack([torch.arange(mlp.hidden), torch.arange(mlp.hidden) + mlp.hidden], 1)
    members = [(m.param, m.axis, idx if m.layout == MLP else both_halves) for m in mlp_members(mlp)]
    return ChannelGroup(name, "mlp", mlp.hidden, block, members)


def build_groups(structure: Structure, part: str, attention: str = "head_dim",
                 params: set[str] | None = None) -> list[ChannelGroup]:
    """Every group for ``part``; members naming parameters absent from ``params`` are dropped."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}: choose one of {PARTS}")
    groups = []
    if part in ("embedding", "both"):
        groups += [embedding_group(structure, i) for i in range(len(structure.streams()))]
    if part in ("bottleneck", "both"):
        for i in range(len(structure.blocks)):
            groups += [attention_group(structure, i, attention), mlp_group(structure, i)]
        groups += [_mlp_group(f"{m.fc1.rpartition('.')[0]}", m, None) for m in structure.head_mlps]
    if params is not None:
        for g in groups:
            g.members = [m for m in g.members if m[0] in params]
    return groups
