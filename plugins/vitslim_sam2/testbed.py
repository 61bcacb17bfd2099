"""The shapes testbed for SAM 2: a small SAM 2 (Hiera trunk, FPN neck, SAM 2's prompt encoder and mask
decoder with its high-resolution features) trained on the generated scenes of the SAM testbed.

The trunk has 4 stages of widths 32/64/128/256 (1/2/3/1 blocks, windows of 8 and 4, two global blocks,
q pooling at each stage change) at 256x256; the neck and decoder work at width 64. It is trained end to
end on point and box prompts (BCE + dice, single-mask output) and scored by ``vitslim eval``'s protocol
through ``SAM2ImagePredictor``, with SAM 2's fallback to its multimask outputs turned off (this decoder
is trained for single masks only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import copy
from pathlib import Path

import numpy as np
if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch
    from torch import nn
from vitslim_sam.rle import rle_to_mask
from vitslim_sam.testbed import (
    DATA_VERSION,
    N_TEST,
    N_TRAIN,
    SIZE,
    ShapesTestbed,
    _dice_bce,
    _prompts,
)

CONFIG = {"embed_dim": 32, "num_heads": 1, "stages": [1, 2, 3, 1], "global_att_blocks": [2, 5],
          "window_spec": [8, 4, 8, 4], "window_pos_embed_bkg_spatial_size": [4, 4], "d_model": 64}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # SAM 2's normalisation of [0, 1] images


def image_features(model: nn.Module, embedding: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """What ``SAM2ImagePredictor`` gives the decoder from the image encoder's output: the lowest level plus
    the no-memory embedding, and the high-resolution levels through the decoder's projections."""
    fpn = embedding["backbone_fpn"]
    low = fpn[-1]
    if model.directly_add_no_mem_embed:
        low = low + model.no_mem_embed.view(1, -1, 1, 1)
    decoder = model.sam_mask_decoder
    return low, [decoder.conv_s0(fpn[0]), decoder.conv_s1(fpn[1])]


def _mask_loss(model: nn.Module, low: torch.Tensor, high: list[torch.Tensor], records: list[dict], k: int,
               gen: torch.Generator | None, bce_weight: float = 1.0) -> torch.Tensor:
    """BCE + dice of single masks for ``k`` annotations of one image, each prompted by a point inside it
    and by its box (a box as SAM 2's predictor gives it: two corner points, labels 2 and 3)."""
    import torch
    import torch.nn.functional as F

    pick = torch.randperm(len(records), generator=gen)[:k].tolist() if gen is not None else list(range(min(k, len(records))))
    gt = torch.from_numpy(np.stack([rle_to_mask(records[j]["segmentation"]) for j in pick]))
    if gen is not None:
        points, boxes = _prompts(gt, gen)
    else:
        points = torch.tensor([records[j]["point_coords"] for j in pick], dtype=torch.float32)
        boxes = torch.tensor([[x, y, x + w - 1, y + h - 1] for x, y, w, h in (records[j]["bbox"] for j in pick)],
                             dtype=torch.float32)
    n = len(pick)
    prompts = [(points, torch.ones(n, 1, dtype=torch.int)),
               (boxes.view(n, 2, 2), torch.tensor([[2, 3]], dtype=torch.int).repeat(n, 1))]
    pe = model.sam_prompt_encoder.get_dense_pe()
    logits = []
    for coords, labels in prompts:
        sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        masks = model.sam_mask_decoder(image_embeddings=low, image_pe=pe, sparse_prompt_embeddings=sparse,
                                       dense_prompt_embeddings=dense, multimask_output=False, repeat_image=True,
                                       high_res_features=high)[0]
        logits.append(F.interpolate(masks, size=gt.shape[-2:], mode="bilinear", align_corners=False)[:, 0])
    return _dice_bce(torch.cat(logits), gt.float().repeat(2, 1, 1), bce_weight)


class ShapesSam2Testbed(ShapesTestbed):
    """The SAM testbed's scenes and metrics, for a SAM 2 teacher (``sam2-t`` with :data:`CONFIG`)."""

    name = "shapes-sam2"
    metric = "miou_box_vs_gt"
    shipped_dir = Path(__file__).parent / "teachers"
    about = "a small SAM 2 (4-stage Hiera, widths 32-256) on generated scenes of shapes"

    def __init__(self, n_train: int = N_TRAIN, n_test: int = N_TEST, root=None, size: int = SIZE):
        super().__init__(n_train, n_test, root, size)
        self.config = {**CONFIG, "img_size": size}
        self.recipe = {"steps": 3000, "batch_size": 8, "masks_per_image": 4, "lr": 1e-3, "weight_decay": 0.01,
                       "n_train": n_train, "size": size, "data": DATA_VERSION, "family": "sam2"}

    @staticmethod
    def _preprocess(images: torch.Tensor) -> torch.Tensor:
        """SAM 2's normalisation of (N, H, W, 3) uint8 images already at the encoder's size."""
        import torch

        mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        return (images.permute(0, 3, 1, 2).float() / 255 - mean) / std

    def create_model(self) -> nn.Module:
        import vitslim

        return vitslim.create("sam2-t", pretrained=False, **self.config)

    def batch_loss(self, model: nn.Module, output: dict, records: list[list[dict]], k: int,
                   gen: torch.Generator | None, bce_weight: float = 1.0) -> torch.Tensor:
        """As SAM's, on the decoder inputs ``SAM2ImagePredictor`` makes of the encoder's dict output."""
        low, high = image_features(model, output)
        return sum(_mask_loss(model, low[b:b + 1], [h[b:b + 1] for h in high], recs, k, gen, bce_weight)
                   for b, recs in enumerate(records)) / len(records)

    def prompter(self, model: nn.Module):
        """``SAM2ImagePredictor`` on a copy of ``model`` without the fallback to multimask outputs."""
        from .predictor import Sam2Prompter

        model = copy.deepcopy(model).eval()
        model.sam_mask_decoder.dynamic_multimask_via_stability = False
        return Sam2Prompter(model)
