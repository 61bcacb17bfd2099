"""The pruning core end to end: exactness against zeroing, embedding consistency, the graph check."""

import pytest
import torch

import vitslim
from vitslim.errors import UsageError
from vitslim.registry import family_of

from .conftest import encode, resize_batch


def _zeroed_reference(model, p):
    """The original model with exactly the channels ``p`` removes set to zero."""
    import copy

    ref = copy.deepcopy(model)
    enc = family_of(ref).encoder(ref)
    params = dict(enc.named_parameters())
    with torch.no_grad():
        for g in p.groups:
            removed = torch.ones(g.size, dtype=torch.bool)
            removed[p.keep[g.name]] = False
            for name, axis, index in g.members:
                params[name].index_fill_(axis, index[removed].flatten(), 0.0)
    return ref


CASES = [("tiny_sam", 128), ("tiny_timm", 64)]


@pytest.mark.parametrize("which,size", CASES)
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.8])
@pytest.mark.parametrize("attention", ["head_dim", "heads"])
def test_bottleneck_pruning_equals_zeroing(which, size, ratio, attention, request, photos):
    model = request.getfixturevalue(which)
    x = resize_batch(photos, size)
    kw = dict(ratio=ratio, part="bottleneck", importance="random", attention=attention, seed=3)
    p = vitslim.plan(model, **kw)
    pruned = vitslim.prune(model, **kw)
    w = vitslim.describe(pruned).widths()
    assert any(b["mlp_hidden"] < 4 * w["embed_dim"] for b in w["blocks"])  # something was removed
    expected = encode(_zeroed_reference(model, p), x)
    got = encode(pruned, x)
    assert (got - expected).abs().max().item() <= 1e-5
    # and removing the channels matters: the unpruned output differs
    assert (encode(model, x) - got).abs().max().item() > 1e-4


@pytest.mark.parametrize("which,size", CASES)
def test_ratio_zero_changes_nothing(which, size, request, photos):
    model = request.getfixturevalue(which)
    x = resize_batch(photos[:2], size)
    pruned = vitslim.prune(model, 0.0, part="both", importance="magnitude")
    assert torch.equal(encode(model, x), encode(pruned, x))
    for (k, a), (_, b) in zip(model.state_dict().items(), pruned.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("which,size", CASES)
def test_embedding_pruning_shapes_and_roundtrip(which, size, request, photos, tmp_path):
    model = request.getfixturevalue(which)
    x = resize_batch(photos[:2], size)
    before = vitslim.describe(model).widths()
    pruned = vitslim.prune(model, 0.5, part="embedding", importance="magnitude")
    after = vitslim.describe(pruned).widths()
    assert after["embed_dim"] == before["embed_dim"] // 2
    assert after["blocks"] == before["blocks"]  # attention and MLP widths untouched
    enc = family_of(pruned).encoder(pruned)
    for name, axis in vitslim.describe(pruned).embedding_params:
        assert enc.get_parameter(name).shape[axis] == after["embed_dim"], name
    y = encode(pruned, x)
    assert y.shape == encode(model, x).shape and torch.isfinite(y).all()
    loaded = vitslim.load(vitslim.save(pruned, tmp_path / "p.pt"))
    assert torch.equal(encode(loaded, x), y)
    assert vitslim.inspect(loaded, macs=False)["history"][0]["part"] == "embedding"


def test_bad_arguments(tiny_timm):
    for bad in (-0.1, 1.0, 1.5, "0.5", None):
        with pytest.raises(UsageError, match="ratio"):
            vitslim.prune(tiny_timm, bad, importance="magnitude")
    with pytest.raises(UsageError, match="unknown criterion"):
        vitslim.prune(tiny_timm, 0.5, importance="nope")
    with pytest.raises(UsageError, match="needs calibration images"):
        vitslim.prune(tiny_timm, 0.5)
    with pytest.raises(UsageError, match="unknown part"):
        vitslim.prune(tiny_timm, 0.5, part="heads", importance="magnitude")


@pytest.mark.parametrize("which", ["tiny_sam", "tiny_timm"])
def test_dependency_graph_agrees_with_structure_description(which, request):
    """torch-pruning's graph (traced on a meta shadow) and the family's description name the same
    embedding-coupled parameters; loading a file relies on the description alone."""
    from vitslim.graph import embedding_params_from_graph

    model = request.getfixturevalue(which)
    fam = family_of(model)
    st = fam.describe(model)
    from_graph = embedding_params_from_graph(fam.encoder(model), st, fam.input_shape(model))
    assert sorted(from_graph) == sorted(st.embedding_params)
    assert any(name.endswith("pos_embed") for name, _ in from_graph)


@pytest.mark.parametrize("arch,size", [("deit_tiny_distilled_patch16_224", 64),   # distillation token + head
                                       ("vit_small_patch14_dinov2", 56),          # LayerScale
                                       ("vit_base_patch16_reg4_gap_256", 64),     # register tokens, GAP
                                       ("aimv2_large_patch14_224", 56),           # SwiGLU MLP, RMSNorm
                                       ("vit_giant_patch14_dinov2", 56)])         # GLU in one layer
def test_timm_variants_prune_and_roundtrip(arch, size, tmp_path):
    torch.manual_seed(0)
    model = vitslim.create(f"timm:{arch}", pretrained=False, depth=2, embed_dim=48, num_heads=3, img_size=size)
    pruned = vitslim.prune(model, 0.5, part="both", importance="magnitude")  # graph and description agree
    assert vitslim.describe(pruned).widths()["embed_dim"] == 24
    x = torch.randn(2, 3, size, size)
    loaded = vitslim.load(vitslim.save(pruned, tmp_path / "m.pt"))
    with torch.no_grad():
        a, b = pruned(x), loaded(x)
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    assert torch.equal(a, b)


def test_description_disagreeing_with_graph_is_refused(tiny_timm, monkeypatch):
    from vitslim_timm.family import TimmFamily

    real = TimmFamily.describe

    def forgetful(self, model):
        st = real(self, model)
        st.embedding_params = [p for p in st.embedding_params if p[0] != "pos_embed"]
        return st

    monkeypatch.setattr(TimmFamily, "describe", forgetful)
    with pytest.raises(UsageError, match="not described: pos_embed"):
        vitslim.prune(tiny_timm, 0.5, part="embedding", importance="magnitude")


@pytest.mark.parametrize("arch,gate", [("aimv2_large_patch14_224", "fc1_g"), ("vit_giant_patch14_dinov2", "fc1")])
def test_gated_mlp_bottleneck_pruning_equals_zeroing(arch, gate, photos):
    """SwiGLU (AIMv2: separate gate) and GluMlp (DINOv2-giant: value and gate halves of one fc1): a hidden
    channel's gate and value rows go together; removing them equals zeroing them."""
    torch.manual_seed(0)
    model = vitslim.create(f"timm:{arch}", pretrained=False, depth=2, embed_dim=48, num_heads=3, img_size=56)
    with torch.no_grad():  # timm starts a gate near zero: give it values that matter
        for blk in model.blocks:
            getattr(blk.mlp, gate).weight.normal_(0, 0.2)
    x = resize_batch(photos, 56)
    kw = dict(ratio=0.5, part="bottleneck", importance="random", seed=1)
    p = vitslim.plan(model, **kw)
    assert any(name.endswith(f"{gate}.weight") for g in p.groups if g.kind == "mlp" for name, _, _ in g.members)
    pruned = vitslim.prune(model, **kw)
    assert (encode(pruned, x) - encode(_zeroed_reference(model, p), x)).abs().max().item() <= 1e-5
    assert (encode(model, x) - encode(pruned, x)).abs().max().item() > 1e-4
