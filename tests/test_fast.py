"""The fast inference path computes what the plain model computes (fp32, within 1e-5)."""

import copy

import pytest
import torch

import vitslim

from .conftest import encode, resize_batch


@pytest.mark.parametrize("which,size", [("tiny_sam", 128), ("tiny_timm", 64)])
@pytest.mark.parametrize("prune", [None, "head_dim", "heads"])
def test_fast_path_is_exact(which, size, prune, request, photos):
    model = request.getfixturevalue(which)
    if prune:
        model = vitslim.prune(model, 0.4, part="both", importance="random", attention=prune, seed=1)
    x = resize_batch(photos, size)
    plain = encode(model, x)
    fast_model = vitslim.optimize(copy.deepcopy(model))
    if which == "tiny_sam":
        from vitslim_sam.fast import FusedAttention

        kinds = {type(b.attn) for b in fast_model.image_encoder.blocks}
        assert kinds == {FusedAttention}  # windowed and global blocks both switched
    fast = encode(fast_model, x)
    assert (fast - plain).abs().max().item() <= 1e-5
    assert fast_model.state_dict().keys() == model.state_dict().keys()


def test_fast_model_saves_and_loads(tiny_sam, tmp_path, photos):
    fast = vitslim.optimize(copy.deepcopy(tiny_sam))
    loaded = vitslim.load(vitslim.save(fast, tmp_path / "f.pt"))
    x = resize_batch(photos[:1], 128)
    assert torch.equal(encode(loaded, x), encode(tiny_sam, x))


def test_bench_runs_end_to_end_with_valid_json(capsys):
    import json

    from vitslim.cli import main

    main(["bench", "timm:vit_tiny_patch16_224", "timm:vit_tiny_patch16_224@0.5",
          "timm:vit_tiny_patch16_224@0.5:heads", "--fast", "--onnxruntime", "--runs", "2", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in result["rows"]] == ["plain", "fast", "onnxruntime"] * 3
    assert result["rows"][0]["speedup"] == 1.0
    assert result["rows"][3]["params"] < result["rows"][0]["params"]
    assert all(r["median_ms"] > 0 for r in result["rows"]) and result["device_type"] == "cpu"


def test_quantile_nearest_rank():
    from vitslim.bench import _quantile

    assert _quantile([3.0, 1.0], 0.9) == 3.0
    assert _quantile(list(range(1, 51)), 0.9) == 45
    assert _quantile([7.0], 0.9) == 7.0


def test_bench_spec_round_to():
    from vitslim.bench import build

    w = vitslim.describe(build("timm:vit_tiny_patch16_224@0.6/16")).widths()
    assert w["embed_dim"] % 16 == 0 and all(b["mlp_hidden"] % 16 == 0 and b["head_dim"] % 16 == 0 for b in w["blocks"])
    with pytest.raises(vitslim.UsageError, match="bad model spec"):
        build("timm:vit_tiny_patch16_224@abc")
