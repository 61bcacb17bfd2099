"""Feature taps: capture named intermediate tensors of an encoder during its forward pass."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..structure import Structure

# What a tap reads: a block's output, or the input of a layer (the bottleneck activations).
BLOCK_OUTPUTS = "blocks"
BOTTLENECKS = "bottlenecks"


def tap_points(structure: Structure, kind: str) -> list[tuple[str, str]]:
    """``(key, module name)`` pairs; bottleneck taps read the *inputs* of attn.proj and mlp.fc2."""
    if kind == BLOCK_OUTPUTS:
        return [(f"{b.name}:out", b.name) for b in structure.blocks]
    if kind == BOTTLENECKS:
        pts = []
        for b in structure.blocks:
            pts += [(f"{b.attn.proj}:in", b.attn.proj), (f"{b.mlp.fc2}:in", b.mlp.fc2)]
        return pts
    raise ValueError(f"unknown tap kind {kind!r}")


@contextmanager
def tapped(encoder: nn.Module, points: list[tuple[str, str]]) -> Iterator[dict[str, torch.Tensor]]:
    """While active, ``feats[key]`` holds the latest tensor seen at each tap point."""
    feats: dict[str, torch.Tensor] = {}
    handles = []
    for key, name in points:
        module = encoder.get_submodule(name)
        if key.endswith(":in"):
            handles.append(module.register_forward_pre_hook(lambda m, args, k=key: feats.__setitem__(k, args[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, k=key: feats.__setitem__(k, out)))
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()
