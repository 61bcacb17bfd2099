"""ONNX export runs in onnxruntime and matches torch (max abs difference <= 1e-4)."""

import numpy as np
import pytest
import torch

import vitslim
from vitslim.cli import main
from vitslim.registry import family_of

ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("which", ["tiny_sam", "tiny_timm"])
def test_export_matches_torch(which, request, tmp_path):
    model = vitslim.prune(request.getfixturevalue(which), 0.5, part="both", importance="magnitude")
    path = vitslim.export_onnx(model, tmp_path / "m.onnx")
    fam = family_of(model)
    x = torch.randn(1, *fam.input_shape(model))
    with torch.no_grad():
        expected = fam.encoder(model)(x).numpy()
    got = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4


def test_export_cli(tiny_timm, tmp_path, capsys):
    src = vitslim.save(tiny_timm, tmp_path / "t.pt")
    main(["export", str(src), "--onnx", str(tmp_path / "t.onnx")])
    assert (tmp_path / "t.onnx").stat().st_size > 100_000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_export_of_fused_sam_records_one_attention_per_block(tiny_sam, tmp_path, monkeypatch):
    import onnx

    from vitslim_sam import fast

    monkeypatch.setattr(fast, "MASK_BLOCK_BYTES", 1)  # would split each global block into 4 query blocks
    model = vitslim.optimize(vitslim.prune(tiny_sam, 0.5, part="both", importance="magnitude"))
    path = vitslim.export_onnx(model, tmp_path / "m.onnx")
    softmaxes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == len(model.image_encoder.blocks)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected = model.image_encoder(x).numpy()
    got = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4
