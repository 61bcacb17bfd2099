"""``evaluate``: how well a compressed student agrees with its teacher, by the family's own protocol."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from .errors import UsageError


def evaluate(student: nn.Module, teacher: nn.Module | None = None, data: str | os.PathLike | None = None,
             images: list | None = None, limit: int = 0, overlays: str | os.PathLike | None = None) -> dict[str, Any]:
    """Label-free metrics of ``student`` against ``teacher`` (default: the student's base model with its
    official weights), on the images of folder ``data`` (default: the scikit-image samples) or on
    ``images`` (paths or PIL images). SAM: mIoU of masks against the teacher's, and against SA-1B
    ground truth where ``<image>.json`` sits beside an image; timm: top-1 agreement and output cosine.
    ``overlays``: a folder for one picture per image of both models' outputs (SAM: masks side by side)."""
    from .api import create
    from .data import find_images, load_image, sample_images
    from .info import get_info
    from .registry import family_of

    family = family_of(student)
    if teacher is None:
        base = (get_info(student) or {}).get("name")
        if base is None:
            raise UsageError("no teacher given, and the student does not record its base model")
        teacher = create(base)
    if family_of(teacher).name != family.name:
        raise UsageError(f"the teacher is a {family_of(teacher).name} model, the student a {family.name} one")
    if images is None:
        images = sample_images() if data is None else find_images(data)
    if limit > 0:
        images = images[:limit]
    pil, annotations = [], []
    for item in images:
        if isinstance(item, (str, Path)):
            pil.append(load_image(item))
            annotations.append(Path(item).with_suffix(".json"))
        else:
            pil.append(item)
            annotations.append(None)
    if overlays is None:  # families written before overlays existed take four arguments
        return family.evaluate(student, teacher, pil, annotations)
    return family.evaluate(student, teacher, pil, annotations, overlays=overlays)
