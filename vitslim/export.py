"""Export: a model's encoder as ONNX, or the whole model as a Hugging Face folder (where the family can)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_write


class _OutputFeatures(nn.Module):
    """The encoder, returning the family's output features as a tuple (a dict output has no ONNX form)."""

    def __init__(self, encoder: nn.Module, family):
        super().__init__()
        self.encoder, self.family = encoder, family

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.family.output_features(self.encoder(x)))


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = 17, batch: int = 1) -> Path:
    """Write the encoder of ``model`` to ``path`` as ONNX, atomically: input ``image``, output ``output``
    (an encoder with several output features, such as SAM 2's FPN levels: ``output_0``, ``output_1``, ...,
    in :meth:`~vitslim.Family.output_features` order).

    Uses torch's TorchScript-based exporter (``dynamo=False``), which needs no extra package.
    """
    from .registry import family_of

    family = family_of(model)
    encoder = family.encoder(model).eval()
    x = family.example_input(model, batch=batch, device=next(encoder.parameters()).device)
    wrapped = _OutputFeatures(encoder, family).eval()
    from .graph import meta_shadow

    with torch.no_grad():  # how many outputs, counted on the meta device (no arithmetic)
        n = len(_OutputFeatures(meta_shadow(encoder), family)(x.to("meta")))
    names = ["output"] if n == 1 else [f"output_{i}" for i in range(n)]

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (x,), tmp, dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=names)

    return atomic_write(path, write)


def export_hf(model: nn.Module, folder: str | os.PathLike, force: bool = False) -> Path:
    """Write ``model`` as a Hugging Face model folder (``config.json`` + ``model.safetensors``) that the
    family's library loads with ``from_pretrained`` (SAM: ``transformers.SamModel``). The folder is
    written whole or not at all; an existing non-empty folder is refused unless ``force``."""
    import shutil
    import tempfile

    from .errors import UsageError
    from .registry import family_of

    target = Path(folder)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not force:
        raise UsageError(f"{target} exists and is not an empty folder: choose another, or pass --force")
    target.parent.mkdir(parents=True, exist_ok=True)
    family = family_of(model)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        family.export_hf(model, staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target
