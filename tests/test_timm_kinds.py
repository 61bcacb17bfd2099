"""timm attention kinds beyond the plain ViT: EVA / EVA02 (EvaAttention, q/v biases, RoPE), the RoPE ViTs
and DINOv3 (AttentionRope, separate q/k/v), gated attention; and the one-line refusals."""

import copy

import pytest
import torch

import vitslim
from vitslim.errors import UsageError

from .conftest import encode, resize_batch
from .test_pruning import _zeroed_reference

SMALL = dict(pretrained=False, depth=2, embed_dim=48, num_heads=3, num_classes=0)  # features, not near-zero logits

# (architecture, input size, the one attention mode its blocks allow, if only one)
KINDS = [
    ("eva02_tiny_patch14_224", 56, "heads"),          # EvaAttention, fused qkv + q/v biases, RoPE, SwiGLU
    ("vit_base_patch16_rope_224", 64, "heads"),       # EvaAttention with RoPE, plain Mlp
    ("vit_small_patch16_dinov3", 64, "heads"),        # AttentionRope (DINOv3 RoPE), LayerScale, registers
    ("vit_pe_core_tiny_patch16_384", 64, "heads"),    # AttentionRope (Perception Encoder), attention pool
    ("eva_giant_patch14_224", 56, None),              # EvaAttention without RoPE
    ("vit_base_patch16_siglip_224", 64, None),        # timm Attention, latent attention-pooling head
    ("beit_base_patch16_224", 64, None),              # BEiT: q/v biases, per-block bias table per head
    ("vit_relpos_small_patch16_224", 64, None),       # RelPosAttention, bias from an MLP (one output per head)
    ("vit_relpos_base_patch16_clsgap_224", 64, None), # RelPosAttention, class token
    ("vit_relpos_small_patch16_rpn_224", 64, None),   # RelPosAttention, residual post-norm blocks
    ("vit_srelpos_small_patch16_224", 64, "head_dim"),  # one relative position bias shared by every block
    ("samvit_base_patch16", 64, None),                # timm's SAM ViT: windows, decomposed rel-pos, conv neck
    ("naflexvit_base_patch16_gap", 64, None),         # NaFlexVit: Linear patch embedding, in-place pos embed
    ("naflexvit_base_patch16_parfac_gap", 64, None),  # NaFlexVit: factorised position embedding
    ("vit_tiny_r_s16_p8_224", 64, None),              # hybrid: a ResNet stem feeds the patch projection
]


def _model(arch: str, size: int):
    torch.manual_seed(0)
    model = vitslim.create(f"timm:{arch}", img_size=size, **SMALL)
    with torch.no_grad():  # timm starts biases, gates and some branches near zero: give them values that matter
        for name, p in model.named_parameters():
            if name.startswith("blocks.") and name.endswith((".proj.weight", "fc2.weight")) and p.dim() == 2:
                p.normal_(0, 0.2)
            if name.endswith(("q_bias", "v_bias", "fc1_g.weight", "gamma_1", "gamma_2", "ls1.gamma", "ls2.gamma", "bias_table", "norm1.weight", "norm2.weight",
                              "rel_pos.mlp.fc2.weight")):
                p.normal_(0, 0.2)
    return model


def _out(model, x):
    y = encode(model, x)
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize("arch,size,only", KINDS)
@pytest.mark.parametrize("attention", ["head_dim", "heads"])
def test_bottleneck_pruning_equals_zeroing(arch, size, only, attention, photos):
    model = _model(arch, size)
    x = resize_batch(photos[:3], size)
    kw = dict(ratio=0.5, part="bottleneck", importance="random", attention=attention, seed=2)
    p = vitslim.plan(model, **kw)
    kinds = {g.kind for g in p.groups if g.kind != "mlp"}
    assert kinds == {only or attention}  # rotary blocks only lose whole heads, a shared bias keeps them all
    pruned = vitslim.prune(model, **kw)
    if getattr(model, "attn_pool", None) is not None:  # the pooling head's MLP is pruned like a block's
        assert pruned.attn_pool.mlp.fc1.out_features < model.attn_pool.mlp.fc1.out_features
    widths = vitslim.describe(pruned).widths()["blocks"]
    assert all(b["num_heads"] < 3 or b["head_dim"] < 16 for b in widths)
    assert vitslim.inspect(pruned, macs=False)["history"][-1]["attention_removed"] == [only or attention]
    expected = _out(_zeroed_reference(model, p), x)
    got = _out(pruned, x)
    assert (got - expected).abs().max().item() <= 1e-5
    assert (_out(model, x) - got).abs().max().item() > 1e-4


@pytest.mark.parametrize("arch,size,only", KINDS)
def test_ratio_zero_and_roundtrip(arch, size, only, photos, tmp_path):
    model = _model(arch, size)
    x = resize_batch(photos[:2], size)
    same = vitslim.prune(model, 0.0, part="both", importance="magnitude")
    assert torch.equal(_out(model, x), _out(same, x))
    pruned = vitslim.prune(model, 0.5, part="both", importance="magnitude")  # graph and description agree
    assert vitslim.describe(pruned).widths()["embed_dim"] == 24
    y = _out(pruned, x)
    assert y.shape[0] == 2 and torch.isfinite(y).all()  # features: the pruned width, or a pool's own
    loaded = vitslim.load(vitslim.save(pruned, tmp_path / "m.safetensors"))
    assert torch.equal(_out(loaded, x), y)


@pytest.mark.parametrize("arch,module", [("eva02_tiny_patch14_224", "blocks.0.attn"),
                                         ("beit_base_patch16_224", "blocks.0.attn"),
                                         ("vit_relpos_small_patch16_224", "blocks.0.attn"),
                                         ("vit_base_patch16_siglip_224", "attn_pool"),
                                         ("naflexvit_base_patch16_gap", "embeds.norm")])
def test_adopted_layers_keep_the_function(arch, module, photos):
    """The family's stand-ins for layers that assume equal widths (own width, layers called as layers)
    compute timm's function: same parameters, same outputs."""
    import timm

    torch.manual_seed(0)
    ref = timm.create_model(arch, img_size=64, **{k: v for k, v in SMALL.items() if k != "pretrained"}).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(("q_bias", "v_bias", "bias_table")):
                p.normal_(0, 0.2)
    adopted = copy.deepcopy(ref)
    vitslim.describe(adopted)
    assert type(adopted.get_submodule(module)) is not type(ref.get_submodule(module))
    assert adopted.state_dict().keys() == ref.state_dict().keys()
    x = resize_batch(photos[:2], 64)
    with torch.no_grad():
        assert (ref(x) - adopted(x)).abs().max().item() <= 1e-5


def test_scale_norms_prune_and_roundtrip(photos, tmp_path):
    """EVA02-B's norm inside the MLP (scale_mlp) and inside attention (scale_attn_inner) shrink with the
    widths they normalise (not exact: they re-normalise over the kept channels, like the residual norms)."""
    torch.manual_seed(0)
    model = vitslim.create("timm:eva02_base_patch14_224", img_size=56, scale_attn_inner=True, **SMALL)
    assert not isinstance(model.blocks[0].mlp.norm, torch.nn.Identity)
    pruned = vitslim.prune(model, 0.5, part="both", importance="magnitude")
    hidden = vitslim.describe(pruned).widths()["blocks"][0]["mlp_hidden"]
    assert pruned.blocks[0].mlp.norm.weight.shape == (hidden,)
    assert pruned.blocks[0].attn.norm.weight.shape == (pruned.blocks[0].attn.num_heads * 16,)
    x = resize_batch(photos[:2], 56)
    loaded = vitslim.load(vitslim.save(pruned, tmp_path / "m.pt"))
    assert torch.equal(_out(loaded, x), _out(pruned, x))


def test_compress_runs_on_a_rotary_vit(photos, tmp_path):
    torch.manual_seed(0)
    model = vitslim.create("timm:vit_small_patch16_dinov3", img_size=64, **{**SMALL, "num_classes": 10})
    result = vitslim.compress_run(model, 0.5, data=resize_batch(photos[:4], 64), epochs=1, batch_size=2,
                                  min_steps=2, importance="magnitude", out=tmp_path / "c.pt", progress=False)
    loaded = vitslim.load(tmp_path / "c.pt")
    assert vitslim.describe(loaded).widths() == vitslim.describe(result.student).widths()
    assert all(b["num_heads"] < 3 for b in vitslim.describe(loaded).widths()["blocks"])


@pytest.mark.parametrize("arch,config,message", [
    ("vit_small_patch16_rope_mixed_224", {}, "learns per-head"),
    ("vit_small_patch16_18x2_224", {}, "parallel branches"),
    ("vit_base_patch16_xp_224", {}, "parallel branches"),
])
def test_refusals_are_one_line(arch, config, message):
    with pytest.raises(UsageError, match=message) as err:
        vitslim.create(f"timm:{arch}", **{**SMALL, "img_size": 64, **config})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("attention", ["head_dim", "heads"])
def test_gated_attention_pruning_equals_zeroing(attention, photos):
    """An attention output gate (EvaAttention's ``gated``): its rows go with the attention channels."""
    torch.manual_seed(0)
    model = vitslim.create("timm:eva_giant_patch14_224", img_size=56, **SMALL)
    for blk in model.blocks:
        blk.attn.gate = torch.nn.Linear(48, blk.attn.proj.in_features)
    x = resize_batch(photos[:3], 56)
    kw = {"ratio": 0.5, "part": "bottleneck", "importance": "random", "attention": attention, "seed": 4}
    p = vitslim.plan(model, **kw)
    assert any(name.endswith("attn.gate.weight") for g in p.groups if g.kind == attention for name, _, _ in g.members)
    pruned = vitslim.prune(model, **kw)
    assert pruned.blocks[0].attn.gate.out_features < 48
    assert (_out(pruned, x) - _out(_zeroed_reference(model, p), x)).abs().max().item() <= 1e-5
    assert (_out(model, x) - _out(pruned, x)).abs().max().item() > 1e-4


def test_grouped_query_attention_loses_whole_groups(photos, tmp_path):
    """Sapiens2's grouped-query blocks (4 query heads sharing 2 key/value heads): a removed channel is a
    key/value head with the query heads that read it; removing it equals zeroing it, and files reload."""
    torch.manual_seed(0)
    model = vitslim.create("timm:vit_large_patch16_sapiens2", img_size=64, **{**SMALL, "num_heads": 4},
                           num_kv_heads=(2, 2))
    assert model.blocks[0].attn.num_kv_groups == 2
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".proj.weight", "fc2.weight", "gamma_1", "gamma_2")):
                p.normal_(0, 0.2)
    x = resize_batch(photos[:3], 64)
    kw = {"ratio": 0.5, "part": "bottleneck", "importance": "random", "seed": 1}
    p = vitslim.plan(model, **kw)
    assert {g.size for g in p.groups if g.kind == "heads"} == {2}
    pruned = vitslim.prune(model, **kw)
    attn = pruned.blocks[0].attn
    assert (attn.num_heads, attn.num_kv_heads, attn.q_proj.out_features, attn.k_proj.out_features) == (2, 1, 24, 12)
    assert (_out(pruned, x) - _out(_zeroed_reference(model, p), x)).abs().max().item() <= 1e-5
    assert (_out(model, x) - _out(pruned, x)).abs().max().item() > 1e-4
    both = vitslim.prune(model, 0.5, part="both", importance="magnitude")
    loaded = vitslim.load(vitslim.save(both, tmp_path / "g.pt"))
    assert vitslim.describe(loaded).widths() == vitslim.describe(both).widths()
    assert torch.equal(_out(loaded, x), _out(both, x))


def test_eva_attention_stand_in_keeps_masks():
    """Causal and boolean masks, and the unfused path, give timm's EvaAttention results."""
    from timm.models.eva import EvaAttention
    from vitslim_timm.layers import adopt

    torch.manual_seed(0)
    ref = EvaAttention(32, num_heads=4, norm_layer=torch.nn.LayerNorm).eval()
    with torch.no_grad():
        ref.q_bias.normal_(0, 0.2)
        ref.v_bias.normal_(0, 0.2)
    ours = copy.deepcopy(ref)
    adopt(ours)
    assert type(ours) is not EvaAttention
    x = torch.randn(2, 6, 32)
    keep = torch.rand(6, 6) > 0.3
    keep.fill_diagonal_(True)
    for fused in (True, False):
        ref.fused_attn = ours.fused_attn = fused
        for kw in ({}, {"is_causal": True}, {"attn_mask": keep}, {"attn_mask": torch.randn(6, 6)}):
            with torch.no_grad():
                assert (ref(x, **kw) - ours(x, **kw)).abs().max().item() <= 1e-5, (fused, kw)
