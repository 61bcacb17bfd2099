"""Ranking: from channel scores to kept channels (global per-block widths, uniform, round_to)."""

import pytest
import torch

import vitslim
from vitslim.groups import ChannelGroup
from vitslim.ranking import select


def _groups(*sizes, kind="mlp"):
    return [ChannelGroup(f"g{i}", kind, n, i) for i, n in enumerate(sizes)]


def test_uniform_keeps_the_same_fraction_of_every_group_by_score():
    groups = _groups(8, 4)
    scores = {"g0": torch.arange(8.0), "g1": torch.tensor([5.0, 1.0, 3.0, 2.0])}
    keep = select(groups, scores, 0.5, "uniform")
    assert keep["g0"].tolist() == [4, 5, 6, 7] and keep["g1"].tolist() == [0, 2]


def test_global_normalises_each_group_then_pools():
    # g0's channels are all alike; g1 has two strong and two near-zero channels: after dividing by each
    # group's mean, the pool keeps all of g0 and only g1's strong ones
    groups = _groups(4, 4)
    scores = {"g0": torch.full((4,), 100.0), "g1": torch.tensor([1.0, 1.0, 0.001, 0.001])}
    keep = select(groups, scores, 0.25, "global")
    assert keep["g0"].tolist() == [0, 1, 2, 3] and keep["g1"].tolist() == [0, 1]


def test_global_never_empties_a_group_and_ties_keep_lower_indices():
    groups = _groups(4, 4)
    scores = {"g0": torch.ones(4), "g1": torch.tensor([0.0, 0.0, 0.0, 1e-9])}
    keep = select(groups, scores, 0.5, "global")
    assert len(keep["g1"]) >= 1
    same = select(_groups(4), {"g0": torch.ones(4)}, 0.5, "uniform")
    assert same["g0"].tolist() == [0, 1]


def test_round_to_rounds_kept_widths():
    keep = select(_groups(64), {"g0": torch.rand(64)}, 0.6, "uniform", round_to=8)
    assert len(keep["g0"]) % 8 == 0 and len(keep["g0"]) == 24  # 25.6 -> 24


def test_unknown_ranking():
    with pytest.raises(ValueError, match="unknown ranking"):
        select(_groups(4), {"g0": torch.ones(4)}, 0.5, "sideways")


def test_global_ranking_gives_per_block_widths(tiny_sam):
    def skewed(group, ctx):
        # block 0: every channel equally useful; other blocks: 3/4 of their channels nearly useless.
        # Scores are compared after dividing by each group's mean, so block 0 keeps all its channels.
        if group.block == 0:
            return torch.ones(group.size)
        s = torch.full((group.size,), 0.01)
        s[: group.size // 4] = 4.0
        return s

    p = vitslim.plan(tiny_sam, 0.5, part="bottleneck", importance=skewed, ranking="global")
    kept_mlp = {g.block: len(p.keep[g.name]) for g in p.groups if g.kind == "mlp"}
    assert kept_mlp[0] == 256 and min(kept_mlp.values()) >= 1
    assert sum(kept_mlp.values()) == 4 * 256 // 2
    u = vitslim.plan(tiny_sam, 0.5, part="bottleneck", importance=skewed, ranking="uniform")
    assert {len(u.keep[g.name]) for g in u.groups if g.kind == "mlp"} == {128}


def test_round_to_on_a_model(tiny_sam):
    pruned = vitslim.prune(tiny_sam, 0.6, part="both", importance="magnitude", round_to=8)
    w = vitslim.describe(pruned).widths()
    assert w["embed_dim"] % 8 == 0
    assert all(b["head_dim"] % 8 == 0 and b["mlp_hidden"] % 8 == 0 for b in w["blocks"])
