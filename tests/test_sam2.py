"""The SAM 2 family: Hiera's per-stage residual streams, on tiny encoders built in code (256 px)."""

import copy
import json

import numpy as np
import pytest
import torch

import vitslim
from vitslim.registry import family_of

from .conftest import resize_batch
from .test_cli import image_dir, one_error_line, run  # noqa: F401 - image_dir is a fixture
from .test_pruning import _zeroed_reference

pytest.importorskip("sam2", reason="the SAM 2 family needs the sam2 package (README: Install)")

# 4 stages of widths 16/32/64/128, 6 blocks, windows and global blocks, q pooling at every stage change
TINY = dict(img_size=256, embed_dim=16, num_heads=1, stages=[1, 2, 2, 1], global_att_blocks=[2, 4],
            window_spec=[8, 4, 8, 4], window_pos_embed_bkg_spatial_size=[4, 4])


@pytest.fixture
def tiny_sam2():
    torch.manual_seed(0)
    model = vitslim.create("sam2-t", pretrained=False, **TINY)
    with torch.no_grad():  # position embeddings start at zero: give them values so that pruning them matters
        model.image_encoder.trunk.pos_embed.normal_(0, 0.1)
        model.image_encoder.trunk.pos_embed_window.normal_(0, 0.1)
    return model


def fpn(model, x) -> list[torch.Tensor]:
    """The FPN levels the mask decoder reads."""
    with torch.no_grad():
        return model.image_encoder(x)["backbone_fpn"]


def test_sam2_b_plus_has_the_published_shape():
    model = vitslim.create("sam2-b+", pretrained=False)
    s = vitslim.describe(model)
    assert sum(p.numel() for p in model.image_encoder.parameters()) == 69_106_816
    assert [st.width for st in s.streams()] == [112, 224, 448, 896]
    assert [b.attn.num_heads for b in s.blocks][::8] == [2, 8, 8]
    pooled = [i for i, b in enumerate(s.blocks) if b.attn.q_len]
    assert pooled == [2, 5, 21] and s.blocks[2].attn.q_len * 4 == s.blocks[2].attn.seq_len
    assert family_of(model).identify(model) == ("sam2-b+", {})


def test_description_agrees_with_the_dependency_graph(tiny_sam2):
    from vitslim.graph import stream_params_from_graph

    family = family_of(tiny_sam2)
    s = family.describe(tiny_sam2)
    found = stream_params_from_graph(family.encoder(tiny_sam2), s, family.input_shape(tiny_sam2))
    assert [sorted(f) for f in found] == [sorted(st.params) for st in s.streams()]
    assert len(found) == 4 and ("neck.convs.0.conv.weight", 1) in found[3]


@pytest.mark.parametrize("attention", ["head_dim", "heads"])
def test_bottleneck_pruning_equals_zeroing(tiny_sam2, attention, photos):
    x = resize_batch(photos[:2], 256)
    kw = dict(ratio=0.5, part="bottleneck", importance="random", attention=attention, seed=1)
    p = vitslim.plan(tiny_sam2, **kw)
    pruned = vitslim.prune(tiny_sam2, **kw)
    before, after = vitslim.describe(tiny_sam2).widths(), vitslim.describe(pruned).widths()
    assert after["blocks"] != before["blocks"] and after["stream_dims"] == before["stream_dims"]
    for got, want in zip(fpn(pruned, x), fpn(_zeroed_reference(tiny_sam2, p), x)):
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_ratio_zero_is_the_identity(tiny_sam2, photos):
    x = resize_batch(photos[:1], 256)
    same = vitslim.prune(tiny_sam2, 0.0, part="both", importance="random")
    assert all(torch.equal(a, b) for a, b in zip(fpn(same, x), fpn(tiny_sam2, x)))


def test_every_stage_is_pruned_and_reloads_bit_identically(tiny_sam2, photos, tmp_path):
    x = resize_batch(photos[:2], 256)
    pruned = vitslim.prune(tiny_sam2, 0.5, part="both", importance="disturbed_taylor", data=x)
    w = vitslim.describe(pruned).widths()
    assert w["embed_dim"] < 16 and all(a < b for a, b in zip(w["stream_dims"], [32, 64, 128]))
    assert sum(p.numel() for p in pruned.image_encoder.parameters()) < 0.5 * sum(
        p.numel() for p in tiny_sam2.image_encoder.parameters())
    loaded = vitslim.load(vitslim.save(pruned, tmp_path / "slim.pt"))
    assert all(torch.equal(a, b) for a, b in zip(fpn(loaded, x), fpn(pruned, x)))
    assert [t.shape for t in fpn(loaded, x)] == [t.shape for t in fpn(tiny_sam2, x)]  # the neck keeps 256


def test_equal_stage_widths_keep_the_shortcut_projection(tiny_sam2, photos, tmp_path):
    """Two stages pruned to one width: each stage's first block must still project (and pool) its shortcut."""
    from vitslim.reshape import apply_widths

    family = family_of(tiny_sam2)
    model = copy.deepcopy(tiny_sam2)
    widths = family.describe(model).widths()
    widths.update(embed_dim=16, stream_dims=[16, 16, 16])
    apply_widths(model.image_encoder, family.describe(model), widths, family)
    calls = []
    for blk in model.image_encoder.trunk.blocks:
        if hasattr(blk, "proj"):
            blk.proj.register_forward_hook(lambda *_: calls.append(1))
    out = fpn(model, resize_batch(photos[:1], 256))
    assert len(calls) == 3 and [t.shape[-1] for t in out] == [64, 32, 16]


def test_compress_end_to_end_and_the_image_predictor(tiny_sam2, image_dir, tmp_path, capsys):  # noqa: F811
    from skimage import data
    from vitslim_sam2.predictor import image_predictor

    teacher = vitslim.save(tiny_sam2, tmp_path / "tiny-sam2.pt")
    out = tmp_path / "slim.pt"
    code, stdout, err = run(["compress", teacher, "--ratio", "0.5", "--data", image_dir, "--out", out,
                             "--epochs", "1", "--batch-size", "2", "--importance-batches", "1",
                             "--workdir", tmp_path / "work", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["after"]["params"] < summary["before"]["params"]
    assert summary["eval"]["prompts"] > 0 and 0 <= summary["eval"]["miou_point_vs_teacher"] <= 1
    predictor = image_predictor(vitslim.load(out))
    predictor.set_image(data.astronaut())
    masks, scores, _ = predictor.predict(point_coords=np.array([[250, 150]]), point_labels=np.array([1]),
                                         multimask_output=False)
    assert masks.shape == (1, 512, 512) and scores.shape == (1,)


def test_eval_teacher_against_itself_is_perfect(tiny_sam2, tmp_path, capsys):
    f = vitslim.save(tiny_sam2, tmp_path / "tiny-sam2.pt")
    code, stdout, err = run(["eval", f, "--teacher", f, "--limit", "2", "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["miou_point_vs_teacher"] == 1.0 and result["miou_box_vs_teacher"] == 1.0


def test_bad_names_and_arguments_are_one_line(capsys):
    code, _, err = run(["inspect", "sam2-xl"], capsys)
    assert code != 0 and "sam2-xl" in one_error_line(err)
    with pytest.raises(vitslim.UsageError, match="unknown SAM 2 encoder argument"):
        vitslim.create("sam2-t", pretrained=False, depth=3)


def test_official_checkpoint_layout_loads(tiny_sam2, tmp_path, photos):
    """SAM 2's own files hold {"model": state dict of SAM2Base}; an image-encoder-only dict works too."""
    x = resize_batch(photos[:1], 256)
    full, encoder_only = tmp_path / "sam2.1_hiera_tiny.pt", tmp_path / "encoder.pt"
    torch.save({"model": tiny_sam2.state_dict()}, full)
    torch.save(tiny_sam2.image_encoder.state_dict(), encoder_only)
    for f in (full, encoder_only):
        loaded = vitslim.create("sam2-t", checkpoint=str(f), **TINY)
        assert all(torch.equal(a, b) for a, b in zip(fpn(loaded, x), fpn(tiny_sam2, x)))
    with pytest.raises(vitslim.WeightsError, match="another model size"):
        vitslim.create("sam2-t", checkpoint=str(full), **{**TINY, "embed_dim": 24})


def test_attention_macs_follow_pooled_queries_and_windows(tiny_sam2, monkeypatch):
    """The structure's attention MACs equal those of the SDPA calls Hiera makes (q.k and attn.v)."""
    import torch.nn.functional as F

    from vitslim.cost import attention_macs

    seen, sdpa = [], F.scaled_dot_product_attention

    def counting(q, k, v, *args, **kwargs):
        seen.append(q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1]))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    fpn(tiny_sam2, torch.zeros(1, 3, 256, 256))
    structure = vitslim.describe(tiny_sam2)
    assert sum(seen) == attention_macs(structure)
    assert any(b.attn.q_len for b in structure.blocks) and any(b.attn.num_seqs > 1 for b in structure.blocks)


def test_onnx_export_gives_the_fpn_levels(tiny_sam2, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = vitslim.prune(tiny_sam2, 0.5, part="both", importance="magnitude")
    path = vitslim.export_onnx(model, tmp_path / "m.onnx")
    x = torch.randn(1, 3, 256, 256)
    session = ort.InferenceSession(str(path))
    got = session.run(None, {"image": x.numpy()})
    assert [o.name for o in session.get_outputs()] == ["output_0", "output_1", "output_2"]
    for g, want in zip(got, fpn(model, x)):
        assert np.abs(g - want.numpy()).max() <= 1e-4


def test_a_sam2_0_model_is_refused_in_one_line():
    """SAM 2.0 shares Hiera with 2.1 but not the rest of SAM2Base: its files could not be rebuilt."""
    from sam2.build_sam import build_sam2

    model = build_sam2("configs/sam2/sam2_hiera_t.yaml", None, device="cpu", hydra_overrides_extra=[
        "++model.image_encoder.trunk.stages=[1,1,1,1]", "++model.image_encoder.trunk.global_att_blocks=[2]"])
    with pytest.raises(vitslim.UsageError, match="SAM 2.0 model"):
        family_of(model)


def test_shapes_testbed_trains_a_sam2_teacher(tmp_path):
    """The SAM 2 testbed on a few generated scenes: training lowers the supervised loss (computed on the
    encoder's dict output through the decoder), and scoring runs ``vitslim eval``'s protocol."""
    from vitslim_sam2.testbed import ShapesSam2Testbed

    from vitslim.testbed import testbeds

    assert "shapes-sam2" in testbeds()
    tb = ShapesSam2Testbed(n_train=4, n_test=2, root=tmp_path / "shapes", size=128)
    untrained = vitslim.create("sam2-t", pretrained=False, seed=0, **tb.config)  # the teacher's initial state
    trained = tb.train_teacher(seed=0, steps=20, batch_size=2, masks_per_image=2, lr=3e-3)
    x = tb.train_images()

    def loss(model):
        with torch.no_grad():
            return float(tb.supervised_loss(model)(model.image_encoder(x), x))

    assert loss(trained) < 0.98 * loss(untrained)  # about 0.96 measured (20 small steps)
    scores = tb.score(trained, trained)
    assert scores["miou_point_vs_teacher"] == 1.0 and 0 <= scores["miou_box_vs_gt"] <= 1


def test_family_scales_distillation_by_the_teachers_fpn_levels():
    """SAM 2's FPN levels sit on scales orders of magnitude apart (the shipped shapes-sam2 teacher), so
    the family distils with each level's MSE divided by the teacher's mean square (``loss_scale``)."""
    from vitslim.testbed import get_testbed

    tb = get_testbed("shapes-sam2")
    teacher = tb.teacher().eval()
    family = family_of(teacher)
    with torch.no_grad():
        levels = family.output_features(family.encoder(teacher)(tb.subset(2)))
    squares = [float(t.pow(2).mean()) for t in levels]
    assert max(squares) > 1000 * min(squares)
    assert family.loss_scale == "teacher"
