"""Downloading, caching, verifying and reading weight files."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch

from .errors import WeightsError


def cache_dir() -> Path:
    """Where downloaded weights live (``$VITSLIM_CACHE`` or ``~/.cache/vitslim``)."""
    return Path(os.environ.get("VITSLIM_CACHE", Path.home() / ".cache" / "vitslim"))


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, digest: str, algorithm: str = "sha256") -> Path:
    """Return the cached copy of ``url``, downloading it first if needed; its digest must match.

    The download goes to a temporary file that is renamed only once verified, so an interrupted or
    corrupt download never poisons the cache.
    """
    from .atomic import atomic_write

    target = cache_dir() / url.rsplit("/", 1)[-1]
    if target.exists():
        if file_digest(target, algorithm) == digest:
            return target
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)

    def download(tmp: str) -> None:
        try:
            urllib.request.urlretrieve(url, tmp)  # noqa: S310 - fixed https URLs
        except (urllib.error.URLError, OSError) as exc:
            raise WeightsError(
                f"cannot download {url} ({getattr(exc, 'reason', exc)}): are you offline? Download it "
                f"by hand and pass --checkpoint PATH (Python: checkpoint=PATH)"
            ) from None
        got = file_digest(Path(tmp), algorithm)
        if got != digest:
            raise WeightsError(
                f"checksum mismatch for {url} ({algorithm} {got}, expected {digest}): the download is "
                f"corrupt; try again, or pass a verified file with --checkpoint PATH"
            )

    return atomic_write(target, download)  # an interrupted or corrupt download never reaches the cache


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # inside a Hugging Face model folder


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Read a weights file (``torch.load`` with ``weights_only=True``, or safetensors), or the weights of
    a Hugging Face model folder; one clear error for missing or unreadable files."""
    import torch

    p = Path(path)
    if p.is_dir():
        found = next((p / name for name in WEIGHT_FILES if (p / name).is_file()), None)
        if found is None:
            raise WeightsError(f"no weights in folder {p} (looked for {', '.join(WEIGHT_FILES)})")
        p = found
    if not p.is_file():
        raise WeightsError(f"checkpoint file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as exc:  # noqa: BLE001 - truncated or not safetensors
            raise WeightsError(f"cannot read checkpoint {p}: not a safetensors file or corrupt ({type(exc).__name__})") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unreadable file
        raise WeightsError(f"cannot read checkpoint {p}: not a PyTorch weights file or corrupt ({type(exc).__name__})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"checkpoint {p} does not hold a state dict of tensors")
    return obj


def load_into(model: torch.nn.Module, state_dict: dict[str, Any], source: str) -> None:
    """``load_state_dict(strict=True)`` that explains a mismatch in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if len(missing) == len(own):
        raise WeightsError(f"checkpoint {source} is not a checkpoint of this model (none of its "
                           f"{len(state_dict)} keys, e.g. {next(iter(state_dict), '-')}, belongs to it)")
    if wrong:
        k = wrong[0]
        raise WeightsError(
            f"checkpoint {source} is for another model size: {k} has shape {tuple(state_dict[k].shape)}, "
            f"the model expects {tuple(own[k].shape)}"
        )
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise WeightsError(
            f"checkpoint {source} does not fit this model ({len(missing)} missing, {len(unexpected)} "
            f"unexpected keys, e.g. {what})"
        )
    model.load_state_dict(state_dict, strict=True)


def load_whole_or_part(model: torch.nn.Module, part: str, state_dict: dict[str, Any], source: str) -> None:
    """:func:`load_into` ``model``, or only its submodule ``part`` when no key of ``state_dict`` starts
    with ``part`` (a checkpoint of the encoder alone, say)."""
    if any(k.startswith(f"{part}.") for k in state_dict):
        load_into(model, state_dict, source)
    else:
        load_into(model.get_submodule(part), state_dict, source)
