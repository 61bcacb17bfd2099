"""Picking images by k-center on the teacher's outputs (vitslim.selection)."""

import pytest
import torch

from vitslim.errors import UsageError
from vitslim.selection import k_center, pick_images, teacher_features

from .conftest import resize_batch


def test_k_center_takes_one_image_from_every_cluster_before_a_second():
    """Five tight clusters of unequal size: five picks land in five clusters whatever the seed (a random
    pick of five from this pool misses the small clusters most of the time)."""
    g = torch.Generator().manual_seed(0)
    sizes = [40, 30, 20, 5, 2]
    centres = 10 * torch.eye(5, 8)
    features = torch.cat([c + 0.1 * torch.randn(n, 8, generator=g) for c, n in zip(centres, sizes)])
    cluster = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    for seed in range(5):
        chosen = k_center(features, 5, seed=seed)
        assert len(set(chosen)) == 5 and chosen == sorted(chosen)
        assert sorted(cluster[chosen].tolist()) == [0, 1, 2, 3, 4]
    assert k_center(features, 97, seed=0) == list(range(97))
    for bad in (0, 98):
        with pytest.raises(UsageError, match="cannot pick"):
            k_center(features, bad)


def test_pick_images_reads_the_teachers_outputs(tiny_timm, photos):
    x = resize_batch(photos, 64)
    feats = teacher_features(tiny_timm, x, batch=3)
    assert feats.shape == (len(x), 1000) and torch.allclose(feats.norm(dim=1), torch.ones(len(x)))
    idx = pick_images(tiny_timm, x, 3, seed=1)
    assert idx.tolist() == k_center(feats, 3, seed=1) and len(set(idx.tolist())) == 3
