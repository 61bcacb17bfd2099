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
    twice = torch.cat([features[:3], features[:3]])  # duplicates: distance 0, still never picked twice
    assert k_center(twice, 6, seed=0) == list(range(6))
    for bad in (0, 98):
        with pytest.raises(UsageError, match="cannot pick"):
            k_center(features, bad)


def test_pick_images_reads_the_teachers_outputs(tiny_timm, photos):
    x = resize_batch(photos, 64)
    feats = teacher_features(tiny_timm, x, batch=3)
    assert feats.shape == (len(x), 1000) and torch.allclose(feats.norm(dim=1), torch.ones(len(x)))
    idx = pick_images(tiny_timm, x, 3, seed=1)
    assert idx.tolist() == k_center(feats, 3, seed=1) and len(set(idx.tolist())) == 3


def test_compress_pick_trains_on_every_picked_image_and_validates_on_the_rest(tiny_timm, photos, tmp_path):
    """``compress(pick=N)``: the N picked images all train; validation comes from the images not picked;
    the run records the pick (a resume with another pick is another run)."""
    import vitslim
    from vitslim.info import get_info

    x = resize_batch(photos, 64)
    x = torch.cat([x, x.flip(-1)])  # 8 images: without a pick, 7 would train
    out = vitslim.compress(tiny_timm, 0.5, data=x, pick=4, epochs=1, batch_size=2, importance_batches=1,
                           importance="magnitude", progress=False, workdir=tmp_path / "w")
    distill = next(h for h in get_info(out)["history"] if h["step"] == "distill")
    assert distill["images"] == {"train": 4, "val": 1} and distill["pick"] == 4
    from vitslim.data import TensorDataset
    from vitslim.engine.options import TrainOptions
    from vitslim.engine.run import _picked

    images, train, val = _picked(tiny_timm, TensorDataset(x), TrainOptions(pick=4), "cpu", progress=False)
    picked = pick_images(tiny_timm, x, 4).tolist()
    assert [images.indices[i] for i in train] == picked
    assert len(val) == 1 and images.indices[val[0]] not in picked
    with pytest.raises(UsageError, match="cannot pick 9 images: the data holds 8"):
        vitslim.compress(tiny_timm, 0.5, data=x, pick=9, epochs=1, progress=False, workdir=tmp_path / "bad")
    with pytest.raises(UsageError, match="pick must be"):
        vitslim.compress(tiny_timm, 0.5, data=x, pick=0, epochs=1, progress=False, workdir=tmp_path / "bad")


def test_cli_pick_evaluates_on_images_it_did_not_train_on(tmp_path, capsys):
    """``vitslim compress --pick N`` on a folder: the picked images train, and the end-of-run evaluation
    reads a held-out file from the rest."""
    import json

    from PIL import Image

    import vitslim
    from vitslim.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        pixels = (torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    torch.manual_seed(0)
    model = vitslim.create("timm:vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=16, embed_dim=48,
                           depth=2, num_heads=3)
    src = vitslim.save(model, tmp_path / "t.pt")
    try:
        main(["compress", str(src), "--ratio", "0.5", "--data", str(folder), "--pick", "3", "--epochs", "1",
              "--batch-size", "1", "--criterion", "magnitude", "--out", str(tmp_path / "s.pt"), "--json"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["images"] == {"train": 3, "val": 1} and summary["eval"]
