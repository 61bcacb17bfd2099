"""Consistent augmentation for distillation: teacher and student see the same augmented batch.

With few images, matching the teacher on the images alone overfits them; matching it on a stream of
new views of them (flips, random resized crops, colour jitter, mixups) transfers much more of its
function ("Knowledge distillation: a good teacher is patient and consistent", Beyer et al. 2022). The
views are made from the encoder's (already preprocessed) input tensors, so they need no knowledge of
the family, and every reference model is run on the same view as the student.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..errors import UsageError


@dataclass(frozen=True)
class Augment:
    """Which views to make; each is applied to a whole (N, C, H, W) batch with one generator.

    ``flip``: horizontal flip with probability 1/2. ``crop``: random resized crop keeping ``crop``
    to 1 of the area (aspect 3/4-4/3), resized back. ``jitter``: brightness, contrast and saturation
    each moved by up to this fraction. ``mixup``: each image mixed with another of the batch with a
    weight drawn from Beta(mixup, mixup) (0: off).
    """

    flip: bool = True
    crop: float = 0.35
    jitter: float = 0.2
    mixup: float = 1.0

    def describe(self) -> str:
        """The spec that :func:`parse_augment` turns back into these views."""
        items = (["flip"] if self.flip else []) + ([f"crop={self.crop:g}"] if self.crop < 1 else [])
        items += [f"jitter={self.jitter:g}"] if self.jitter > 0 else []
        items += [f"mixup={self.mixup:g}"] if self.mixup > 0 else []
        return ",".join(items) or "none"

    @property
    def active(self) -> bool:
        return self.flip or self.crop < 1 or self.jitter > 0 or self.mixup > 0

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if not self.active:
            return x
        n = x.shape[0]
        out = x.float()
        if self.flip or self.crop < 1:
            out = _crop_flip(out, self.crop, self.flip, gen)
        if self.jitter > 0:
            out = _jitter(out, self.jitter, gen)
        if self.mixup > 0 and n > 1:
            lam = _beta(n, self.mixup, gen).view(n, 1, 1, 1).to(out.device)
            partner = torch.randperm(n, generator=gen).to(out.device)
            out = lam * out + (1 - lam) * out[partner]
        return out.to(x.dtype)


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _beta(n: int, a: float, gen: torch.Generator) -> torch.Tensor:
    """Beta(a, a) samples, reproducible from ``gen`` (numpy's sampler, seeded from it)."""
    import numpy as np

    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen)))
    return torch.from_numpy(rng.beta(a, a, n)).float()


def _crop_flip(x: torch.Tensor, min_area: float, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random resized crops (and flips) of every image, resampled to the input size in one grid_sample."""
    n = x.shape[0]
    area = _uniform(n, min_area, 1.0, gen) if min_area < 1 else torch.ones(n)
    aspect = torch.exp(_uniform(n, -0.2877, 0.2877, gen)) if min_area < 1 else torch.ones(n)  # 3/4..4/3
    w = (area * aspect).sqrt().clamp(max=1.0)
    h = (area / aspect).sqrt().clamp(max=1.0)
    tx = (1 - w) * _uniform(n, -1, 1, gen)
    ty = (1 - h) * _uniform(n, -1, 1, gen)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _jitter(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness (added), contrast (around each image's mean) and saturation (around its grey)."""
    n = x.shape[0]
    shape = (n, 1, 1, 1)
    brightness = _uniform(n, -amount, amount, gen).view(shape).to(x.device)
    contrast = _uniform(n, 1 - amount, 1 + amount, gen).view(shape).to(x.device)
    saturation = _uniform(n, 1 - amount, 1 + amount, gen).view(shape).to(x.device)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * contrast
    if x.shape[1] > 1:
        grey = x.mean(dim=1, keepdim=True)
        x = grey + (x - grey) * saturation
    return x + brightness


NONE = Augment(flip=False, crop=1.0, jitter=0.0, mixup=0.0)
DEFAULT = Augment()


def parse_augment(spec: "str | Augment | None") -> Augment:
    """``"default"``, ``"none"``, or comma-separated ``name[=value]`` items (``flip,crop=0.5,mixup=0.2``):
    the named views only."""
    if isinstance(spec, Augment):
        return spec
    if spec is None or spec == "none":
        return NONE
    if spec == "default":
        return DEFAULT
    values: dict = {"flip": False, "crop": 1.0, "jitter": 0.0, "mixup": 0.0}
    names = {f.name for f in fields(Augment)}
    for item in spec.split(","):
        key, _, value = item.strip().partition("=")
        if key not in names:
            raise UsageError(f"unknown augmentation '{key}': use default, none, or a list of {', '.join(sorted(names))}")
        try:
            values[key] = True if key == "flip" else float(value) if value else getattr(DEFAULT, key)
        except ValueError:
            raise UsageError(f"bad augmentation value '{item}': write e.g. crop=0.35") from None
    if not 0 < values["crop"] <= 1 or values["jitter"] < 0 or values["mixup"] < 0:
        raise UsageError(f"bad augmentation '{spec}': crop in (0, 1], jitter and mixup >= 0")
    return Augment(**values)
