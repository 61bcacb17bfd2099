"""Calibration and distillation images: a folder (recursive jpg/png), or scikit-image's samples."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from .errors import UsageError

EXTENSIONS = {".jpg", ".jpeg", ".png"}
SAMPLE_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                "retina", "stereo_motorcycle", "camera", "coins")


def find_images(folder: str | Path) -> list[Path]:
    """Every readable jpg/png under ``folder`` (recursive, sorted); unreadable files are skipped with a
    counted warning. A missing folder, or one with no readable image, is a :class:`UsageError`."""
    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"data folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not files:
        raise UsageError(f"no jpg/png images in {root}: point --data at a folder of images")
    good, bad = [], 0
    for p in files:
        try:
            with Image.open(p) as im:
                im.verify()
            good.append(p)
        except Exception:  # noqa: BLE001 - any decoding failure means "unreadable"
            bad += 1
    if not good:
        raise UsageError(f"none of the {len(files)} images in {root} could be read")
    if bad:
        warnings.warn(f"skipped {bad} unreadable image(s) of {len(files)} in {root}", stacklevel=2)
    return good


def sample_images() -> list:
    """A few real photographs shipped with scikit-image, as PIL images."""
    from PIL import Image
    from skimage import color, data

    out = []
    for name in SAMPLE_NAMES:
        arr = getattr(data, name)()
        if isinstance(arr, tuple):
            arr = arr[0]
        if arr.ndim == 2:
            arr = (color.gray2rgb(arr)).astype("uint8")
        out.append(Image.fromarray(arr[..., :3]))
    return out


class ImageDataset(Dataset):
    """Images (paths or PIL images) preprocessed by ``transform`` (the family's preprocessing)."""

    def __init__(self, images: list, transform: Callable):
        self.images = list(images)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        item = self.images[i]
        if isinstance(item, (str, Path)):
            with Image.open(item) as im:
                item = im.convert("RGB")
        return self.transform(item.convert("RGB"))


def image_dataset(folder: str | Path | None, transform: Callable) -> ImageDataset:
    """A dataset over ``folder``'s images, or over the scikit-image samples when ``folder`` is None."""
    images = sample_images() if folder is None else find_images(folder)
    return ImageDataset(images, transform)
