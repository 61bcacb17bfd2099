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

from .errors import UsageError, VitslimError
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


# -- the one adapter over torch-pruning's objects (tested with the versions pyproject.toml allows) --------
def _build_graph(shadow: nn.Module, input_shape: tuple[int, ...], unwrapped: list):
    import torch_pruning as tp

    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(
            shadow, example_inputs=torch.empty(1, *input_shape, device="meta"),
            unwrapped_parameters=unwrapped, verbose=False)


def _residual_items(dg, root: nn.Module) -> list[tuple[object, bool, int, list[int]]]:
    """What pruning output channel 0 of ``root`` touches: (target module or parameter, whether its output
    side is pruned, the pruned axis for a bare parameter, the channel indices there)."""
    import torch_pruning as tp

    fn = tp.prune_conv_out_channels if isinstance(root, nn.modules.conv._ConvNd) else tp.prune_linear_out_channels
    return [(item.dep.target.module, item.dep.handler.__name__.startswith("prune_out"),
             item.dep.target.pruning_dim, list(item.idxs)) for item in dg.get_pruning_group(root, fn, [0])]


def _members_of(target, out_side: bool, axis: int, names: dict) -> list[tuple[str, int]]:
    """``(param name, axis)`` pairs one graph item prunes; [] for internal op nodes."""
    if isinstance(target, nn.Parameter):
        return [(names[id(target)], axis)]
    name = names.get(id(target))
    if name is None:
        return []
    found = []
    for leaf, _ in target.named_parameters(recurse=False):
        if isinstance(target, (nn.Linear, nn.modules.conv._ConvNd)):
            transposed = isinstance(target, nn.modules.conv._ConvTransposeNd)  # weight is (in, out, ...)
            if leaf == "weight":
                found.append((f"{name}.weight", (0 if out_side else 1) if not transposed else (1 if out_side else 0)))
            elif out_side:
                found.append((f"{name}.{leaf}", 0))
        elif isinstance(target, (nn.LayerNorm, nn.GroupNorm)):
            found.append((f"{name}.{leaf}", 0))
        else:
            raise VitslimError(f"the dependency graph reached {name} ({type(target).__name__}), "
                               f"which vitslim's surgery does not know")
    return found


class _Features(nn.Module):
    """The encoder as the graph traces it: its output features as a list (a model output object, such as
    transformers' dataclasses, is not something torch-pruning's tracer reads reliably)."""

    def __init__(self, encoder: nn.Module, features):
        super().__init__()
        self.encoder = encoder
        self.features = features

    def forward(self, x):
        return list(self.features(self.encoder(x)))


def stream_params_from_graph(encoder: nn.Module, structure: Structure, input_shape: tuple[int, ...],
                             features=None) -> list[list[tuple[str, int]]]:
    """For each residual stream (see :meth:`Structure.streams`), every ``(param name, axis)`` coupled to
    the output channels of its root, from one dependency graph of ``encoder`` (its output mapped by
    ``features``, the family's :meth:`~vitslim.Family.graph_outputs`, when given).

    Parameters not owned by a standard layer (position embeddings, tokens, SAM's rel-pos tables, ...)
    are given to the graph with the axes the structure description names.
    """
    shadow = meta_shadow(encoder)
    params = dict(shadow.named_parameters())
    names = {id(p): n for n, p in params.items()}
    names.update({id(m): n for n, m in shadow.named_modules()})
    declared = [m for stream in structure.streams() for m in stream.params]
    declared += [m for block in structure.blocks for m in block.attn.head_dim_params]
    unwrapped = [(params[n], axis) for n, axis in dict.fromkeys(declared)
                 if n in params and not _owner_is_layer(shadow, n)]
    dg = _build_graph(shadow if features is None else _Features(shadow, features), input_shape, unwrapped)
    found = []
    for stream in structure.streams():
        members: list[tuple[str, int]] = []
        for target, out_side, axis, idxs in _residual_items(dg, shadow.get_submodule(stream.root)):
            here = _members_of(target, out_side, axis, names)
            if idxs != [0] and here:
                raise VitslimError(f"residual channel 0 of {stream.root} maps to channels {idxs} of "
                                   f"{names.get(id(target))}: not a plain coupling")
            members += [m for m in here if m not in members]
        found.append(members)
    return found


def embedding_params_from_graph(encoder: nn.Module, structure: Structure, input_shape: tuple[int, ...]) -> list[tuple[str, int]]:
    """Every ``(param name, axis)`` coupled to the output channels of ``structure.embedding_root``."""
    return stream_params_from_graph(encoder, structure, input_shape)[0]


def checked_stream_params(encoder: nn.Module, structure: Structure, family: Family, model: nn.Module) -> list[list[tuple[str, int]]]:
    """Each residual stream's coupling from the graph (at the family's input size), which must equal the
    family's description: loading a saved file relies on the description alone. A disagreement is one
    clear :class:`UsageError`."""
    found = stream_params_from_graph(encoder, structure, family.input_shape(model), family.graph_outputs)
    for stream, params in zip(structure.streams(), found):
        missing = sorted(set(params) - set(stream.params))
        extra = sorted(set(stream.params) - set(params))
        if missing or extra:
            raise UsageError(
                f"the '{family.name}' family's description of this model disagrees with its dependency "
                f"graph at {stream.root} ({'not described: ' + ', '.join(n for n, _ in missing[:3]) if missing else ''}"
                f"{'; not coupled: ' + ', '.join(n for n, _ in extra[:3]) if extra else ''}): its embedding "
                f"width cannot be pruned safely; prune part='bottleneck' or fix the family")
    return found


def checked_embedding_params(encoder: nn.Module, structure: Structure, family: Family, model: nn.Module) -> list[tuple[str, int]]:
    """The first residual stream's checked coupling (see :func:`checked_stream_params`)."""
    return checked_stream_params(encoder, structure, family, model)[0]
