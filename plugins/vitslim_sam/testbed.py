"""The shapes testbed: a small SAM (SAM's own encoder, prompt encoder and mask decoder) trained on
generated scenes in SA-1B's layout (see ``shapes.py``).

The encoder is SAM's ``ImageEncoderViT`` at 256x256 (patch 16, width 96, 4 blocks, 3 heads, windows
of 8 with blocks 1 and 3 global), the neck and decoder at width 64. It is trained end to end on box and
point prompts (BCE + dice on the full-resolution masks), and scored by ``vitslim eval``'s own protocol.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch
    from torch import nn

from vitslim.testbed import Testbed

from .rle import rle_to_mask
from .shapes import write_sa1b_folder

CONFIG = {"img_size": 256, "embed_dim": 96, "depth": 4, "num_heads": 3, "global_attn_indexes": [1, 3],
          "window_size": 8, "out_chans": 64}
SIZE = 256
N_TRAIN, N_TEST = 1000, 100
DATA_VERSION = 2  # bump when the generator changes, so that cached folders are rebuilt


def shapes_folder(split: str, count: int, root: Path | None = None, size: int = SIZE) -> Path:
    """The generated ``train`` (seed 0) or ``test`` (seed 1) folder of ``count`` scenes of ``size``
    pixels, under ``root`` (default: the vitslim cache), written on first use."""
    from vitslim.weights import cache_dir

    seed = 0 if split == "train" else 1
    base = Path(root) if root is not None else cache_dir() / "testbeds" / f"shapes-v{DATA_VERSION}"
    folder = base / (f"{split}-{count}" if size == SIZE else f"{split}-{count}-{size}px")
    done = folder / ".complete"
    if not done.is_file():
        write_sa1b_folder(folder, count, seed=seed, size=size)
        done.write_text(str(count))
    return folder


@functools.lru_cache(maxsize=4)
def load_folder(folder: Path) -> tuple[torch.Tensor, list[list[dict]]]:
    """All images of a generated folder as (N, H, W, 3) uint8, and each image's annotations."""
    import torch

    files = sorted(folder.glob("sa_*.jpg"), key=lambda p: int(p.stem.split("_")[1]))
    from vitslim.data import load_image

    images = np.stack([np.asarray(load_image(f)) for f in files])
    anns = [json.loads(f.with_suffix(".json").read_text())["annotations"] for f in files]
    return torch.from_numpy(images), anns


def _dice_bce(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0) -> torch.Tensor:
    import torch.nn.functional as F

    bce = bce_weight * F.binary_cross_entropy_with_logits(logits, target)
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce + dice.mean()


def _prompts(masks: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random point inside each mask, and each mask's box jittered by up to 5% of its side."""
    import torch

    points, boxes = [], []
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        j = int(torch.randint(len(ys), (1,), generator=gen))
        points.append([float(xs[j]), float(ys[j])])
        box = torch.tensor([xs.min(), ys.min(), xs.max(), ys.max()], dtype=torch.float32)
        side = torch.tensor([box[2] - box[0], box[3] - box[1]] * 2)
        boxes.append((box + (torch.rand(4, generator=gen) - 0.5) * 0.1 * side).tolist())
    return torch.tensor(points)[:, None], torch.tensor(boxes)


def _mask_loss(model: nn.Module, embedding: torch.Tensor, pe: torch.Tensor, records: list[dict], k: int,
               gen: torch.Generator | None, bce_weight: float = 1.0) -> torch.Tensor:
    """BCE + dice of the masks the decoder predicts from one image embedding, for ``k`` of its
    annotations, each prompted by a point inside it and by its box (random picks and box jitter with
    ``gen``; without it the first ``k``, exact boxes and each annotation's own point)."""
    import torch
    import torch.nn.functional as F

    if gen is not None:
        pick = torch.randperm(len(records), generator=gen)[:k].tolist()
    else:
        pick = list(range(min(k, len(records))))
    gt = torch.from_numpy(np.stack([rle_to_mask(records[j]["segmentation"]) for j in pick]))
    if gen is not None:
        points, boxes = _prompts(gt, gen)
    else:
        points = torch.tensor([records[j]["point_coords"] for j in pick], dtype=torch.float32)
        boxes = torch.tensor([[x, y, x + w - 1, y + h - 1] for x, y, w, h in (records[j]["bbox"] for j in pick)],
                             dtype=torch.float32)
    labels = torch.ones(len(pick), 1, dtype=torch.int)
    sp_p, dense = model.prompt_encoder(points=(points, labels), boxes=None, masks=None)
    sp_b, _ = model.prompt_encoder(points=None, boxes=boxes, masks=None)
    low, _ = model.mask_decoder(embedding, pe, torch.cat([sp_p, sp_b]), dense.repeat(2, 1, 1, 1), False)
    logits = F.interpolate(low, size=gt.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return _dice_bce(logits, gt.float().repeat(2, 1, 1), bce_weight)


class ShapesTestbed(Testbed):
    """Promptable segmentation: mIoU against ground truth and against the teacher, points and boxes.
    ``n_train`` / ``n_test`` scenes of ``size`` pixels are generated under ``root`` (default: the vitslim
    cache); the encoder's input is ``size`` too (windows of ``size / 32`` tokens)."""

    name = "shapes-sam"
    metric = "miou_box_vs_gt"
    shipped_dir = Path(__file__).parent / "teachers"
    about = "a small SAM (4-block encoder, width 96, 3 heads) on generated scenes of shapes"
    # 500 steps per stage instead of 2000: the demo's few minutes (the quality benchmark's SAM setting)
    demo = {"ratio": 0.5, "fraction": 0.01, "options": {"min_steps": 500, "micro_batch": 4}, "batch": 1, "runs": 5}

    def __init__(self, n_train: int = N_TRAIN, n_test: int = N_TEST, root: str | Path | None = None,
                 size: int = SIZE):
        self.n_train, self.n_test, self.root, self.size = n_train, n_test, root, size
        self.config = {**CONFIG, "img_size": size, "window_size": max(1, size // 32)}
        self.recipe = {"steps": 4000, "batch_size": 8, "masks_per_image": 4, "lr": 1e-3, "weight_decay": 0.01,
                       "n_train": n_train, "size": size, "data": DATA_VERSION}

    def folder(self, split: str) -> Path:
        return shapes_folder(split, self.n_train if split == "train" else self.n_test, self.root, self.size)

    def split(self, split: str) -> tuple[torch.Tensor, list[list[dict]]]:
        return load_folder(self.folder(split))

    def train_images(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        images = self.split("train")[0]
        return self._preprocess(images if indices is None else images[indices])

    def num_train(self) -> int:
        return self.n_train

    @staticmethod
    def _preprocess(images: torch.Tensor) -> torch.Tensor:
        """SAM's normalisation of (N, H, W, 3) uint8 images already at the encoder's size."""
        import torch

        mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
        std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
        return (images.permute(0, 3, 1, 2).float() - mean) / std

    def create_model(self) -> nn.Module:
        """The untrained teacher (a subclass may build another family's model)."""
        import vitslim

        return vitslim.create("sam-b", pretrained=False, **self.config)

    def batch_loss(self, model: nn.Module, output: Any, records: list[list[dict]], k: int,
                   gen: torch.Generator | None, bce_weight: float = 1.0) -> torch.Tensor:
        """Mean over a batch of the mask loss of ``model``'s decoder on the encoder's ``output``, for ``k``
        annotations of each image (``records``: each image's annotations)."""
        pe = model.prompt_encoder.get_dense_pe()
        return sum(_mask_loss(model, output[b:b + 1], pe, recs, k, gen, bce_weight)
                   for b, recs in enumerate(records)) / len(records)

    def prompter(self, model: nn.Module):
        """What scoring predicts masks with (see :func:`vitslim_sam.evaluate.evaluate_prompts`)."""
        from .evaluate import SamPrompter

        return SamPrompter(model)

    def train_teacher(self, seed: int = 0, progress: Any = None, **recipe: Any) -> nn.Module:
        import torch

        r = {**self.recipe, **recipe}
        images, anns = self.split("train")
        torch.manual_seed(seed)
        model = self.create_model()
        opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r["lr"], total_steps=r["steps"],
                                                    pct_start=max(0.05, 2 / r["steps"]))
        gen = torch.Generator().manual_seed(seed + 1)
        model.train()
        for step in range(r["steps"]):
            idx = torch.randint(len(images), (r["batch_size"],), generator=gen)
            output = model.image_encoder(self._preprocess(images[idx]))
            loss = self.batch_loss(model, output, [anns[i] for i in idx.tolist()], r["masks_per_image"], gen,
                                   r.get("bce_weight", 1.0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress is not None:
                progress(step + 1, r["steps"])
        return model.eval()

    def overlays(self, student: nn.Module, teacher: nn.Module, folder: Path, count: int = 4) -> list[Path]:
        """The teacher's and the student's masks on the same prompts, side by side (``vitslim eval
        --save-overlays``), for the first ``count`` held-out scenes."""
        from vitslim.data import load_image

        from .evaluate import evaluate_prompts

        files = sorted(self.folder("test").glob("sa_*.jpg"), key=lambda p: int(p.stem.split("_")[1]))[:count]
        Path(folder).mkdir(parents=True, exist_ok=True)
        evaluate_prompts(self.prompter(student), self.prompter(teacher), [load_image(f) for f in files],
                         overlays=folder)
        return sorted(Path(folder).glob("*.png"))

    def supervised_loss(self, teacher: nn.Module):
        """The teacher's prompt encoder and mask decoder on the embedding, each image's first four
        annotations prompted by their point and box: BCE + dice against their masks."""
        import torch
        from vitslim.testbed import LabelLookup

        images, anns = self.split("train")
        chunks = (self.train_images(torch.arange(i, min(i + 50, len(images)))) for i in range(0, len(images), 50))
        lookup = LabelLookup((x for chunk in chunks for x in chunk), anns)

        def loss(output: Any, inputs: torch.Tensor) -> torch.Tensor:
            return self.batch_loss(teacher, output, lookup(inputs), 4, None)

        return loss

    def score(self, student: nn.Module, teacher: nn.Module | None = None, limit: int | None = None) -> dict[str, float]:
        """``vitslim eval``'s protocol on the held-out scenes: prompts from the teacher's masks (vs
        teacher), and each annotation's point and box (vs ground truth)."""
        from .evaluate import evaluate_prompts

        root = self.folder("test")
        files = sorted(root.glob("sa_*.jpg"), key=lambda p: int(p.stem.split("_")[1]))[:limit]
        from vitslim.data import load_image

        images = [load_image(f) for f in files]
        result = evaluate_prompts(self.prompter(student), self.prompter(teacher if teacher is not None else student),
                                  images, [f.with_suffix(".json") for f in files])
        keys = ["miou_point_vs_gt", "miou_box_vs_gt"]
        if teacher is not None:
            keys += ["miou_point_vs_teacher", "miou_box_vs_teacher"]
        return {k: result[k] for k in keys}
