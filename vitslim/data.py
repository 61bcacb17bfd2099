"""Calibration and distillation images: a folder (recursive jpg/png), or scikit-image's samples.

Every image goes through :func:`load_image`, the one place files are decoded: EXIF orientation
applied, 16-bit and float pixels scaled to 8 bits, palette / grey+alpha / CMYK turned into RGB.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import UnreadableImagesWarning, UsageError

EXTENSIONS = {".jpg", ".jpeg", ".png"}
SAMPLE_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                "retina", "stereo_motorcycle", "camera", "coins")


def to_rgb(image):
    """An 8-bit RGB copy of a PIL image of any mode (16-bit and float pixels scaled, not clipped)."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = 1.0 if arr.size == 0 or arr.max() <= 1.0 else 255.0
        else:  # 16-bit PNGs; 32-bit ints only when they exceed 8 bits
            top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    return image.convert("RGB")  # L, LA, RGBA (alpha dropped), CMYK, YCbCr, ...


def load_image(path: str | Path):
    """Decode one image file as 8-bit RGB, upright (EXIF orientation applied)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            return to_rgb(ImageOps.exif_transpose(im))
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's decoding errors
        raise UsageError(f"cannot read image {path}: {exc}") from None


def _readable(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # noqa: BLE001 - any decoding failure means "unreadable"
        return False


_FOUND: dict[tuple[str, float], list[Path]] = {}


def find_images(folder: str | Path) -> list[Path]:
    """Every readable jpg/png under ``folder`` (recursive, sorted). Unreadable files are skipped with
    one :class:`UnreadableImagesWarning` naming the first few. A missing folder, or one with no
    readable image, is a :class:`UsageError`. The scan is done once per folder (and modification time)."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"data folder not found: {root}")
    key = (str(root.resolve()), os.stat(root).st_mtime)
    if key in _FOUND:
        return list(_FOUND[key])
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not files:
        raise UsageError(f"no jpg/png images in {root}: point --data at a folder of images")
    good = [p for p in files if _readable(p)]
    bad = [p for p in files if p not in set(good)]
    if not good:
        raise UsageError(f"none of the {len(files)} images in {root} could be read")
    if bad:
        named = ", ".join(str(p.relative_to(root)) for p in bad[:3]) + (", ..." if len(bad) > 3 else "")
        warnings.warn(f"skipped {len(bad)} unreadable image(s) of {len(files)} in {root}: {named}",
                      UnreadableImagesWarning, stacklevel=2)
    _FOUND[key] = good
    return list(good)


def sample_images() -> list:
    """A few real photographs shipped with scikit-image, as PIL images."""
    from PIL import Image

    from skimage import data

    out = []
    for name in SAMPLE_NAMES:
        arr = getattr(data, name)()
        if isinstance(arr, tuple):
            arr = arr[0]
        out.append(to_rgb(Image.fromarray(arr if arr.ndim == 2 else arr[..., :3])))
    return out


class ImageDataset(Dataset):
    """Images (paths or PIL images) preprocessed by ``transform`` (the family's preprocessing)."""

    def __init__(self, images: list, transform: Callable):
        self.images = list(images)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.images[i]
        return self.transform(load_image(item) if isinstance(item, (str, Path)) else to_rgb(item))


class TensorDataset(Dataset):
    """Preprocessed images given as one (N, C, H, W) tensor."""

    def __init__(self, x: torch.Tensor):
        if x.dim() != 4:
            raise UsageError(f"image data must be a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def as_dataset(data, transform: Callable) -> Dataset:
    """Encoder inputs from a folder (None: the scikit-image samples; images are preprocessed by
    ``transform``), a (N, C, H, W) tensor of preprocessed images, or a Dataset of them."""
    if isinstance(data, torch.Tensor):
        return TensorDataset(data)
    if isinstance(data, Dataset):
        return data
    if data is None or isinstance(data, (str, os.PathLike)):
        return image_dataset(data, transform)
    raise UsageError(f"data must be a folder, a tensor or a Dataset, not {type(data).__name__}")


def image_dataset(folder: str | Path | None, transform: Callable) -> ImageDataset:
    """A dataset over ``folder``'s images, or over the scikit-image samples when ``folder`` is None."""
    images = sample_images() if folder is None else find_images(folder)
    return ImageDataset(images, transform)
