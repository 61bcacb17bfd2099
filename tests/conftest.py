"""Fixtures: tiny SAM and timm models built in code, and real photos from scikit-image."""

from __future__ import annotations

import pytest
import torch

import vitslim

TINY_SAM = dict(img_size=128, embed_dim=64, depth=4, num_heads=4, global_attn_indexes=[1, 3],
                window_size=4, out_chans=32)
TINY_TIMM = dict(img_size=64, embed_dim=48, depth=3, num_heads=3)


@pytest.fixture
def tiny_sam():
    torch.manual_seed(0)
    model = vitslim.create("sam-b", pretrained=False, **TINY_SAM)
    # rel-pos tables start at zero in SAM; give them values so that pruning them matters.
    with torch.no_grad():
        for blk in model.image_encoder.blocks:
            blk.attn.rel_pos_h.normal_(0, 0.1)
            blk.attn.rel_pos_w.normal_(0, 0.1)
    return model


@pytest.fixture
def sam_file(tiny_sam, tmp_path):
    """The tiny SAM saved as a vitslim file."""
    return vitslim.save(tiny_sam, tmp_path / "tiny-sam.pt")


@pytest.fixture
def tiny_timm():
    torch.manual_seed(0)
    return vitslim.create("timm:vit_tiny_patch16_224", pretrained=False, **TINY_TIMM)


@pytest.fixture(scope="session")
def photos():
    """Real photographs shipped with scikit-image, as float RGB arrays in [0, 1]."""
    from skimage import data

    imgs = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    return [torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in imgs]


def resize_batch(photos, size: int) -> torch.Tensor:
    return torch.stack([torch.nn.functional.interpolate(p[None], size=(size, size), mode="bilinear",
                                                        align_corners=False)[0] for p in photos])


def encode(model, x):
    """Run the compressed part (SAM: image encoder; timm: the whole model)."""
    from vitslim.registry import family_of

    with torch.no_grad():
        return family_of(model).encoder(model)(x)
