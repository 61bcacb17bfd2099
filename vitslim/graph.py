"""torch-pruning's dependency graph, traced on a meta-device shadow of the encoder.

The graph is the source of truth for which parameters move with the residual (embedding) channels:
starting from the family's embedding root, it finds every coupled layer and parameter, whatever the
family. Tracing on the meta device costs no arithmetic (SAM-B at 1024x1024: about 0.2 s instead of
about 19 s on this CPU), and the graph's groups are turned into ``(parameter name, axis)`` members that
the surgery applies to the real model by name.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .errors import VitslimError
from .family import Family
from .reshape import owner_of
from .structure import Structure

_LAYER_TYPES = (nn.Linear, nn.modules.conv._ConvNd, nn.LayerNorm, nn.GroupNorm)


def meta_shadow(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers live on the meta device (no data copied)."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=True)  # traced via autograd
            for p in module.parameters()}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in module.buffers()})
    return copy.deepcopy(module, memo).eval()


def _owner_is_layer(root: nn.Module, name: str) -> bool:
    return isinstance(owner_of(root, name)[0], _LAYER_TYPES)


def _members_of(item, dg) -> list[tuple[str, int]]:
    """``(param name, axis)`` pairs a graph item prunes; [] for tp's internal op nodes."""
    target = item.dep.target.module
    out_side = item.dep.handler.__name__.startswith("prune_out")
    if isinstance(target, nn.Parameter):
        return [(dg._param_to_name[target], item.dep.target.pruning_dim)]
    name = dg._module2name.get(target)
    if name is None:
        return []
    found = []
    for leaf, param in target.named_parameters(recurse=False):
        if isinstance(target, (nn.Linear, nn.modules.conv._ConvNd)):
            if leaf == "weight":
                found.append((f"{name}.weight", 0 if out_side else 1))
            elif out_side:
                found.append((f"{name}.{leaf}", 0))
        elif isinstance(target, (nn.LayerNorm, nn.GroupNorm)):
            found.append((f"{name}.{leaf}", 0))
        else:
            raise VitslimError(f"the dependency graph reached {name} ({type(target).__name__}), "
                                      f"which vitslim's surgery does not know")
    return found


def embedding_params_from_graph(encoder: nn.Module, structure: Structure, input_shape: tuple[int, ...]) -> list[tuple[str, int]]:
    """Every ``(param name, axis)`` coupled to the output channels of ``structure.embedding_root``.

    Parameters not owned by a standard layer (position embeddings, tokens, SAM's rel-pos tables, ...)
    are given to the graph with the axes the structure description names.
    """
    import torch_pruning as tp

    shadow = meta_shadow(encoder)
    params = dict(shadow.named_parameters())
    declared = dict(structure.embedding_params)
    for block in structure.blocks:
        declared.update(dict(block.attn.head_dim_params))
    unwrapped = [(params[n], axis) for n, axis in declared.items() if n in params and not _owner_is_layer(shadow, n)]
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        dg = tp.DependencyGraph().build_dependency(
            shadow, example_inputs=torch.empty(1, *input_shape, device="meta"),
            unwrapped_parameters=unwrapped, verbose=False,
        )
    root = shadow.get_submodule(structure.embedding_root)
    fn = tp.prune_conv_out_channels if isinstance(root, nn.modules.conv._ConvNd) else tp.prune_linear_out_channels
    group = dg.get_pruning_group(root, fn, [0])
    members: list[tuple[str, int]] = []
    for item in group:
        members_here = _members_of(item, dg)
        if list(item.idxs) != [0] and members_here:
            raise VitslimError(f"embedding channel 0 maps to channels {list(item.idxs)} of "
                                      f"{dg._module2name.get(item.dep.target.module)}: not a plain coupling")
        for m in members_here:
            if m not in members:
                members.append(m)
    return members


def graph_embedding_params(encoder: nn.Module, structure: Structure, family: Family, model: nn.Module) -> list[tuple[str, int]]:
    """:func:`embedding_params_from_graph` at the family's input size."""
    return embedding_params_from_graph(encoder, structure, family.input_shape(model))
