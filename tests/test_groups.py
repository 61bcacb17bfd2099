"""Channel groups: one declaration of what moves together, used by pruning and by loading alike."""

import pytest
import torch

import vitslim
from vitslim.groups import attention_group, block_members, build_groups, mlp_group, qkv_rows
from vitslim.registry import family_of
from vitslim.reshape import apply_widths


def test_qkv_rows_follow_the_q_k_v_head_dim_layout():
    rows = qkv_rows(num_heads=2, head_dim=3, heads=torch.tensor([1]), dims=torch.tensor([0, 2]))
    assert rows.tolist() == [3, 5, 9, 11, 15, 17]  # q, k, v blocks of 6 rows; head 1 starts at 3


@pytest.mark.parametrize("which", ["tiny_sam", "tiny_timm"])
def test_every_changed_parameter_is_a_declared_member(which, request):
    """Pruning changes exactly the declared members' axes, and loading resizes exactly those: applying
    the pruned widths to a fresh model gives the pruned model's shapes, parameter by parameter."""
    model = request.getfixturevalue(which)
    pruned = vitslim.prune(model, 0.5, part="both", importance="magnitude", ranking="global")
    family = family_of(model)
    structure = family.describe(model)
    before = dict(family.encoder(model).named_parameters())
    after = dict(family.encoder(pruned).named_parameters())
    declared = set(structure.embedding_params)
    for block in structure.blocks:
        declared |= {(m.param, m.axis) for m in block_members(block)}
    for name, p in before.items():
        for axis in range(p.dim()):
            if p.shape[axis] != after[name].shape[axis]:
                assert (name, axis) in declared, (name, axis)
    fresh = family.create(vitslim.info.get_info(model)["name"], pretrained=False, **vitslim.info.get_info(model)["config"])
    apply_widths(family.encoder(fresh), family.describe(fresh), family.describe(pruned).widths(), family)
    assert {n: p.shape for n, p in family.encoder(fresh).named_parameters()} == {n: p.shape for n, p in after.items()}


def test_group_sizes_and_members(tiny_sam):
    s = family_of(tiny_sam).describe(tiny_sam)
    a = s.blocks[0].attn
    dims = attention_group(s, 0, "head_dim")
    heads = attention_group(s, 0, "heads")
    mlp = mlp_group(s, 0)
    assert (dims.size, heads.size, mlp.size) == (a.head_dim, a.num_heads, s.blocks[0].mlp.hidden)
    assert {m[0] for m in dims.members} >= {f"{a.qkv}.weight", f"{a.proj}.weight", *(n for n, _ in a.head_dim_params)}
    assert not {n for n, _ in a.head_dim_params} & {m[0] for m in heads.members}  # whole heads keep the head dim
    kinds = [g.kind for g in build_groups(s, "both", "heads")]
    assert kinds[0] == "embedding" and kinds.count("heads") == kinds.count("mlp") == len(s.blocks)


def test_each_residual_stream_is_its_own_group():
    """A hierarchical encoder's later streams: one embedding group each, members from their own params;
    global ranking gives them their own widths, uniform the same fraction."""
    from vitslim.ranking import select
    from vitslim.structure import ResidualStream, Structure

    s = Structure(embed_dim=4, blocks=[], embedding_root="a", embedding_params=[("a.weight", 0)],
                  later_streams=[ResidualStream(8, "b", [("b.weight", 0), ("c.weight", 1)])])
    groups = build_groups(s, "embedding")
    assert [(g.name, g.size, g.block) for g in groups] == [("embedding", 4, 0), ("embedding.1", 8, 1)]
    assert [m[:2] for m in groups[1].members] == [("b.weight", 0), ("c.weight", 1)]
    scores = {"embedding": torch.ones(4), "embedding.1": torch.tensor([1.0] * 4 + [1e-3] * 4)}
    assert [len(k) for k in select(groups, scores, 0.25, "global").values()] == [4, 5]
    assert [len(k) for k in select(groups, scores, 0.25, "uniform").values()] == [3, 6]
    assert s.widths()["stream_dims"] == [8] and "stream_dims" not in Structure(4, [], "a").widths()
