"""The digits testbed: a small timm ViT trained on scikit-learn's handwritten digits.

Real data shipped with scikit-learn (1,797 8x8 images of 10 classes), upscaled to 16x16 RGB, with a
fixed split of 1,200 training and 597 test images. The teacher is a 4-block ViT (width 96, 3 heads,
4x4 patches: 16 tokens + a class token) trained with light affine augmentation; it reaches about 98%
test accuracy in about a minute on one CPU thread.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch
    from torch import nn

from vitslim.testbed import LabelLookup, Testbed

ARCH = "timm:vit_tiny_patch16_224"
CONFIG = {
    "img_size": 16, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3, "num_classes": 10,
    # preprocessing that maps a 16x16 PIL digit to exactly the tensors used here (no crop, [-1, 1])
    "pretrained_cfg_overlay": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0,
                               "interpolation": "bilinear"},
}
N_TRAIN = 1200


@functools.lru_cache(maxsize=1)
def digits_split() -> dict[str, torch.Tensor]:
    """The fixed split: ``x_train`` (1200, 3, 16, 16), ``y_train``, ``x_test`` (597, ...), ``y_test``;
    pixels in [-1, 1] as the teacher's preprocessing gives them."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).repeat(1, 3, 1, 1)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:N_TRAIN], order[N_TRAIN:]
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


def _affine(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random rotations (+-0.2 rad), scalings (+-10%) and shifts (+-1 px) of a digit batch."""
    import torch
    import torch.nn.functional as F

    n = len(x)
    angle = (torch.rand(n, generator=gen) - 0.5) * 0.4
    scale = 1 + (torch.rand(n, generator=gen) - 0.5) * 0.2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) * scale
    theta[:, 0, 1] = -torch.sin(angle) * scale
    theta[:, 1, 0] = torch.sin(angle) * scale
    theta[:, 1, 1] = torch.cos(angle) * scale
    theta[:, :, 2] = (torch.rand(n, 2, generator=gen) - 0.5) * 0.25
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1  # background stays -1


class DigitsTestbed(Testbed):
    """Classification: test accuracy against the labels, top-1 agreement with the teacher."""

    name = "digits-vit"
    metric = "accuracy"
    shipped_dir = Path(__file__).parent / "teachers"
    about = "a 4-block timm ViT (width 96, 3 heads) on scikit-learn's handwritten digits"
    # 12 images would get 8000 steps per stage by default: the demo takes 2000 to fit its few minutes
    demo = {"ratio": 0.5, "fraction": 0.01, "options": {"min_steps": 2000}, "batch": 64, "runs": 20}
    recipe = {"epochs": 60, "batch_size": 32, "lr": 2e-3, "weight_decay": 0.05, "label_smoothing": 0.1}
    config = CONFIG

    def train_images(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        x = digits_split()["x_train"]
        return x if indices is None else x[indices]

    def num_train(self) -> int:
        return N_TRAIN

    def train_teacher(self, seed: int = 0, progress: Any = None, **recipe: Any) -> nn.Module:
        import torch
        import torch.nn.functional as F
        import vitslim

        r = {**self.recipe, **recipe}
        data = digits_split()
        x, y = data["x_train"], data["y_train"]
        torch.manual_seed(seed)
        model = vitslim.create(ARCH, pretrained=False, **self.config)
        steps_per_epoch = math.ceil(len(x) / r["batch_size"])
        opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r["lr"], total_steps=r["epochs"] * steps_per_epoch,
                                                    pct_start=0.1)
        gen = torch.Generator().manual_seed(seed + 1)
        model.train()
        for epoch in range(r["epochs"]):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), r["batch_size"]):
                idx = order[i:i + r["batch_size"]]
                loss = F.cross_entropy(model(_affine(x[idx], gen)), y[idx], label_smoothing=r["label_smoothing"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            if progress is not None:
                progress(epoch + 1, r["epochs"])
        return model.eval()

    def supervised_loss(self, teacher: nn.Module):
        """Cross-entropy against the digit labels."""
        import torch
        import torch.nn.functional as F

        data = digits_split()
        labels = LabelLookup(data["x_train"], data["y_train"].tolist())
        return lambda output, inputs: F.cross_entropy(output, torch.tensor(labels(inputs), device=output.device))

    def score(self, student: nn.Module, teacher: nn.Module | None = None) -> dict[str, float]:
        import torch

        data = digits_split()
        student.eval()
        with torch.no_grad():
            pred = student(data["x_test"]).argmax(-1)
            out = {"accuracy": float((pred == data["y_test"]).float().mean()) * 100}
            if teacher is not None:
                out["top1_agreement"] = float((pred == teacher.eval()(data["x_test"]).argmax(-1)).float().mean()) * 100
        return out


class ManyHeadDigitsTestbed(DigitsTestbed):
    """The digits testbed with SAM-B's 12 heads (width 192, 12 heads of 16): enough heads for whole-head
    pruning to be a real choice, as it is for SAM-B and ViT-B."""

    name = "digits-vit12"
    about = "a 4-block timm ViT with 12 heads (width 192, head dim 16) on scikit-learn's handwritten digits"
    demo: dict = {}
    config = {**CONFIG, "embed_dim": 192, "num_heads": 12}
