"""Hugging Face transformers' SamModel: its checkpoints in (dense and SlimSAM-shaped), vitslim's out."""

import pytest
import torch

import vitslim

from .conftest import resize_batch

transformers = pytest.importorskip("transformers")


def _hf_sam(hidden=64, mlp=256, heads=4):
    """A random transformers SamModel shaped like the tests' tiny SAM (128 px, 4 blocks)."""
    from transformers import SamConfig, SamModel

    vision = dict(hidden_size=hidden, num_hidden_layers=4, num_attention_heads=heads, global_attn_indexes=[1, 3],
                  image_size=128, mlp_dim=mlp, output_channels=32, window_size=4, num_pos_feats=16)
    torch.manual_seed(0)
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config={"hidden_size": 32, "image_size": 128},
                               mask_decoder_config={"hidden_size": 32})).eval()
    with torch.no_grad():  # transformers starts weights near zero (initializer_range 1e-10): give every
        for name, p in model.named_parameters():  # tensor values that matter, attention scales included
            if p.dim() > 1 or "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.1 if "rel_pos" in name or "pos_embed" in name else 0.3 / p.shape[-1] ** 0.5)
    return model


@pytest.mark.parametrize("shape", ["dense", "slimsam"])
def test_transformers_checkpoint_becomes_a_vitslim_teacher(shape, tmp_path, photos):
    """save_pretrained folder -> --checkpoint: the same image embeddings on a real photo (1e-4); a
    SlimSAM-uniform-shaped config (one narrower width for embedding and attention, one MLP width) loads
    as a pruned SAM with those widths."""
    hf = _hf_sam(hidden=48, mlp=100) if shape == "slimsam" else _hf_sam()
    hf.save_pretrained(tmp_path / "hf")
    sam = vitslim.create("sam-b", checkpoint=tmp_path / "hf")
    x = resize_batch(photos[:1], 128) * 2 - 1
    with torch.no_grad():
        ours, theirs = sam.image_encoder(x), hf.get_image_embeddings(x)
    assert (ours - theirs).abs().max() <= 1e-4
    w = vitslim.inspect(sam, macs=False)["widths"]
    expected = (48, 12, 100) if shape == "slimsam" else (64, 16, 256)
    assert (w["embed_dim"], w["blocks"][0]["head_dim"], w["blocks"][0]["mlp_hidden"]) == expected
    assert {b["num_heads"] for b in w["blocks"]} == {4}
    # the model file keeps the widths
    loaded = vitslim.load(vitslim.save(sam, tmp_path / "m.pt"))
    assert torch.equal(loaded.image_encoder(x), sam.image_encoder(x))


def test_single_safetensors_file_and_other_sizes(tmp_path):
    hf = _hf_sam()
    hf.save_pretrained(tmp_path / "hf")
    sam = vitslim.create("sam-b", checkpoint=tmp_path / "hf" / "model.safetensors")  # config.json beside it
    assert vitslim.describe(sam).embed_dim == 64


def test_export_hf_loads_into_sammodel_with_equal_masks(tiny_sam, tmp_path, photos, capsys):
    """`compress --ranking uniform` at 0.5 of the tiny SAM (embedding 32 = 4 heads x 8, MLP 128): exported
    with --hf, transformers loads it and gives the same embeddings and mask logits for a point prompt."""
    from transformers import SamModel

    from .test_cli import run

    slim = vitslim.compress(tiny_sam, 0.5, data=resize_batch(photos[:4], 128), epochs=1, batch_size=2,
                            importance="magnitude", ranking="uniform", workdir=tmp_path / "work", progress=False)
    w = vitslim.describe(slim).widths()
    assert w["embed_dim"] == 32 and {(b["num_heads"], b["head_dim"], b["mlp_hidden"]) for b in w["blocks"]} == {(4, 8, 128)}
    src = vitslim.save(slim, tmp_path / "slim.pt")
    code, _, err = run(["export", src, "--hf", tmp_path / "hf"], capsys)
    assert code == 0, err
    hf = SamModel.from_pretrained(tmp_path / "hf").eval()
    x = resize_batch(photos[:1], 128) * 2 - 1
    points = torch.tensor([[[40.0, 60.0]]])
    with torch.no_grad():
        emb = slim.image_encoder(x)
        assert (hf.get_image_embeddings(x) - emb).abs().max() <= 1e-4
        sparse, dense = slim.prompt_encoder(points=(points, torch.ones(1, 1, dtype=torch.int)), boxes=None, masks=None)
        ours, _ = slim.mask_decoder(emb, slim.prompt_encoder.get_dense_pe(), sparse, dense, False)
        theirs = hf(image_embeddings=emb, input_points=points[:, None], input_labels=torch.ones(1, 1, 1, dtype=torch.int),
                    multimask_output=False).pred_masks[:, 0]
    assert ours.shape == theirs.shape and (ours - theirs).abs().max() <= 1e-3
    assert (((ours > 0) == (theirs > 0)) | (ours.abs() < 1e-3)).all()  # the same masks (but for logits at 0)


def test_export_hf_refuses_per_block_widths_in_one_line(tiny_sam, tmp_path, capsys):
    from .test_cli import one_error_line, run

    src = vitslim.save(vitslim.prune(tiny_sam, 0.5, importance="magnitude", ranking="global"), tmp_path / "g.pt")
    code, _, err = run(["export", src, "--hf", tmp_path / "hf"], capsys)
    assert code == 2
    assert "--ranking uniform" in one_error_line(err) and not (tmp_path / "hf").exists()


def test_slimsam_uniform_77_folder_is_inspected_as_168_696(tmp_path, capsys):
    """A folder shaped like Zigeng/SlimSAM-uniform-77 (SamVisionConfig hidden 168, MLP 696) is a model
    spec for inspect (and eval and bench): a SAM-B with 12 heads of 14 and an MLP of 696."""
    import json

    from transformers import SamConfig, SamModel

    from .test_cli import run

    vision = dict(hidden_size=168, mlp_dim=696, num_attention_heads=12, num_hidden_layers=12,
                  global_attn_indexes=[2, 5, 8, 11])
    SamModel(SamConfig(vision_config=vision)).save_pretrained(tmp_path / "SlimSAM-uniform-77")
    code, out, err = run(["inspect", tmp_path / "SlimSAM-uniform-77", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["name"] == "sam-b" and report["widths"]["embed_dim"] == 168
    assert {(b["num_heads"], b["head_dim"], b["mlp_hidden"]) for b in report["widths"]["blocks"]} == {(12, 14, 696)}


def test_timm_export_hf_loads_with_timm(tiny_timm, tmp_path, photos):
    import timm

    slim = vitslim.prune(tiny_timm, 0.5, importance="magnitude", ranking="uniform")
    vitslim.export_hf(slim, tmp_path / "hf")
    again = timm.create_model(f"local-dir:{tmp_path / 'hf'}", pretrained=True).eval()
    x = resize_batch(photos[:2], 64)
    with torch.no_grad():
        assert (again(x) - slim.eval()(x)).abs().max() <= 1e-5
    with pytest.raises(vitslim.UsageError, match="--ranking uniform"):
        vitslim.export_hf(vitslim.prune(tiny_timm, 0.5, importance="magnitude"), tmp_path / "global")
