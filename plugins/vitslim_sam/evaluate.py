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


def _predict(predictor, points=None, boxes=None) -> torch.Tensor:
    """Single-mask prediction for a batch of prompts, as bool masks at image resolution."""
    dev = predictor.device
    coords = labels = box = None
    if points is not None:
        coords = predictor.transform.apply_coords_torch(points.to(dev).float(), predictor.original_size)
        labels = torch.ones(points.shape[:2], dtype=torch.int, device=dev)
    if boxes is not None:
        box = predictor.transform.apply_boxes_torch(boxes.to(dev).float(), predictor.original_size)
    masks, _, _ = predictor.predict_torch(coords, labels, box, multimask_output=False)
    return masks[:, 0].cpu()


def _prompts_from_teacher(predictor, image_hw, grid: int, seed: int):
    """Points sampled inside the teacher's masks from a grid of prompts, and those masks' boxes."""
    h, w = image_hw
    ys = (np.arange(grid) + 0.5) * h / grid
    xs = (np.arange(grid) + 0.5) * w / grid
    grid_pts = torch.tensor([[[x, y]] for y in ys for x in xs])
    masks = _predict(predictor, points=grid_pts)
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


@torch.no_grad()
def evaluate_sam(student, teacher, images: list, annotations: list | None = None, grid: int = 4, seed: int = 0,
                 overlays: str | Path | None = None) -> dict:
    """mIoU of the student's masks against the teacher's (point and box prompts), and against SA-1B
    ground truth (each annotation's point as one positive point; its box) where json files are given.
    ``overlays``: a folder for one PNG per image of both models' masks on the same prompts."""
    from segment_anything import SamPredictor

    ps, pt = SamPredictor(student), SamPredictor(teacher)
    point_ious, box_ious, gt_point, gt_box = [], [], [], []
    for i, image in enumerate(images):
        arr = np.asarray(image.convert("RGB"))
        pt.set_image(arr)  # one image embedding per image and model
        ps.set_image(arr)
        points, boxes = _prompts_from_teacher(pt, arr.shape[:2], grid, seed + i)
        if len(points):
            student_masks, teacher_masks = _predict(ps, points=points), _predict(pt, points=points)
            point_ious.append(_iou(student_masks, teacher_masks))
            box_ious.append(_iou(_predict(ps, boxes=boxes), _predict(pt, boxes=boxes)))
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
                gt_point.append(_iou(_predict(ps, points=pts), gt))
                gt_box.append(_iou(_predict(ps, boxes=bxs), gt))

    def mean(xs):
        return float(torch.cat(xs).mean()) if xs else None

    return {"images": len(images), "prompts": int(sum(len(x) for x in point_ious)),
            "miou_point_vs_teacher": mean(point_ious), "miou_box_vs_teacher": mean(box_ious),
            "miou_point_vs_gt": mean(gt_point), "miou_box_vs_gt": mean(gt_box)}
