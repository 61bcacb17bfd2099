"""Weight download and checkpoint handling, without a network: clear lines, no poisoned cache."""

import hashlib
import urllib.error

import pytest

import vitslim
from vitslim import weights
from vitslim.errors import UsageError, WeightsError


def test_offline_download_gives_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSLIM_CACHE", str(tmp_path))

    def offline(url, filename):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(weights.urllib.request, "urlretrieve", offline)
    with pytest.raises(WeightsError, match="are you offline.*--checkpoint PATH"):
        vitslim.create("sam-b")
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_is_rejected_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSLIM_CACHE", str(tmp_path))

    def fake(url, filename):
        with open(filename, "wb") as f:
            f.write(b"not the real weights")

    monkeypatch.setattr(weights.urllib.request, "urlretrieve", fake)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        weights.fetch("https://example.invalid/w.pth", "0" * 64)
    assert list(tmp_path.iterdir()) == []
    good = hashlib.sha256(b"not the real weights").hexdigest()
    path = weights.fetch("https://example.invalid/w.pth", good)
    assert path.read_bytes() == b"not the real weights"
    # a cached copy is verified again and reused without downloading
    monkeypatch.setattr(weights.urllib.request, "urlretrieve", lambda *a: pytest.fail("downloaded again"))
    assert weights.fetch("https://example.invalid/w.pth", good) == path


def test_local_checkpoint_loads_exactly(tiny_sam, tmp_path):
    import torch

    torch.save(tiny_sam.state_dict(), tmp_path / "w.pth")
    from .conftest import TINY_SAM

    again = vitslim.create("sam-b", checkpoint=tmp_path / "w.pth", **TINY_SAM)
    for (k, a), (_, b) in zip(tiny_sam.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    # an image-encoder-only state dict works too
    torch.save(tiny_sam.image_encoder.state_dict(), tmp_path / "enc.pth")
    enc_only = vitslim.create("sam-b", checkpoint=tmp_path / "enc.pth", **TINY_SAM)
    assert torch.equal(enc_only.image_encoder.pos_embed, tiny_sam.image_encoder.pos_embed)


def test_unknown_names(tmp_path):
    with pytest.raises(UsageError, match="unknown model 'sam-x'"):
        vitslim.create("sam-x")
    with pytest.raises(UsageError, match="unknown SAM encoder argument"):
        vitslim.create("sam-b", pretrained=False, colour="red")
    with pytest.raises(UsageError, match="unknown timm model"):
        vitslim.create("timm:vit_nonexistent_9000")
