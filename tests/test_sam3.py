"""The SAM 3 family (transformers' Sam3Model) on a small config built in code: 336 px, width 128, 2 heads
of 64, 4 blocks with windows of 8 and one global block, a small text encoder and detector."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import vitslim
from vitslim.errors import UsageError, WeightsError

from .test_cli import one_error_line, run

pytest.importorskip("transformers.models.sam3")

TINY_SAM3 = {
    "vision": dict(hidden_size=128, intermediate_size=592, num_hidden_layers=4, num_attention_heads=2,
                   image_size=336, patch_size=14, window_size=8, global_attn_indexes=[3], pretrain_image_size=112),
    "neck": dict(fpn_hidden_size=64, backbone_feature_sizes=[[96, 96], [48, 48], [24, 24]]),
    "text": dict(vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=32, projection_dim=64, bos_token_id=512, eos_token_id=513, pad_token_id=513),
    "geometry": dict(hidden_size=64, num_layers=1, num_attention_heads=2, intermediate_size=128),
    "detr_encoder": dict(hidden_size=64, num_layers=1, num_attention_heads=2, intermediate_size=128),
    "detr_decoder": dict(hidden_size=64, num_layers=1, num_attention_heads=2, intermediate_size=128, num_queries=20),
    "mask_decoder": dict(hidden_size=64, num_attention_heads=2),
}


@pytest.fixture(scope="module")
def sam3():
    return vitslim.create("sam3", pretrained=False, seed=0, **TINY_SAM3)


@pytest.fixture(scope="module")
def x(photos):
    from .conftest import resize_batch

    return (resize_batch(photos, 336)[:2] - 0.5) / 0.5


def _features(model, x):
    with torch.no_grad():
        return model.vision_encoder(x).fpn_hidden_states


def test_describes_the_official_shape_on_the_meta_device():
    """The official SAM 3 config: 32 blocks of 1024 (16 heads of 64, MLP 4736), windows of 24, global
    blocks 7/15/23/31, 1008 px (a 72 x 72 grid); about 446M trunk parameters."""
    from vitslim_sam3.family import Sam3Family, build_sam3

    with torch.device("meta"):
        model = build_sam3({})
    s = Sam3Family().describe(model)
    assert s.embed_dim == 1024 and len(s.blocks) == 32
    b = s.blocks[0]
    assert (b.attn.num_heads, b.attn.head_dim, b.mlp.hidden) == (16, 64, 4736)
    assert (b.attn.seq_len, b.attn.num_seqs) == (24 * 24, 9) and s.blocks[7].attn.seq_len == 72 * 72
    trunk = sum(p.numel() for p in model.vision_encoder.backbone.parameters())
    assert 440e6 < trunk < 450e6


def test_description_equals_the_dependency_graph(sam3):
    from vitslim.graph import checked_stream_params
    from vitslim.registry import family_of

    family = family_of(sam3)
    structure = family.describe(sam3)
    found = checked_stream_params(family.encoder(sam3), structure, family, sam3)[0]  # raises on a disagreement
    assert ("neck.fpn_layers.0.scale_layers.0.weight", 0) in found  # a transposed conv reads on axis 0
    assert ("neck.fpn_layers.3.proj1.weight", 1) in found  # the 0.5x level, which Sam3Model does not read


def test_ratio_zero_is_the_identity(sam3, x):
    same = vitslim.prune(sam3, 0.0, importance="magnitude")
    for a, b in zip(_features(sam3, x), _features(same, x)):
        assert torch.equal(a, b)


def test_bottleneck_pruning_equals_zeroing(sam3, x):
    """Whole heads and MLP channels removed compute what the original computes with them zeroed."""
    p = vitslim.plan(sam3, 0.5, part="bottleneck", importance="magnitude", attention="heads")
    slim = vitslim.prune(sam3, 0.5, part="bottleneck", importance="magnitude", attention="heads")
    zeroed = copy.deepcopy(sam3)
    layers = zeroed.vision_encoder.backbone.layers
    with torch.no_grad():
        for i, layer in enumerate(layers):
            a = layer.attention
            gone = sorted(set(range(2)) - set(p.keep[f"backbone.layers.{i}.attention.heads"].tolist()))
            for h in gone:
                rows = slice(h * 64, (h + 1) * 64)
                for proj in (a.q_proj, a.k_proj, a.v_proj):
                    proj.weight[rows] = 0
                    proj.bias[rows] = 0
            drop = torch.ones(592, dtype=torch.bool)
            drop[p.keep[f"backbone.layers.{i}.mlp"]] = False
            layer.mlp.fc1.weight[drop] = 0
            layer.mlp.fc1.bias[drop] = 0
    assert vitslim.describe(slim).blocks[0].attn.num_heads == 1
    for a, b in zip(_features(slim, x), _features(zeroed, x)):
        assert (a - b).abs().max() < 1e-5


def test_pruned_file_loads_back_identically_as_a_sam3_model(sam3, tmp_path):
    from transformers import Sam3Model

    slim = vitslim.prune(sam3, 0.5, importance="magnitude")
    back = vitslim.load(vitslim.save(slim, tmp_path / "slim.pt"))
    assert isinstance(back, Sam3Model)
    assert vitslim.describe(back).widths() == vitslim.describe(slim).widths()
    for (k, a), (_, b) in zip(slim.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k


def _processor(size: int = 336):
    """transformers' Sam3Processor with a character-level CLIP tokenizer made here (the real one's
    vocabulary needs the hub)."""
    from transformers import CLIPTokenizer, Sam3ImageProcessor, Sam3Processor
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32)
    return Sam3Processor(Sam3ImageProcessor(size={"height": size, "width": size}), tokenizer)


def test_the_pruned_model_gives_masks_for_a_box_and_a_text_prompt_in_sam3_processor(sam3, tmp_path):
    from PIL import Image
    from skimage import data

    slim = vitslim.load(vitslim.save(vitslim.prune(sam3, 0.5, importance="magnitude"), tmp_path / "s.pt"))
    processor = _processor()
    image = Image.fromarray(data.astronaut())
    for prompt in ({"text": "astronaut"}, {"text": "visual", "input_boxes": [[[100, 50, 300, 400]]],
                                           "input_boxes_labels": [[1]]}):
        inputs = processor(images=image, return_tensors="pt", **prompt)
        with torch.no_grad():
            out = slim(**{k: v for k, v in inputs.items() if k != "original_sizes"})
        result = processor.post_process_instance_segmentation(out, threshold=0.0, mask_threshold=0.5,
                                                              target_sizes=inputs["original_sizes"].tolist())[0]
        assert result["masks"].shape[1:] == (512, 512) and len(result["masks"]) > 0


def test_compress_end_to_end_and_eval(sam3, tmp_path, capsys, photos):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, p in enumerate(photos):
        Image.fromarray((p.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(folder / f"{i}.png")
    teacher = vitslim.save(sam3, tmp_path / "sam3-tiny.pt")
    out = tmp_path / "slim.pt"
    code, _, err = run(["compress", teacher, "--ratio", "0.5", "--data", folder, "--epochs", "1", "--batch-size", "2",
                        "--importance-batches", "1", "--out", out, "--no-eval"], capsys)
    assert code == 0, err
    slim = vitslim.load(out)
    assert vitslim.describe(slim).embed_dim == 64
    code, text, err = run(["eval", out, "--teacher", teacher, "--data", folder, "--json"], capsys)
    assert code == 0, err
    assert 0 <= json.loads(text)["miou_box_vs_teacher"] <= 1
    code, text, err = run(["eval", teacher, "--teacher", teacher, "--data", folder, "--limit", "1", "--json"], capsys)
    assert json.loads(text)["miou_box_vs_teacher"] == pytest.approx(1.0)


def test_bad_names_and_checkpoints_are_one_line(capsys, tmp_path, monkeypatch):
    code, _, err = run(["inspect", "sam3-huge"], capsys)
    assert code == 2 and "unknown model 'sam3-huge'" in one_error_line(err)
    meta = tmp_path / "sam3.pt"
    torch.save({"detector.backbone.vision_backbone.trunk.pos_embed": torch.zeros(1)}, meta)
    with pytest.raises(WeightsError, match="Meta's sam3.pt"):
        vitslim.create("sam3", checkpoint=str(meta))
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    code, _, err = run(["inspect", "sam3", "--json"], capsys)  # inspect builds no weights: fine offline
    assert code == 0
    with pytest.raises(WeightsError, match="cannot download facebook/sam3 .*--checkpoint PATH"):
        vitslim.create("sam3", pretrained=True)


def test_a_missing_transformers_is_one_line(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_sam3(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("no transformers")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sam3)
    with pytest.raises(UsageError, match="SAM 3 models need transformers"):
        vitslim.create("sam3", pretrained=False, **TINY_SAM3)
