"""The vitslim model file: architecture description + weights + provenance, never a pickled module.

Two containers, chosen by the file name: ``.safetensors`` (the weights, with the description and
provenance as JSON in the header's metadata; nothing pickled, memory-mapped when read) and anything
else (``.pt``: a plain ``torch.save`` of a dict of strings, numbers, lists and tensors, which
``torch.load(path, weights_only=True)`` opens). Both hold the same payload and load alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from . import atomic
from .atomic import atomic_write
from .errors import ModelFileError
from .info import get_info, set_info

FORMAT = "vitslim.model"
FORMAT_VERSION = 1
SAFETENSORS = (".safetensors",)


def to_payload(model: nn.Module) -> dict:
    """Architecture description + weights + provenance of ``model``, as plain data."""
    from . import __version__
    from .registry import family_of

    family = family_of(model)
    info = get_info(model)
    structure = family.describe(model)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vitslim_version": __version__,
        "family": family.name,
        "name": info["name"],
        "config": info["config"],
        "widths": structure.widths(),
        "history": info["history"],
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }


def is_safetensors_name(path: str | os.PathLike) -> bool:
    return str(path).endswith(SAFETENSORS)


def _write_safetensors(payload: dict, tmp: str) -> None:
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for k, v in payload["state_dict"].items():  # tensors sharing memory (tied weights) are stored twice
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        tensors[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    described = {k: v for k, v in payload.items() if k != "state_dict"}
    save_file(tensors, tmp, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION),
                                      "vitslim": json.dumps(described)})


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (architecture, weights, provenance) to ``path`` atomically: safetensors for a
    ``.safetensors`` name, else a weights_only-safe ``torch.save``."""
    payload = to_payload(model)
    if is_safetensors_name(path):
        return atomic_write(path, lambda tmp: _write_safetensors(payload, tmp))
    return atomic_write(path, lambda tmp: atomic.torch_save(payload, tmp))


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with its header's length (8 bytes) and then the JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")


def _read_safetensors(p: Path) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(p), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(p))  # memory-mapped
    except Exception as exc:  # noqa: BLE001 - a truncated or damaged file
        raise ModelFileError(f"cannot read {p}: truncated, corrupt or not a vitslim model file "
                             f"({type(exc).__name__})") from None
    if meta.get("format") != FORMAT or "vitslim" not in meta:
        raise ModelFileError(f"{p} is a safetensors file without a vitslim description (save one with "
                             f"`vitslim.save` or `vitslim compress`)")
    payload = json.loads(meta["vitslim"])
    payload["format_version"] = int(meta.get("format_version", 0))
    payload["state_dict"] = state
    return payload


def read(path: str | os.PathLike) -> dict:
    """Read and validate a model file (weights_only); one clear error for anything else."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model file not found: {p}")
    if _looks_like_safetensors(p):
        payload = _read_safetensors(p)
        return _checked(payload, p)
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle error, ...
        raise ModelFileError(f"cannot read {p}: truncated, corrupt or not a vitslim model file ({type(exc).__name__})") from None
    return _checked(payload, p)


def _checked(payload: dict, p: Path) -> dict:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{p} is not a vitslim model file (save one with `vitslim.save` or `vitslim compress`)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{p} was written by a newer vitslim ({payload.get('vitslim_version')}); upgrade vitslim")
    return payload


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the exact architecture recorded in ``path`` and load its weights."""
    return from_payload(read(path), str(path)).to(device).eval()


def from_payload(payload: dict, path: str = "model") -> nn.Module:
    """Rebuild a model from :func:`to_payload`'s data."""
    from .registry import families
    from .reshape import apply_widths
    from .weights import load_into

    family = next((f for f in families() if f.name == payload["family"]), None)
    if family is None:
        raise ModelFileError(f"{path} needs the '{payload['family']}' family: install the plugin that provides it")
    model = family.create(payload["name"], pretrained=False, **payload["config"])
    encoder = family.encoder(model)
    apply_widths(encoder, family.describe(model), payload["widths"], family)
    try:
        load_into(model, payload["state_dict"], str(path))
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"{path} is damaged: {exc}") from None
    set_info(model, family.name, payload["name"], payload["config"], payload["history"])
    return model
