import os

import pytest
import torch

import vitslim
from vitslim.errors import ModelFileError, UsageError

from .conftest import encode, resize_batch


def _shrink_by_hand(model):
    """Change widths without pruning machinery: smaller MLP in block 0, fewer heads in block 1."""
    from vitslim.reshape import apply_widths
    from vitslim.registry import family_of

    fam = family_of(model)
    st = fam.describe(model)
    w = st.widths()
    w["blocks"][0]["mlp_hidden"] = 40
    w["blocks"][1]["num_heads"] = 2
    enc = fam.encoder(model)
    apply_widths(enc, st, w, fam)
    torch.manual_seed(1)  # apply_widths leaves new tensors uninitialised: give all weights values
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("which", ["tiny_sam", "tiny_timm"])
@pytest.mark.parametrize("by_hand", [False, True])
def test_save_load_bit_identical(which, by_hand, request, tmp_path, photos):
    model = request.getfixturevalue(which)
    if by_hand:
        model = _shrink_by_hand(model)
    size = 128 if which == "tiny_sam" else 64
    x = resize_batch(photos[:2], size)
    path = vitslim.save(model, tmp_path / "m.pt")
    loaded = vitslim.load(path)
    assert type(loaded) is type(model)
    assert vitslim.describe(loaded).widths() == vitslim.describe(model).widths()
    assert torch.equal(encode(model, x), encode(loaded, x))
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    # the file is plain data: weights_only loading works and holds no module
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "vitslim.model" and payload["family"] in ("sam", "timm")
    assert payload["vitslim_version"] == vitslim.__version__


def test_loaded_sam_works_with_predictor(tiny_sam, tmp_path, photos):
    from segment_anything import SamPredictor

    path = vitslim.save(tiny_sam, tmp_path / "sam.pt")
    predictor = SamPredictor(vitslim.load(path))
    img = (photos[0].permute(1, 2, 0).numpy() * 255).astype("uint8")
    predictor.set_image(img)
    import numpy as np

    masks, scores, _ = predictor.predict(point_coords=np.array([[200, 200]]), point_labels=np.array([1]))
    assert masks.shape[1:] == img.shape[:2] and scores.shape == (3,)


def test_missing_truncated_foreign_files(tiny_timm, tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        vitslim.load(tmp_path / "nope.pt")
    good = vitslim.save(tiny_timm, tmp_path / "good.pt")
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated, corrupt"):
        vitslim.load(tmp_path / "trunc.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ModelFileError, match="not a vitslim model file"):
        vitslim.load(tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ModelFileError):
        vitslim.load(tmp_path / "text.pt")


def test_save_is_atomic_and_checks_folder(tiny_timm, tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="does not exist"):
        vitslim.save(tiny_timm, tmp_path / "missing" / "m.pt")
    target = tmp_path / "m.pt"

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        vitslim.save(tiny_timm, target)
    assert not target.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("which", ["tiny_sam", "tiny_timm"])
def test_safetensors_file_is_bit_identical_and_pickle_free(which, request, tmp_path, photos):
    import json

    from safetensors import safe_open

    model = _shrink_by_hand(request.getfixturevalue(which))
    path = vitslim.save(vitslim.prune(model, 0.5, importance="magnitude"), tmp_path / "m.safetensors")
    loaded = vitslim.load(path)
    original = vitslim.load(vitslim.save(vitslim.prune(model, 0.5, importance="magnitude"), tmp_path / "m.pt"))
    assert vitslim.describe(loaded).widths() == vitslim.describe(original).widths()
    for (k, a), (k2, b) in zip(original.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    with safe_open(str(path), "pt") as f:  # the description is JSON in the header; no pickle anywhere
        meta = f.metadata()
    described = json.loads(meta["vitslim"])
    assert meta["format"] == "vitslim.model" and described["widths"] == vitslim.describe(loaded).widths()
    assert described["history"][-1]["step"] == "prune"
    assert b"\x80\x04" not in path.read_bytes()[:64]  # not a pickle stream
    assert vitslim.inspect(path)["widths"] == described["widths"]


def test_truncated_or_foreign_safetensors_files(tiny_timm, tmp_path):
    from safetensors.torch import save_file

    data = vitslim.save(tiny_timm, tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated, corrupt"):
        vitslim.load(tmp_path / "trunc.safetensors")
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ModelFileError, match="without a vitslim description"):
        vitslim.load(tmp_path / "foreign.safetensors")
