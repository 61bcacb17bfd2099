"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from . import cost, modelfile
from .errors import UsageError
from .info import get_info
from .registry import family_for_name, family_of
from .structure import Structure


def create(name: str, pretrained: bool = True, checkpoint: str | os.PathLike | None = None,
           seed: int | None = None, **config: Any) -> nn.Module:
    """Build a model by name (``"sam-b"``, ``"timm:vit_base_patch16_224"``).

    ``pretrained`` loads the official weights (downloaded once, checksum verified); ``checkpoint`` loads
    a local weights file instead. ``seed`` makes the random initialisation reproducible (without it,
    torch's global generator is used). ``config`` overrides architecture arguments (e.g. ``depth=2``).
    """
    family = family_for_name(name)
    if seed is None:
        return family.create(name, pretrained=pretrained, checkpoint=checkpoint, **config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return family.create(name, pretrained=pretrained, checkpoint=checkpoint, **config)


def open_folder(folder: str | os.PathLike) -> nn.Module:
    """The model in a folder another library wrote (e.g. ``SamModel.save_pretrained``), read by the first
    family that knows its layout."""
    from .registry import families

    for family in families():
        model = family.open_folder(folder)
        if model is not None:
            return model
    raise UsageError(f"{folder} is a folder no installed family reads (a transformers SAM folder, say)")


def is_model_file(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a saved model file rather than a model name."""
    text = str(spec)
    return os.path.exists(text) or text.endswith((".pt", ".pth", ".safetensors"))


def check_model(spec: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> None:
    """The cheap checks of :func:`open_model`, before any work: the file or folder exists, the name is
    one an installed family builds, ``checkpoint`` exists and goes with a name. One clear error each."""
    from pathlib import Path

    from .errors import ModelFileError, WeightsError

    if os.path.isdir(spec):
        return
    if is_model_file(spec):
        if checkpoint is not None:
            raise UsageError(f"--checkpoint applies to model names, and {spec} is a model file")
        if not os.path.isfile(spec):
            raise ModelFileError(f"model file not found: {spec}")
        return
    family_for_name(str(spec)).check_name(str(spec))
    if checkpoint is not None and not Path(checkpoint).exists():
        raise WeightsError(f"checkpoint file not found: {checkpoint}")


def open_model(spec: str | os.PathLike, pretrained: bool = True, checkpoint: str | None = None,
               seed: int | None = None) -> nn.Module:
    """A saved vitslim file (if ``spec`` is a path to one) or a model built by name (random weights
    seeded with ``seed`` when neither ``pretrained`` nor ``checkpoint``)."""
    if os.path.isdir(spec):  # another library's model folder (transformers' SamModel, ...)
        return open_folder(spec)
    if is_model_file(spec):
        if checkpoint is not None:
            raise UsageError(f"--checkpoint applies to model names, and {spec} is a model file")
        return modelfile.load(str(spec))
    return create(str(spec), pretrained=pretrained, checkpoint=checkpoint, seed=seed)


def optimize(model: nn.Module, kernel: str = "auto") -> nn.Module:
    """Make ``model`` faster at inference without changing its outputs (the family's fused attention);
    in place, and returns it. Files saved afterwards are unchanged (same state dict). ``kernel`` picks
    the fused implementation (SAM: ``auto``, ``sdpa``, ``chunked``, ``flex``); ``auto`` chooses per device."""
    return family_of(model).optimize(model, kernel=kernel)


def describe(model: nn.Module) -> Structure:
    """The family-agnostic structure of ``model``'s encoder."""
    return family_of(model).describe(model)


def save(model: nn.Module, path: str | os.PathLike):
    """Write ``model`` to one safe file (weights_only-loadable; atomic)."""
    return modelfile.save(model, path)


def load(path: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """Rebuild a saved model: a real ``segment_anything`` ``Sam`` or a real timm model."""
    return modelfile.load(path, device=device)


def inspect(model: nn.Module | str | os.PathLike, macs: bool = True) -> dict:
    """Widths, parameters and MACs of a model, a model name or a saved file.

    MACs are reported twice: ``modules`` as torch-pruning's ``count_ops_and_params`` counts them (the
    SlimSAM paper's convention) and ``with_attention`` adding q.k, attn.v and rel-pos terms.
    """
    source: dict[str, Any] = {}
    if isinstance(model, (str, os.PathLike)):
        spec = str(model)
        if os.path.isdir(spec):
            source = {"folder": spec}
            model = open_folder(spec)
        elif is_model_file(spec):
            payload = modelfile.read(spec)  # read once: its version for the report, its model to inspect
            source = {"file": spec, "vitslim_version": payload["vitslim_version"]}
            model = modelfile.from_payload(payload, spec).eval()
        else:
            model = create(spec, pretrained=False)
    family = family_of(model)
    info = get_info(model) or {}
    structure = family.describe(model)
    encoder = family.encoder(model)
    enc_params = cost.count_params(encoder)
    extra_params, extra_macs = family.extra_cost(model) if macs else (0, 0)
    report: dict[str, Any] = {
        "family": family.name,
        "name": info.get("name"),
        "input_shape": list(family.input_shape(model)),
        **source,
        "widths": structure.widths(),
        "encoder": {"params": enc_params},
        "model": {"params": enc_params + extra_params},
        "history": info.get("history", []),
    }
    if macs:
        mod = cost.module_macs(encoder, family, model)
        att = cost.attention_macs(structure)
        report["encoder"].update({"macs": mod, "macs_with_attention": mod + att})
        report["model"].update({"macs": mod + extra_macs, "macs_with_attention": mod + att + extra_macs})
    return report
