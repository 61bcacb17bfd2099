"""SAM 2's image predictor for any input size, and the prompter the shared SAM evaluation protocol uses."""

from __future__ import annotations

import numpy as np
import torch


def image_predictor(model):
    """A ``SAM2ImagePredictor`` for ``model`` whose feature-map sizes follow ``model.image_size`` (the
    predictor assumes 1024x1024 inputs; a model built for another size needs its own)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model)
    size = model.image_size
    predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
    return predictor


class Sam2Prompter:
    """Single-mask predictions of a SAM 2 model for batches of prompts (``set_image`` and ``masks``, as
    :class:`vitslim_sam.evaluate.SamPrompter`)."""

    def __init__(self, model):
        self.predictor = image_predictor(model)

    def set_image(self, image: np.ndarray) -> None:
        self.predictor.set_image(image)

    def masks(self, points: torch.Tensor | None = None, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Bool masks (N, H, W) at image resolution for N point prompts (N, 1, 2) or boxes (N, 4)."""
        n = len(points if points is not None else boxes)
        coords = labels = box = None
        if points is not None:
            coords, labels = points.float().numpy(), np.ones(points.shape[:2], dtype=np.int64)
        if boxes is not None:
            box = boxes.float().numpy()
        masks, _, _ = self.predictor.predict(coords, labels, box, multimask_output=False)
        return torch.from_numpy(masks).reshape(n, *masks.shape[-2:]) > 0.5
