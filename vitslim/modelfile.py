"""The vitslim model file: architecture description + weights + provenance, never a pickled module.

The file is a plain ``torch.save`` of a dict of strings, numbers, lists and tensors, so
``torch.load(path, weights_only=True)`` opens it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .errors import ModelFileError, UsageError
from .info import get_info, set_info

FORMAT = "vitslim.model"
FORMAT_VERSION = 1


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, in one line, if ``path`` cannot be written (missing or read-only folder)."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"cannot write {target}: it is a folder; give a file name")
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {target}: folder {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        raise UsageError(f"cannot write {target}: folder {target.parent} is not writable")
    return target


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``, so no half-written file is ever left."""
    target = check_writable(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is not what a saved model should have
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


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


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (architecture, weights, provenance) to ``path`` atomically."""
    payload = to_payload(model)
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read(path: str | os.PathLike) -> dict:
    """Read and validate a model file (weights_only); one clear error for anything else."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model file not found: {p}")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle error, ...
        raise ModelFileError(f"cannot read {p}: truncated, corrupt or not a vitslim model file ({type(exc).__name__})") from None
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
