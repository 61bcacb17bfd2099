"""Data: folders, tensors and Datasets as encoder inputs; one scan per folder."""

import warnings

import pytest
import torch

from vitslim.data import TensorDataset, as_dataset, find_images, sample_images
from vitslim.errors import UsageError


def test_folder_scan_is_recursive_sorted_and_done_once(tmp_path, photos):
    from PIL import Image

    (tmp_path / "b").mkdir()
    for name in ("b/2.png", "1.jpg"):
        Image.fromarray((photos[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / name)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "readme.txt").write_text("x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = find_images(tmp_path)
        second = find_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in first] == ["1.jpg", "b/2.png"] and second == first
    assert len(caught) == 1 and "bad.png" in str(caught[0].message)  # warned once, naming the file


def test_inputs_from_a_tensor_a_dataset_and_a_folder(tmp_path):
    x = torch.randn(3, 3, 8, 8)
    ds = as_dataset(x, transform=None)
    assert isinstance(ds, TensorDataset) and len(ds) == 3 and torch.equal(ds[1], x[1])
    assert as_dataset(ds, transform=None) is ds
    with pytest.raises(UsageError, match=r"\(N, C, H, W\)"):
        as_dataset(torch.randn(3, 8, 8), transform=None)
    with pytest.raises(UsageError, match="must be a folder, a tensor or a Dataset"):
        as_dataset(42, transform=None)
    with pytest.raises(UsageError, match="not found"):
        as_dataset(tmp_path / "missing", transform=None)


def test_samples_are_ten_rgb_photos():
    images = sample_images()
    assert len(images) == 10 and {im.mode for im in images} == {"RGB"}
