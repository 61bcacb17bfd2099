"""Label-free evaluation of a SAM 3 student against its teacher, through ``Sam3Model``'s own prompts.

Per image, each model embeds the image once. The box prompts are SA-1B's annotation boxes where an
``<image>.json`` sits beside the image (then the student is also scored against the ground-truth
masks), else the teacher's own most confident detections for a generic text prompt. Each box goes to
both models as a box exemplar (SAM 3's geometric prompt, with the text "visual" as SAM 3 does for box
prompts alone); each model's most confident mask for it is compared (IoU). Text prompts named by the
annotations (a ``category`` field) are scored the same way, on the union of the masks above 0.5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch
    from torch import nn

GENERIC = "object"  # the text prompt whose detections give the boxes when no annotation does
BOX_TEXT = "visual"  # the text SAM 3 pairs with box prompts alone


def tokenizer_for(model: nn.Module):
    """SAM 3's tokenizer if this machine has it (``Sam3Processor.from_pretrained("facebook/sam3")`` was
    run once), else None: prompts then use fixed token ids (fine to compare a student with its teacher,
    meaningless for concepts)."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained("facebook/sam3", local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached here
        return None


class Sam3Prompter:
    """Masks from a ``Sam3Model`` for box or text prompts on one image at a time."""

    def __init__(self, model: nn.Module, preprocess, tokenizer=None):
        self.model = model.eval()
        self.preprocess = preprocess  # (model, PIL image) -> the vision encoder's input (the family's)
        self.tokenizer = tokenizer
        self.vision = None
        self.size = (0, 0)

    def _ids(self, text: str) -> dict[str, torch.Tensor]:
        import torch

        device = next(self.model.parameters()).device
        if self.tokenizer is not None:
            enc = self.tokenizer([text], padding="max_length", max_length=32, truncation=True, return_tensors="pt")
            return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}
        cfg = self.model.config.text_config
        vocab = cfg.vocab_size
        body = [(sum(map(ord, text)) * (i + 1)) % (vocab - 2) + 2 for i in range(len(text.split()))]
        bos = cfg.bos_token_id if cfg.bos_token_id is not None and cfg.bos_token_id < vocab else 0
        eos = cfg.eos_token_id if cfg.eos_token_id is not None and cfg.eos_token_id < vocab else 1
        ids = torch.tensor([[bos, *body, eos]], device=device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def set_image(self, image) -> None:
        import torch

        device = next(self.model.parameters()).device
        x = self.preprocess(self.model, image)[None].to(device)
        with torch.no_grad():
            self.vision = self.model.vision_encoder(x)
        self.size = image.size[::-1]  # (height, width)

    def _run(self, text: str, boxes: torch.Tensor | None = None):
        import torch

        kw = {}
        if boxes is not None:  # (N, 4) xyxy pixels -> normalised cxcywh, one prompt per box
            h, w = self.size
            b = boxes.float()
            cxcywh = torch.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                                  (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], -1)
            kw = {"input_boxes": cxcywh[:, None], "input_boxes_labels": torch.ones(len(b), 1, dtype=torch.long)}
        n = len(boxes) if boxes is not None else 1
        vision = self.vision if n == 1 else _repeat(self.vision, n)
        ids = self._ids(text)
        with torch.no_grad():
            out = self.model(vision_embeds=vision, input_ids=ids["input_ids"].repeat(n, 1),
                             attention_mask=ids["attention_mask"].repeat(n, 1), **kw)
        scores = out.pred_logits.sigmoid()
        if getattr(out, "presence_logits", None) is not None:
            scores = scores * out.presence_logits.sigmoid()
        masks = torch.nn.functional.interpolate(out.pred_masks, size=self.size, mode="bilinear", align_corners=False)
        return scores, masks > 0, out.pred_boxes

    def box_masks(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N, H, W): for each box, the most confident mask."""
        import torch

        scores, masks, _ = self._run(BOX_TEXT, boxes)
        best = scores.argmax(1)
        return masks[torch.arange(len(boxes)), best]

    def text_mask(self, text: str, threshold: float = 0.5) -> torch.Tensor:
        """(H, W): the union of the masks for ``text`` scored above ``threshold``."""
        scores, masks, _ = self._run(text)
        keep = scores[0] > threshold
        return masks[0][keep].any(0) if keep.any() else masks[0][:0].any(0)

    def detections(self, text: str, k: int) -> torch.Tensor:
        """The ``k`` most confident boxes for ``text``, xyxy in pixels."""
        scores, _, boxes = self._run(text)
        h, w = self.size
        top = scores[0].topk(min(k, scores.shape[1])).indices
        import torch

        return boxes[0][top] * torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)


def _repeat(vision, n: int):
    """Vision embeddings of one image, repeated for ``n`` prompts."""
    import copy

    out = copy.copy(vision)
    out.fpn_hidden_states = tuple(t.expand(n, *t.shape[1:]) for t in vision.fpn_hidden_states)
    out.fpn_position_encoding = tuple(t.expand(n, *t.shape[1:]) for t in vision.fpn_position_encoding)
    return out


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-mask IoU of two (N, H, W) boolean stacks (1 where both are empty)."""
    import torch

    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def evaluate_sam3(student: nn.Module, teacher: nn.Module, images: list, preprocess, annotations: list | None = None,
                  boxes_per_image: int = 4, overlays: str | Path | None = None) -> dict[str, Any]:
    """mIoU of the student's masks against the teacher's (box prompts, and text prompts where the
    annotations name concepts), and against SA-1B ground truth where annotation files are given;
    ``preprocess(model, image)`` makes the vision encoder's input."""
    import numpy as np
    import torch

    from vitslim_sam.rle import rle_to_mask

    tok = tokenizer_for(teacher)
    ps, pt = Sam3Prompter(student, preprocess, tok), Sam3Prompter(teacher, preprocess, tok)
    box_vs_teacher, box_vs_gt, text_vs_teacher = [], [], []
    for i, image in enumerate(images):
        image = image.convert("RGB")
        pt.set_image(image)
        ps.set_image(image)
        ann = annotations[i] if annotations else None
        records = json.loads(Path(ann).read_text()).get("annotations", []) if ann is not None and Path(ann).is_file() else []
        if records:
            records = records[:boxes_per_image]
            boxes = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in (r["bbox"] for r in records)],
                                 dtype=torch.float32)
        else:
            boxes = pt.detections(GENERIC, boxes_per_image)
        teacher_masks, student_masks = pt.box_masks(boxes), ps.box_masks(boxes)
        box_vs_teacher.append(_iou(student_masks, teacher_masks))
        if records:
            gt = torch.from_numpy(np.stack([rle_to_mask(r["segmentation"]) for r in records]))
            box_vs_gt.append(_iou(student_masks, gt))
        for concept in sorted({r["category"] for r in records if "category" in r}):
            text_vs_teacher.append(_iou(ps.text_mask(concept)[None], pt.text_mask(concept)[None]))
        if overlays is not None:
            from vitslim_sam.overlay import write_overlay

            Path(overlays).mkdir(parents=True, exist_ok=True)
            centres = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], -1)[:, None]
            write_overlay(Path(overlays) / f"{i:04d}.png", np.asarray(image), centres, boxes,
                          teacher_masks.cpu(), student_masks.cpu(), float("nan"), float(box_vs_teacher[-1].mean()))
    mean = lambda xs: float(torch.cat(xs).mean()) if xs else None  # noqa: E731
    return {"images": len(images), "miou_box_vs_teacher": mean(box_vs_teacher), "miou_box_vs_gt": mean(box_vs_gt),
            "miou_text_vs_teacher": mean(text_vs_teacher)}
