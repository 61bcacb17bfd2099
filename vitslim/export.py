"""ONNX export of a model's encoder (SAM: the image encoder; timm: the whole model)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .modelfile import atomic_write


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = 17, batch: int = 1) -> Path:
    """Write the encoder of ``model`` to ``path`` as ONNX (input ``image``, output ``output``), atomically.

    Uses torch's TorchScript-based exporter (``dynamo=False``), which needs no extra package.
    """
    from .registry import family_of

    family = family_of(model)
    encoder = family.encoder(model).eval()
    x = family.example_input(model, batch=batch, device=next(encoder.parameters()).device)

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(encoder, (x,), tmp, dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=["output"])

    return atomic_write(path, write)
