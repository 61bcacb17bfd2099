"""Pictures of masks: the teacher's and the student's, side by side on the same prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], dtype=np.float32)


def _panel(image: np.ndarray, masks: torch.Tensor, points: torch.Tensor, boxes: torch.Tensor, caption: str):
    """``image`` with each mask tinted in its own colour, its prompt point and box drawn, and a caption."""
    from PIL import Image, ImageDraw

    out = image.astype(np.float32)
    for j, m in enumerate(masks.numpy()):
        out[m] = 0.45 * out[m] + 0.55 * PALETTE[j % len(PALETTE)]
    panel = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(panel)
    r = max(3, image.shape[1] // 120)
    for j, ((x, y), box) in enumerate(zip(points[:, 0].tolist(), boxes.tolist())):
        colour = tuple(int(c) for c in PALETTE[j % len(PALETTE)])
        draw.rectangle(box, outline=colour, width=max(1, r // 2))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 255), outline=(0, 0, 0))
    bar = Image.new("RGB", (panel.width, 14 + 2 * r), (0, 0, 0))
    ImageDraw.Draw(bar).text((4, 2), caption, fill=(255, 255, 255))
    framed = Image.new("RGB", (panel.width, panel.height + bar.height))
    framed.paste(bar, (0, 0))
    framed.paste(panel, (0, bar.height))
    return framed


def write_overlay(path: Path, image: np.ndarray, points: torch.Tensor, boxes: torch.Tensor,
                  teacher_masks: torch.Tensor, student_masks: torch.Tensor, point_miou: float, box_miou: float,
                  limit: int = 8) -> Path:
    """A PNG with the teacher's masks (left) and the student's (right) for the first ``limit`` prompts
    (point prompts: their masks; boxes drawn beside), each panel captioned; the student's with its mIoU
    against the teacher on this image."""
    from PIL import Image

    k = min(limit, len(points))
    left = _panel(image, teacher_masks[:k], points[:k], boxes[:k], "teacher")
    right = _panel(image, student_masks[:k], points[:k], boxes[:k],
                   f"student  mIoU vs teacher: points {point_miou:.3f}, boxes {box_miou:.3f}")
    sheet = Image.new("RGB", (left.width + right.width + 8, left.height), (255, 255, 255))
    sheet.paste(left, (0, 0))
    sheet.paste(right, (left.width + 8, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    from vitslim.atomic import atomic_write

    return atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
