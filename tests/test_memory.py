"""Activation checkpointing (vitslim.memory): the same gradients and the same compressed model, when on."""

from __future__ import annotations

import copy

import pytest
import torch

import vitslim
import vitslim.memory as memory
from vitslim.errors import UsageError
from vitslim.registry import family_of

from .conftest import resize_batch


def _grads(model, x, mode, monkeypatch=None):
    family = family_of(model)
    encoder = family.encoder(model)
    blocks = [b.name for b in family.describe(model).blocks]
    encoder.zero_grad(set_to_none=True)
    recomputed = []
    with memory.checkpointed(encoder, blocks, mode) as state:
        # count block forwards: a checkpointed block runs again in the backward pass
        inner = next(encoder.get_submodule(blocks[0]).children())
        handle = inner.register_forward_pre_hook(lambda m, a: recomputed.append(1))
        out = encoder(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        out.float().pow(2).mean().backward()
        handle.remove()
    return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}, state, len(recomputed)


def test_checkpointed_blocks_give_the_same_gradients(tiny_sam, photos):
    x = resize_batch(photos[:2], 128)
    plain, state_off, calls_off = _grads(tiny_sam, x, "off")
    ckpt, state_on, calls_on = _grads(tiny_sam, x, "on")
    assert state_off.on is False and state_on.on is True
    assert calls_off == 1 and calls_on == 2  # the block really was recomputed in the backward pass
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=0, atol=1e-7, msg=name)


def test_auto_turns_on_only_when_the_activations_would_not_fit(tiny_timm, photos, monkeypatch):
    x = resize_batch(photos[:1], 64)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 10 ** 15)
    _, state, calls = _grads(tiny_timm, x, "auto")
    assert state.on is False and calls == 1
    blocks = family_of(tiny_timm).describe(tiny_timm).blocks
    # 17 tokens (4 x 4 patches and the class token) x 48 channels x 4 bytes x 20 x 3 blocks
    assert state.needed_bytes == 17 * 48 * 4 * memory.KEPT_PER_INPUT * len(blocks)
    monkeypatch.setattr(memory, "free_bytes", lambda device: state.needed_bytes)  # needs half of it at most
    told = []
    encoder = family_of(tiny_timm).encoder(tiny_timm)
    with memory.checkpointed(encoder, [b.name for b in blocks], "auto", told.append) as st:
        with torch.no_grad():
            encoder(x)  # no gradients: nothing to decide
        assert st.on is None
        encoder(x).sum().backward()
    assert st.on is True and told == [st] and "GB free" in st.describe()
    # the blocks' own forward is back once the context ends
    assert all("forward" not in encoder.get_submodule(b.name).__dict__ for b in blocks)


def test_a_bad_mode_is_refused(tiny_timm):
    with pytest.raises(UsageError, match="activation checkpointing 'sometimes'"):
        vitslim.prune(tiny_timm, 0.5, importance="magnitude", activation_checkpointing="sometimes")
    with pytest.raises(UsageError, match="activation checkpointing"):
        vitslim.compress(tiny_timm, 0.5, data=torch.rand(4, 3, 64, 64), activation_checkpointing="yes")


def test_compress_with_checkpointing_gives_the_same_student(tiny_sam, photos, tmp_path):
    x = resize_batch(photos, 128)
    kw = dict(ratio=0.5, data=x, epochs=1, batch_size=2, lr=1e-3, importance_batches=2, progress=False)
    on = vitslim.compress(copy.deepcopy(tiny_sam), workdir=tmp_path / "on", activation_checkpointing="on", **kw)
    off = vitslim.compress(copy.deepcopy(tiny_sam), workdir=tmp_path / "off", activation_checkpointing="off", **kw)
    assert vitslim.describe(on).widths() == vitslim.describe(off).widths()
    for (k, a), (_, b) in zip(on.state_dict().items(), off.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)
    assert all("forward" not in blk.__dict__ for blk in on.image_encoder.blocks)
