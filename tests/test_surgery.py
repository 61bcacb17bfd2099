"""Surgery: the kept channels' entries, and only those, survive in every member parameter."""

import torch
from torch import nn

from vitslim.groups import ChannelGroup
from vitslim.surgery import remove_group_channels


def test_remove_group_channels_keeps_the_selected_entries():
    enc = nn.Sequential(nn.Linear(3, 6), nn.Linear(6, 2))
    with torch.no_grad():
        enc[0].weight.copy_(torch.arange(18.0).view(6, 3))
        enc[1].weight.copy_(torch.arange(12.0).view(2, 6))
    # 3 channels of 2 entries each: channel j owns rows/cols (2j, 2j + 1)
    index = torch.tensor([[0, 1], [2, 3], [4, 5]])
    group = ChannelGroup("g", "mlp", 3, 0, [("0.weight", 0, index), ("0.bias", 0, index), ("1.weight", 1, index)])
    w0, b0, w1 = enc[0].weight.clone(), enc[0].bias.clone(), enc[1].weight.clone()
    remove_group_channels(enc, group, torch.tensor([0, 2]))
    kept = torch.tensor([0, 1, 4, 5])
    assert torch.equal(enc[0].weight, w0[kept]) and torch.equal(enc[0].bias, b0[kept])
    assert torch.equal(enc[1].weight, w1[:, kept])
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in enc.parameters())


def test_keeping_everything_changes_nothing():
    enc = nn.Sequential(nn.Linear(3, 4))
    before = enc[0].weight
    group = ChannelGroup("g", "mlp", 4, 0, [("0.weight", 0, torch.arange(4)[:, None])])
    remove_group_channels(enc, group, torch.arange(4))
    assert enc[0].weight is before
