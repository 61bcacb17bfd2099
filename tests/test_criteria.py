"""Each criterion picks what it should on constructed cases."""

import pytest
import torch

import vitslim
from vitslim.criteria import Criterion, DisturbedTaylorImportance, MagnitudeImportance, TaylorImportance
from vitslim.registry import plugin_manager

from .conftest import resize_batch


def _mlp_kept(p, block=0):
    return next(p.keep[g.name] for g in p.groups if g.kind == "mlp" and g.block == block)


def test_magnitude_removes_hand_zeroed_channels(tiny_timm):
    fc1 = tiny_timm.blocks[0].mlp.fc1
    dead = torch.tensor([3, 17, 40, 99, 150])
    with torch.no_grad():
        fc1.weight[dead] = 0
        fc1.bias[dead] = 0
        tiny_timm.blocks[0].mlp.fc2.weight[:, dead] = 0
    n = fc1.out_features
    p = vitslim.plan(tiny_timm, len(dead) / n, part="bottleneck", importance=MagnitudeImportance(p=1),
                     ranking="uniform")
    kept = set(_mlp_kept(p).tolist())
    assert len(kept) == n - len(dead) and kept.isdisjoint(dead.tolist())


def test_random_is_reproducible_with_seed(tiny_sam):
    a = vitslim.plan(tiny_sam, 0.5, part="both", importance="random", seed=7)
    b = vitslim.plan(tiny_sam, 0.5, part="both", importance="random", seed=7)
    c = vitslim.plan(tiny_sam, 0.5, part="both", importance="random", seed=8)
    assert all(torch.equal(a.keep[k], b.keep[k]) for k in a.keep)
    assert any(not torch.equal(a.keep[k], c.keep[k]) for k in a.keep)


def test_disturbed_taylor_matches_its_definition(tiny_timm, photos):
    """Scores equal sum |w * dL/dw| with L = MSE(out, out.detach() + sigma * noise), noise seeded."""
    x = resize_batch(photos, 64)
    sigma = 0.05
    crit = DisturbedTaylorImportance(sigma=sigma, seed=11)
    p = vitslim.plan(tiny_timm, 0.5, part="bottleneck", importance=crit, data=x, ranking="uniform")
    assert crit.images_seen == 4
    # reference by hand, one image per batch as prune() splits a tensor
    gen = torch.Generator().manual_seed(11)
    fc1 = tiny_timm.blocks[1].mlp.fc1
    fc2 = tiny_timm.blocks[1].mlp.fc2
    acc = torch.zeros(fc1.out_features, dtype=torch.float64)
    for img in x.split(1):
        tiny_timm.zero_grad()
        out = tiny_timm(img)
        noise = torch.randn(out.shape, generator=gen)
        torch.nn.functional.mse_loss(out, out.detach() + sigma * noise).backward()
        acc += (fc1.weight * fc1.weight.grad).abs().sum(1).double()
        acc += (fc1.bias * fc1.bias.grad).abs().double()
        acc += (fc2.weight * fc2.weight.grad).abs().sum(0).double()
    got = next(p.scores[g.name] for g in p.groups if g.kind == "mlp" and g.block == 1)
    torch.testing.assert_close(got, acc, rtol=1e-4, atol=1e-12)
    # sigma matters: gradients scale with the noise
    crit2 = DisturbedTaylorImportance(sigma=2 * sigma, seed=11)
    p2 = vitslim.plan(tiny_timm, 0.5, part="bottleneck", importance=crit2, data=x, ranking="uniform")
    got2 = next(p2.scores[g.name] for g in p2.groups if g.kind == "mlp" and g.block == 1)
    torch.testing.assert_close(got2, 2 * got, rtol=1e-3, atol=1e-12)


def test_taylor_signed_accumulation_differs_from_per_batch(tiny_timm, photos):
    x = resize_batch(photos, 64)
    loss = lambda out, inputs: out.pow(2).mean()  # noqa: E731
    a = vitslim.plan(tiny_timm, 0.5, part="bottleneck", importance=TaylorImportance(loss, accumulate="batch"), data=x)
    b = vitslim.plan(tiny_timm, 0.5, part="bottleneck", importance=TaylorImportance(loss, accumulate="signed"), data=x)
    name = a.groups[1].name
    assert (b.scores[name] <= a.scores[name] + 1e-9).all()  # |sum g| <= sum |g|
    assert not torch.allclose(a.scores[name], b.scores[name])


def test_disturbed_taylor_any_batch_size(tiny_sam, photos):
    x = resize_batch(photos, 128)
    p = vitslim.plan(tiny_sam, 0.3, part="both", data=[x[:3], x[3:]], batches=2)
    assert p.criterion.images_seen == 4 and all(s.abs().sum() > 0 for s in p.scores.values())


class KeepFirst(Criterion):
    """Example custom criterion: prefers low channel indices."""

    name = "keep_first"

    def score(self, group, ctx):
        return torch.arange(group.size, 0, -1, dtype=torch.float64)


def test_custom_criterion_instance_callable_and_plugin(tiny_sam):
    p = vitslim.plan(tiny_sam, 0.5, part="bottleneck", importance=KeepFirst(), ranking="uniform")
    assert torch.equal(_mlp_kept(p), torch.arange(128))
    p = vitslim.plan(tiny_sam, 0.5, part="bottleneck", ranking="uniform",
                     importance=lambda g, ctx: torch.arange(g.size, dtype=torch.float64))
    assert torch.equal(_mlp_kept(p), torch.arange(128, 256))

    class Plugin:
        @vitslim.hookimpl
        def vitslim_importances(self):
            return {"keep_first": KeepFirst, "keep_last": lambda g, ctx: torch.arange(g.size, dtype=torch.float64)}

    plugin = Plugin()
    plugin_manager().register(plugin, name="test-plugin")
    try:
        p = vitslim.plan(tiny_sam, 0.5, part="bottleneck", importance="keep_first", ranking="uniform")
        assert torch.equal(_mlp_kept(p), torch.arange(128))
        p = vitslim.plan(tiny_sam, 0.5, part="bottleneck", importance="keep_last", ranking="uniform")
        assert torch.equal(_mlp_kept(p), torch.arange(128, 256))
    finally:
        plugin_manager().unregister(plugin)


def test_taylor_reports_progress(tiny_timm, photos):
    x = resize_batch(photos, 64)
    seen = []
    vitslim.plan(tiny_timm, 0.5, part="bottleneck", data=x, batches=3, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_disturbed_taylor_follows_the_familys_loss_scale():
    """With a family that distils by the teacher's scale (SAM 2), the disturbed-Taylor loss is relative
    on every output tensor: noise of std sigma x the tensor's RMS, the MSE over its mean square, so the
    gradient a tensor sends back shrinks with its scale, as the family's distillation loss does; with
    ``raw`` the noise is absolute (SlimSAM's) and every tensor sends back the same size of gradient."""
    from types import SimpleNamespace

    from vitslim.criteria.taylor import DisturbedTaylorImportance

    g = torch.Generator().manual_seed(0)
    small, large = torch.randn(2, 4, 8, 8, generator=g), 1000 * torch.randn(2, 4, 8, 8, generator=g)

    def gradients(scale: str, own: str | None = None) -> tuple[float, float, float]:
        crit = DisturbedTaylorImportance(sigma=0.01, loss_scale=own)
        crit._gen = torch.Generator().manual_seed(1)
        family = SimpleNamespace(loss_scale=scale, output_features=lambda out: out)
        outs = [small.clone().requires_grad_(), large.clone().requires_grad_()]
        value = crit.loss(outs, None, SimpleNamespace(family=family))
        value.backward()
        return float(value), float(outs[0].grad.norm()), float(outs[1].grad.norm())

    value, g_small, g_large = gradients("raw")
    assert value == pytest.approx(1e-4, rel=0.2) and g_large == pytest.approx(g_small, rel=0.1)
    value, g_small, g_large = gradients("teacher")
    assert value == pytest.approx(1e-4, rel=0.2)  # sigma^2 of each tensor's mean square
    assert g_large == pytest.approx(g_small / 1000, rel=0.1)
    # the criterion's own scale (what compress passes: the scale it distils with) wins over the family's
    assert gradients("teacher", own="raw") == gradients("raw")
    assert gradients("raw", own="teacher") == gradients("teacher")
    with pytest.raises(ValueError, match="loss_scale"):
        DisturbedTaylorImportance(loss_scale="relative")


def test_compress_scores_importance_with_the_scale_it_distils_with(monkeypatch, tiny_timm, tmp_path):
    """``compress(loss_scale=...)`` reaches the disturbed-Taylor criterion of every stage (resolved:
    auto gives the family's), so importance and distillation weigh the outputs alike."""
    import vitslim
    from vitslim.criteria.taylor import DisturbedTaylorImportance
    from vitslim.registry import family_of

    seen = []
    original = DisturbedTaylorImportance.prepare

    def spy(self, ctx):
        seen.append(self.loss_scale)
        return original(self, ctx)

    monkeypatch.setattr(DisturbedTaylorImportance, "prepare", spy)
    data = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for option, expected in (("teacher", "teacher"), ("auto", family_of(tiny_timm).loss_scale)):
        seen.clear()
        vitslim.compress(tiny_timm, 0.25, data=data, epochs=1, batch_size=2, importance_batches=1, progress=False,
                         loss_scale=option, workdir=tmp_path / option)
        assert seen == [expected, expected]  # both stages
