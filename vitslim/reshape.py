"""Give an encoder the widths a model file records, before its weights are loaded."""

from __future__ import annotations

import torch
from torch import nn

from .family import Family
from .structure import Structure


def owner_of(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding parameter ``name`` (a dotted path under ``root``), and the leaf name."""
    path, _, leaf = name.rpartition(".")
    return (root.get_submodule(path) if path else root), leaf


def replace_parameter(root: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put ``tensor`` in place of parameter ``name``, keeping its ``requires_grad``."""
    owner, leaf = owner_of(root, name)
    old = getattr(owner, leaf)
    setattr(owner, leaf, nn.Parameter(tensor.contiguous(), requires_grad=old.requires_grad))


def _resize(root: nn.Module, name: str, axis: int, size: int) -> None:
    """Replace parameter ``name`` by an uninitialised one whose ``axis`` has ``size`` entries."""
    old = root.get_parameter(name)
    if old.shape[axis] == size:
        return
    shape = list(old.shape)
    shape[axis] = size
    replace_parameter(root, name, torch.empty(shape, dtype=old.dtype, device=old.device))


def sync_attributes(module: nn.Module) -> None:
    """Make the size attributes of standard layers agree with their (resized) weights."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.modules.conv._ConvTransposeNd):  # weight (in, out / groups, ...)
            m.in_channels = m.weight.shape[0]
            m.out_channels = m.weight.shape[1] * m.groups
        elif isinstance(m, nn.modules.conv._ConvNd):
            m.out_channels = m.weight.shape[0]
            m.in_channels = m.weight.shape[1] * m.groups
        elif isinstance(m, nn.GroupNorm) and m.weight is not None:
            m.num_channels = m.weight.shape[0]
        elif hasattr(m, "normalized_shape") and isinstance(getattr(m, "weight", None), torch.Tensor):
            m.normalized_shape = tuple(m.weight.shape)  # LayerNorm, RMSNorm and look-alikes


def apply_widths(encoder: nn.Module, structure: Structure, widths: dict, family: Family) -> None:
    """Resize every width-tied parameter of ``encoder`` to ``widths`` (see :meth:`Structure.widths`): each
    residual stream's parameters and each block's :func:`~vitslim.groups.block_members`, the same declarations
    pruning removes channels from."""
    from .groups import block_members, mlp_members

    if len(widths["blocks"]) != len(structure.blocks):
        raise ValueError(f"widths for {len(widths['blocks'])} blocks, the model has {len(structure.blocks)}")
    stream_widths = [widths["embed_dim"], *widths.get("stream_dims", [])]
    if len(stream_widths) != len(structure.streams()):
        raise ValueError(f"widths for {len(stream_widths)} residual streams, the model has {len(structure.streams())}")
    params = dict(encoder.named_parameters())
    for stream, width in zip(structure.streams(), stream_widths):
        for name, axis in stream.params:
            _resize(encoder, name, axis, width)
    for block, w in zip(structure.blocks, widths["blocks"]):
        for m in block_members(block):
            if m.param in params:  # e.g. a qkv without bias
                _resize(encoder, m.param, m.axis,
                        m.size(w["num_heads"], w["head_dim"], w["mlp_hidden"], w.get("num_kv_heads")))
        family.set_attention_shape(encoder.get_submodule(block.attn.module), w["num_heads"], w["head_dim"])
    for mlp, hidden in zip(structure.head_mlps, widths.get("head_mlps", [m.hidden for m in structure.head_mlps])):
        for m in mlp_members(mlp):
            if m.param in params:
                _resize(encoder, m.param, m.axis, m.size(0, 0, hidden))
    sync_attributes(encoder)
    family.set_residual_widths(encoder, stream_widths)
