"""SAM evaluation: student masks against the teacher's masks (point and box prompts), and against
SA-1B ground truth where annotation files sit beside the images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .rle import rle_to_mask


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


class SamPrompter:
    """Single-mask predictions of a SAM v1 model for batches of prompts (the interface the evaluation
    protocol asks of a family's predictor: ``set_image`` and ``masks``)."""

    def __init__(self, sam):
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(sam)

    def set_image(self, image: np.ndarray) -> None:
        self.predictor.set_image(image)

    def masks(self, points: torch.Tensor | None = None, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Bool masks (N, H, W) at image resolution for N point prompts (N, 1, 2) or boxes (N, 4)."""
        p = self.predictor
        dev = p.device
        coords = labels = box = None
        if points is not None:
            coords = p.transform.apply_coords_torch(points.to(dev).float(), p.original_size)
            labels = torch.ones(points.shape[:2], dtype=torch.int, device=dev)
        if boxes is not None:
            box = p.transform.apply_boxes_torch(boxes.to(dev).float(), p.original_size)
        masks, _, _ = p.predict_torch(coords, labels, box, multimask_output=False)
        return masks[:, 0].cpu()


def _prompts_from_teacher(predictor, image_hw, grid: int, seed: int):
    """Points sampled inside the teacher's masks from a grid of prompts, and those masks' boxes."""
    h, w = image_hw
    ys = (np.arange(grid) + 0.5) * h / grid
    xs = (np.arange(grid) + 0.5) * w / grid
    grid_pts = torch.tensor([[[x, y]] for y in ys for x in xs])
    masks = predictor.masks(points=grid_pts)
    g = torch.Generator().manual_seed(seed)
    points, boxes = [], []
    for m in masks:
        ys_, xs_ = torch.nonzero(m, as_tuple=True)
        if len(ys_) < 16:  # skip empty or tiny masks
            continue
        j = int(torch.randint(len(ys_), (1,), generator=g))
        points.append([[float(xs_[j]), float(ys_[j])]])
        boxes.append([float(xs_.min()), float(ys_.min()), float(xs_.max()), float(ys_.max())])
    return torch.tensor(points).reshape(-1, 1, 2), torch.tensor(boxes).reshape(-1, 4)


def evaluate_sam(student, teacher, images: list, annotations: list | None = None, grid: int = 4, seed: int = 0,
                 overlays: str | Path | None = None) -> dict:
    """:func:`evaluate_prompts` with SAM v1 predictors."""
    return evaluate_prompts(SamPrompter(student), SamPrompter(teacher), images, annotations, grid, seed, overlays)


@torch.no_grad()
def evaluate_prompts(ps, pt, images: list, annotations: list | None = None, grid: int = 4, seed: int = 0,
                     overlays: str | Path | None = None) -> dict:
    """mIoU of the student's masks against the teacher's (point and box prompts), and against SA-1B
    ground truth (each annotation's point as one positive point; its box) where json files are given.
    ``ps``/``pt``: the student's and teacher's prompters (see :class:`SamPrompter`). ``overlays``: a
    folder for one PNG per image of both models' masks on the same prompts."""
    point_ious, box_ious, gt_point, gt_box = [], [], [], []
    for i, image in enumerate(images):
        arr = np.asarray(image.convert("RGB"))
        pt.set_image(arr)  # one image embedding per image and model
        ps.set_image(arr)
        points, boxes = _prompts_from_teacher(pt, arr.shape[:2], grid, seed + i)
        if len(points):
            student_masks, teacher_masks = ps.masks(points=points), pt.masks(points=points)
            point_ious.append(_iou(student_masks, teacher_masks))
            box_ious.append(_iou(ps.masks(boxes=boxes), pt.masks(boxes=boxes)))
            if overlays is not None:
                from .overlay import write_overlay

                write_overlay(Path(overlays) / f"{i:04d}.png", arr, points, boxes, teacher_masks, student_masks,
                              float(point_ious[-1].mean()), float(box_ious[-1].mean()))
        ann = annotations[i] if annotations else None
        if ann is not None and Path(ann).is_file():
            records = json.loads(Path(ann).read_text()).get("annotations", [])
            if records:
                gt = torch.from_numpy(np.stack([rle_to_mask(r["segmentation"]) for r in records]))
                pts = torch.tensor([[r["point_coords"][0]] for r in records], dtype=torch.float32)
                bxs = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in (r["bbox"] for r in records)])
                gt_point.append(_iou(ps.masks(points=pts), gt))
                gt_box.append(_iou(ps.masks(boxes=bxs), gt))

    def mean(xs):
        return float(torch.cat(xs).mean()) if xs else None

    return {"images": len(images), "prompts": int(sum(len(x) for x in point_ious)),
            "miou_point_vs_teacher": mean(point_ious), "miou_box_vs_teacher": mean(box_ious),
            "miou_point_vs_gt": mean(gt_point), "miou_box_vs_gt": mean(gt_box)}
