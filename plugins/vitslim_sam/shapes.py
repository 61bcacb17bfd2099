"""Generated segmentation data in SA-1B's layout: textured shapes on textured backgrounds.

Each scene has 3-6 shapes (ellipses, rotated rectangles, triangles, polygons, stars), each filled with
its own texture (solid with noise, stripes, checkers, smooth noise, gradients) over a textured
background; later shapes occlude earlier ones, and each annotation is the visible part. A folder holds
``<image>.jpg`` and beside it ``<image>.json`` with SA-1B's fields (COCO RLE ``segmentation``,
``bbox`` as x, y, w, h, ``area``, ``point_coords``), so ``vitslim eval`` reads it as it reads SA-1B.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .rle import mask_to_rle

MIN_AREA = 400  # visible pixels an annotation needs (a 20 x 20 square)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """An (size, size, 3) float texture of one of five kinds, with two random colours."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    a, b = _colour(rng), _colour(rng)
    kind = rng.integers(5)
    if kind == 0:  # solid with pixel noise
        return a + rng.normal(0, 12, (size, size, 3))
    if kind == 1:  # stripes
        angle, period = rng.uniform(0, math.pi), rng.uniform(6, 24)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
    elif kind == 2:  # checkers
        cell = rng.integers(5, 20)
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
    elif kind == 3:  # smooth noise
        cells = rng.integers(3, 9)
        coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
        idx = np.linspace(0, cells, size)
        i0 = np.floor(idx).astype(int).clip(0, cells - 1)
        f = (idx - i0)[:, None]
        rows = coarse[i0] * (1 - f) + coarse[i0 + 1] * f  # (size, cells + 1)
        t = rows[:, i0] * (1 - f.T) + rows[:, i0 + 1] * f.T
    else:  # linear gradient
        angle = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(angle) + yy * math.sin(angle))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    t = t[..., None]
    return a * (1 - t) + b * t + rng.normal(0, 4, (size, size, 3))


def _shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A bool mask of one random shape."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = rng.uniform(0.12, 0.88, 2) * size
    r = rng.uniform(0.09, 0.25) * size
    kind = rng.integers(5)
    angle = rng.uniform(0, 2 * math.pi)
    if kind == 0:  # ellipse, as a 48-gon so that it can rotate
        ax, ay = r, r * rng.uniform(0.45, 1.0)
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        pts = np.stack([ax * np.cos(t), ay * np.sin(t)], 1)
    elif kind == 1:  # rectangle
        w, h = r, r * rng.uniform(0.4, 1.0)
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
    elif kind == 2:  # triangle, no sliver
        t = rng.uniform(0, 2 * math.pi) + np.array([0, 2, 4]) * math.pi / 3 + rng.uniform(-0.5, 0.5, 3)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif kind == 3:  # regular polygon
        t = np.linspace(0, 2 * math.pi, int(rng.integers(5, 9)), endpoint=False)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    else:  # star
        n = int(rng.integers(4, 7))
        t = np.linspace(0, 2 * math.pi, 2 * n, endpoint=False)
        rad = np.where(np.arange(2 * n) % 2 == 0, r, r * rng.uniform(0.35, 0.6))
        pts = np.stack([rad * np.cos(t), rad * np.sin(t)], 1)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = pts @ rot.T + [cx, cy]
    draw.polygon([tuple(p) for p in pts.tolist()], fill=255)
    return np.asarray(canvas) > 0


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        inner = out.copy()
        inner[1:] &= out[:-1]
        inner[:-1] &= out[1:]
        inner[:, 1:] &= out[:, :-1]
        inner[:, :-1] &= out[:, 1:]
        out = inner
    return out


def render_scene(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, list[np.ndarray]]:
    """One image (size, size, 3) uint8 and the visible masks of its shapes (largest first dropped
    when occluded below :data:`MIN_AREA` pixels)."""
    image = _texture(rng, size) * rng.uniform(0.5, 1.0) + rng.uniform(0, 80)  # a calmer background
    masks: list[np.ndarray] = []
    for _ in range(int(rng.integers(3, 7))):
        m = _shape_mask(rng, size)
        image[m] = _texture(rng, size)[m]
        masks = [old & ~m for old in masks] + [m]
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, [m for m in masks if m.sum() >= MIN_AREA]


def annotation(mask: np.ndarray, index: int, rng: np.random.Generator) -> dict:
    """SA-1B's fields for one mask: RLE, box (x, y, w, h), area, one point inside it."""
    ys, xs = np.nonzero(mask)
    inner = _erode(mask, 3)
    iy, ix = np.nonzero(inner) if inner.any() else (ys, xs)
    j = int(rng.integers(len(iy)))
    return {
        "id": index, "segmentation": mask_to_rle(mask), "area": int(mask.sum()),
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
        "point_coords": [[float(ix[j]), float(iy[j])]], "predicted_iou": 1.0, "stability_score": 1.0,
        "crop_box": [0, 0, int(mask.shape[1]), int(mask.shape[0])],
    }


def write_sa1b_folder(folder: str | Path, count: int, seed: int = 0, size: int = 256, start: int = 0) -> Path:
    """Write ``count`` scenes as ``sa_<n>.jpg`` + ``sa_<n>.json`` (SA-1B's layout); returns the folder.
    Scene ``n`` depends only on ``seed`` and ``n``."""
    from PIL import Image

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for n in range(start, start + count):
        rng = np.random.default_rng([seed, n])
        image, masks = render_scene(rng, size)
        name = f"sa_{n}"
        Image.fromarray(image).save(root / f"{name}.jpg", quality=95)
        anns = [annotation(m, i, rng) for i, m in enumerate(masks)]
        record = {"image": {"image_id": n, "width": size, "height": size, "file_name": f"{name}.jpg"},
                  "annotations": anns}
        (root / f"{name}.json").write_text(json.dumps(record))
    return root
