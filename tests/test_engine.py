"""The slimming engine: losses fall, widths at stage boundaries, the right pairs compared, resume."""

import copy

import pytest
import torch

import vitslim
from vitslim.engine.losses import OUTPUT
from vitslim.engine.schedules import build_schedule
from vitslim.engine.taps import BLOCK_OUTPUTS, BOTTLENECKS, tap_points, tapped
from vitslim.engine.trainer import StageLoss
from vitslim.errors import UsageError
from vitslim.info import get_info
from vitslim.registry import family_of

from .conftest import resize_batch


@pytest.fixture(scope="module")
def sam_images(photos):
    return resize_batch(photos, 128)


def _train_losses(model, key="output"):
    log = get_info(model)["history"][-1]["log"]
    stages = {}
    for r in log:
        stages.setdefault(r["stage"], []).append(r["train"][key])
    return stages


@pytest.mark.parametrize("which,size", [("tiny_sam", 128), ("tiny_timm", 64)])
def test_alternate_losses_fall_and_widths(which, size, request, photos, tmp_path):
    model = request.getfixturevalue(which)
    x = resize_batch(photos, size).repeat(2, 1, 1, 1)  # 8 images
    w0 = vitslim.describe(model).widths()
    out = vitslim.compress(model, 0.5, data=x, epochs=4, batch_size=2, lr=1e-3, workdir=tmp_path,
                           importance_batches=2, progress=False, out=tmp_path / "final.pt")
    for stage, losses in _train_losses(out).items():
        assert losses[-1] < losses[0], (stage, losses)
    assert all(p.requires_grad for p in model.parameters())  # the teacher is handed back unfrozen
    w = vitslim.describe(out).widths()
    assert w["embed_dim"] == w0["embed_dim"] // 2
    assert sum(b["mlp_hidden"] for b in w["blocks"]) < 0.6 * sum(b["mlp_hidden"] for b in w0["blocks"])
    # stage 1's result (kept in the last checkpoint as "previous") has the pruned embedding, full bottlenecks
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["previous"]["widths"]["embed_dim"] == w["embed_dim"]
    assert [b["mlp_hidden"] for b in ckpt["previous"]["widths"]["blocks"]] == [b["mlp_hidden"] for b in w0["blocks"]]
    loaded = vitslim.load(tmp_path / "final.pt")
    assert vitslim.describe(loaded).widths() == w


def _manual_mse(a_model, b_model, family, points, x):
    """Mean over tap points of MSE between two models' features, computed independently of StageLoss."""
    feats = []
    for m in (a_model, b_model):
        with tapped(family.encoder(m), points) as f, torch.no_grad():
            out = family.encoder(m)(x)
        feats.append({**f, OUTPUT: out})
    keys = [k for k, _ in points] or [OUTPUT]
    return torch.stack([torch.nn.functional.mse_loss(feats[0][k], feats[1][k]) for k in keys]).mean()


def test_terms_compare_the_right_pairs(tiny_sam, sam_images):
    family = family_of(tiny_sam)
    original = tiny_sam
    stage1 = vitslim.prune(original, 0.5, part="embedding", importance="magnitude")
    with torch.no_grad():  # make stage 1's model differ from a plain pruned copy, as distillation would
        for p in stage1.parameters():
            p.add_(0.01 * torch.randn_like(p))
    stage2 = vitslim.prune(stage1, 0.5, part="bottleneck", importance="magnitude")
    s1, s2 = build_schedule("alternate", 0.5, 4)
    x = sam_images[:2]

    # stage 1: bottleneck features of the embedding-pruned student vs the ORIGINAL model
    loss1 = StageLoss(family, family.describe(stage1), s1.terms, {"original": original, "previous": original})
    _, parts = loss1(stage1, x, epoch=0)
    pts = tap_points(family.describe(stage1), BOTTLENECKS)
    expected = _manual_mse(stage1, original, family, pts, x)
    assert parts["bottlenecks"] == pytest.approx(float(expected), rel=1e-5)
    assert parts["bottlenecks"] > 1e-6  # not the student against itself
    assert parts["output"] == pytest.approx(float(_manual_mse(stage1, original, family, [], x)), rel=1e-5)

    # stage 2: block outputs vs the STAGE-1 model; output vs both the original and the stage-1 model
    loss2 = StageLoss(family, family.describe(stage2), s2.terms, {"original": original, "previous": stage1})
    _, parts = loss2(stage2, x, epoch=0)
    pts = tap_points(family.describe(stage2), BLOCK_OUTPUTS)
    assert parts["blocks"] == pytest.approx(float(_manual_mse(stage2, stage1, family, pts, x)), rel=1e-5)
    assert parts["output_previous"] == pytest.approx(float(_manual_mse(stage2, stage1, family, [], x)), rel=1e-5)
    assert parts["output"] == pytest.approx(float(_manual_mse(stage2, original, family, [], x)), rel=1e-5)
    assert parts["output"] != pytest.approx(parts["output_previous"], rel=1e-3)
    # block outputs cannot be compared with the original (other width): the engine says so
    bad = StageLoss(family, family.describe(stage2), s2.terms, {"original": original, "previous": original})
    with pytest.raises(RuntimeError, match="shape"):
        bad(stage2, x, epoch=0)


def test_dynamic_weights():
    s1, s2 = build_schedule("alternate", 0.5, 6, alpha=0.5)
    w = {t.name: [t.weight(n) for n in range(6)] for t in s1.terms}
    assert w["bottlenecks"] == [0.5, 0.5, 0.5, 0, 0, 0] and w["output"] == [1.0] * 6
    w = {t.name: [t.weight(n) for n in range(6)] for t in s2.terms}
    assert w["blocks"] == pytest.approx([2 / 3, 1 / 3, 0, 0, 0, 0])
    assert w["output"] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])
    assert [s.epochs for s in build_schedule("iterative:3", 0.5, 3)] == [2, 2, 2]
    assert sum(s.epochs for s in build_schedule("one-shot", 0.5, 3)) == 6
    for bad in ("iterative:0", "iterative:x", "alternate:0", "alternate:", "sometimes"):
        with pytest.raises(UsageError):
            build_schedule(bad, 0.5, 2)


def _stop_after(stage_name: str, epoch: int):
    """An ``on_epoch`` callback that presses Ctrl-C after the given epoch (its checkpoint written)."""
    def hook(record):
        if (record["stage"], record["epoch"]) == (stage_name, epoch):
            raise KeyboardInterrupt
    return hook


def test_resume_equals_uninterrupted(tiny_timm, photos, tmp_path, monkeypatch):
    import vitslim.engine.stage as stage_module
    from vitslim.compression import Interrupted

    x = resize_batch(photos, 64).repeat(2, 1, 1, 1)
    kw = dict(ratio=0.5, data=x, epochs=2, batch_size=2, lr=1e-3, importance_batches=2, progress=False,
              checkpoint_every=0)
    full = vitslim.compress(copy.deepcopy(tiny_timm), workdir=tmp_path / "a", **kw)
    epochs_run = []
    real_train_epoch = stage_module.train_epoch

    def counting(*args, **kwargs):
        epochs_run.append(args[4])
        return real_train_epoch(*args, **kwargs)

    for stop, left in [(("embedding", 0), 3), (("embedding", 1), 2), (("bottleneck", 0), 1)]:
        wd = tmp_path / f"b{stop}"
        with pytest.raises(Interrupted, match=f"stage {1 if stop[0] == 'embedding' else 2} epoch {stop[1] + 1} is kept"):
            vitslim.compress(copy.deepcopy(tiny_timm), workdir=wd, on_epoch=_stop_after(*stop), **kw)
        monkeypatch.setattr(stage_module, "train_epoch", counting)
        epochs_run.clear()
        resumed = vitslim.compress(copy.deepcopy(tiny_timm), workdir=wd, resume=True, **kw)
        monkeypatch.setattr(stage_module, "train_epoch", real_train_epoch)
        assert len(epochs_run) == left  # only the epochs after the checkpoint were trained again
        for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
            assert torch.equal(a, b), (stop, k)
        assert len(get_info(resumed)["history"][-1]["log"]) == 4


def test_resume_without_checkpoint(tiny_timm, tmp_path):
    with pytest.raises(UsageError, match="nothing to resume"):
        vitslim.compress(tiny_timm, 0.5, data=torch.zeros(4, 3, 64, 64), workdir=tmp_path, resume=True)


class _GradientRecorder(torch.optim.Optimizer):
    """An optimizer that keeps each step's gradients and leaves the weights alone."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.0})
        self.steps: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.steps.append([p.grad.clone() for g in self.param_groups for p in g["params"] if p.grad is not None])


def _step_gradients(model, x, **options) -> list[list[torch.Tensor]]:
    """The gradients of every optimizer step of one epoch of stage 2 (the bottleneck stage: block-output,
    output terms), as the engine's loop computes them, before any optimizer touches the weights."""
    from torch.utils.data import TensorDataset

    from vitslim.engine.options import TrainOptions
    from vitslim.engine.trainer import train_epoch

    class Images(TensorDataset):
        def __getitem__(self, i):
            return self.tensors[0][i]

    family = family_of(model)
    teacher = model.eval()
    student = vitslim.prune(model, 0.5, part="bottleneck", importance="magnitude")
    stage = build_schedule("alternate", 0.5, 2)[1]
    loss = StageLoss(family, vitslim.describe(student), stage.terms, {"original": teacher, "previous": teacher})
    opts = TrainOptions(augment="none", **options).validate()
    opts = opts.resolved(48, "cpu", 1)
    recorder = _GradientRecorder(family.encoder(student).parameters())
    train_epoch(student, family.encoder(student), loss, Images(x), 0, recorder, opts)
    return recorder.steps


def _close(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> None:
    assert len(a) == len(b) and a
    for step_a, step_b in zip(a, b):
        for ga, gb in zip(step_a, step_b):
            assert (ga - gb).abs().max() <= 1e-5 * gb.abs().max() + 1e-9  # rounding only (fp32 sums in other orders)


def test_micro_batches_give_the_whole_batch_gradient(tiny_timm, photos):
    x = resize_batch(photos, 64).repeat(2, 1, 1, 1)
    whole = _step_gradients(tiny_timm, x, batch_size=4, micro_batch=4)
    _close(_step_gradients(tiny_timm, x, batch_size=4, micro_batch=1), whole)
    # and the comparison is sharp: another batch composition gives other gradients
    other = _step_gradients(tiny_timm, x.flip(0)[:6].repeat(2, 1, 1, 1)[:8], batch_size=4, micro_batch=4)
    assert max((a - b).abs().max() for a, b in zip(other[0], whole[0])) > 1e-3 * max(g.abs().max() for g in whole[0])


def test_fused_attention_training_matches_plain(tiny_sam, sam_images, tmp_path):
    """compress trains with the fused attention by default; the plain path gives the same weights."""
    x = sam_images.repeat(2, 1, 1, 1)
    kw = dict(ratio=0.5, data=x, epochs=1, batch_size=2, lr=1e-3, importance_batches=2, progress=False)
    fast = vitslim.compress(copy.deepcopy(tiny_sam), workdir=tmp_path / "f", fast=True, **kw)
    plain = vitslim.compress(copy.deepcopy(tiny_sam), workdir=tmp_path / "p", fast=False, **kw)
    from vitslim_sam.fast import FusedAttention

    assert isinstance(fast.image_encoder.blocks[0].attn, FusedAttention)
    assert not isinstance(plain.image_encoder.blocks[0].attn, FusedAttention)
    assert vitslim.describe(fast).widths() == vitslim.describe(plain).widths()
    log_f = get_info(fast)["history"][-1]["log"]
    log_p = get_info(plain)["history"][-1]["log"]
    for rf, rp in zip(log_f, log_p):
        assert rf["train"]["loss"] == pytest.approx(rp["train"]["loss"], rel=1e-5)
    # Adam turns 1e-8 gradient differences into up to ~1e-4 weight differences after a few steps; a
    # wrong attention would move weights by up to lr x steps = 8e-3
    for (k, a), (_, b) in zip(fast.state_dict().items(), plain.state_dict().items()):
        assert (a - b).abs().max() <= 5e-4, k


def _short(**kw):
    return dict(epochs=1, batch_size=2, importance_batches=1, progress=False, checkpoint_every=0, **kw)


def test_accumulation_equals_the_larger_batch(tiny_timm, photos):
    x = resize_batch(photos, 64).repeat(2, 1, 1, 1)  # 8 training images: 2 whole batches of 4
    _close(_step_gradients(tiny_timm, x, batch_size=2, accum=2), _step_gradients(tiny_timm, x, batch_size=4))

def test_bf16_autocast_runs_on_the_cpu(tiny_timm, photos, tmp_path):
    x = resize_batch(photos, 64)
    out = vitslim.compress(copy.deepcopy(tiny_timm), 0.5, data=x, workdir=tmp_path, precision="bf16", **_short())
    log = get_info(out)["history"][-1]["log"]
    assert all(torch.isfinite(torch.tensor(r["train"]["loss"])) for r in log)
    assert all(p.dtype == torch.float32 for p in out.parameters())  # autocast, not a bf16 model


def test_iterative_schedule_through_compress(tiny_timm, photos, tmp_path):
    x = resize_batch(photos, 64)
    out = vitslim.compress(copy.deepcopy(tiny_timm), 0.5, data=x, workdir=tmp_path, schedule="iterative:2", **_short())
    log = get_info(out)["history"][-1]["log"]
    assert [r["stage"] for r in log] == ["round1", "round2"]  # each round 2 * 1 / 2 epochs
    w0, w = vitslim.describe(tiny_timm).widths(), vitslim.describe(out).widths()
    assert w["embed_dim"] == pytest.approx(w0["embed_dim"] * 0.5, abs=2)


def test_alternate_in_rounds_cuts_the_same_in_smaller_steps(tiny_timm, photos, tmp_path):
    """``alternate:K``: K pairs of SlimSAM's stages, each removing 1 - (1 - ratio)^(1/K) of the current
    widths, sharing each part's epochs; after round 1 the bottleneck alignment reads the last round's
    model (the teacher's bottlenecks are wider than the student's); ``alternate:1`` is ``alternate``."""
    stages = build_schedule("alternate:2", 0.75, 4)
    assert [(s.name, s.part, s.epochs) for s in stages] == [
        ("embedding1", "embedding", 2), ("bottleneck1", "bottleneck", 2),
        ("embedding2", "embedding", 2), ("bottleneck2", "bottleneck", 2)]
    assert all(s.ratio == pytest.approx(0.5) for s in stages)  # 0.5 of 0.5 is 0.75 removed
    align = [next(t.reference for t in s.terms if t.name == "bottlenecks") for s in stages[::2]]
    assert align == ["original", "previous"]
    plain = build_schedule("alternate", 0.77, 4)
    assert [(s.part, s.ratio, s.epochs) for s in build_schedule("alternate:1", 0.77, 4)] == [
        (s.part, s.ratio, s.epochs) for s in plain]
    x = resize_batch(photos, 64)
    out = vitslim.compress(copy.deepcopy(tiny_timm), 0.75, data=x, workdir=tmp_path, schedule="alternate:2",
                           **{**_short(), "epochs": 2})
    log = get_info(out)["history"][-1]["log"]
    assert [r["stage"] for r in log] == ["embedding1", "bottleneck1", "embedding2", "bottleneck2"]
    w0, w = vitslim.describe(tiny_timm).widths(), vitslim.describe(out).widths()
    assert w["embed_dim"] == pytest.approx(w0["embed_dim"] * 0.25, abs=2)
    hidden0 = sum(b["mlp_hidden"] for b in w0["blocks"])
    assert sum(b["mlp_hidden"] for b in w["blocks"]) == pytest.approx(hidden0 * 0.25, abs=2 * len(w["blocks"]))


def test_calibration_views_are_the_images_then_seeded_augmented_views():
    """``importance_views=K``: the criterion sees every calibration image as it is, then K - 1 passes of
    augmented views of them, the same views on every run with the same seed."""
    from vitslim.data import TensorDataset
    from vitslim.engine.augment import parse_augment
    from vitslim.engine.options import PruneOptions
    from vitslim.engine.stage import CalibrationViews

    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    views = CalibrationViews(TensorDataset(x), 3, parse_augment("default"), seed=2, chunk=2)
    seen = list(views)
    assert len(views) == len(seen) == 15 and all(v.shape == (1, 3, 16, 16) for v in seen)
    assert torch.equal(torch.cat(seen[:5]), x)  # the images themselves first
    assert not torch.allclose(torch.cat(seen[5:10]), x) and not torch.allclose(torch.cat(seen[5:10]), torch.cat(seen[10:]))
    assert all(torch.equal(a, b) for a, b in zip(seen, CalibrationViews(TensorDataset(x), 3, parse_augment("default"), 2, 2)))
    with pytest.raises(UsageError, match="importance views"):
        PruneOptions(importance_views=0).validate()


def test_importance_views_reach_the_criterion(tiny_timm, photos, tmp_path):
    x = resize_batch(photos, 64)
    out = vitslim.compress(copy.deepcopy(tiny_timm), 0.5, data=x, workdir=tmp_path, importance_views=3,
                           **{**_short(), "importance_batches": None})
    scored = [h["criterion"]["images"] for h in get_info(out)["history"] if h["step"] == "prune"]
    train = next(h for h in get_info(out)["history"] if h["step"] == "distill")["images"]["train"]
    assert scored == [3 * train, 3 * train]
    with pytest.raises(UsageError, match="need an augmentation"):
        vitslim.compress(copy.deepcopy(tiny_timm), 0.5, data=x, workdir=tmp_path / "none", importance_views=3,
                         augment="none", **_short())


def test_default_steps_follow_the_number_of_images():
    """2000 optimizer steps per stage from 100 images; 2000 x 100 / images below, at most 8000; an
    explicit ``min_steps`` wins; the resolved options carry the number (the run's identity and file)."""
    from vitslim.engine.options import TrainOptions, auto_min_steps

    assert [auto_min_steps(n) for n in (1, 12, 25, 40, 50, 100, 10_000)] == [8000, 8000, 8000, 5000, 4000, 2000, 2000]
    steps = [auto_min_steps(n) for n in range(1, 200)]
    assert steps == sorted(steps, reverse=True)  # fewer images, never fewer steps
    few = TrainOptions().validate().resolved(48, "cpu", steps_per_epoch=3, images=12)
    assert (few.min_steps, few.epochs) == (8000, 2667)
    many = TrainOptions().validate().resolved(48, "cpu", steps_per_epoch=25, images=100)
    assert (many.min_steps, many.epochs) == (2000, 80)
    assert TrainOptions(min_steps=500).validate().resolved(48, "cpu", 3, images=12).min_steps == 500


def test_no_validation_split_trains_on_every_image():
    """``val_fraction=0``: every image trains and validation measures the fit on them; any other
    fraction keeps at least one image out."""
    from vitslim.engine.options import TrainOptions
    from vitslim.engine.run import split

    assert split(12, 0, seed=3) == (list(range(12)), list(range(12)))
    train, val = split(12, 0.1, seed=3)
    assert len(val) == 1 and sorted(train + val) == list(range(12))
    TrainOptions(val_fraction=0).validate()
    for bad in (-0.1, 1.0):
        with pytest.raises(UsageError, match="validation fraction"):
            TrainOptions(val_fraction=bad).validate()


def test_plateau_schedule_halves_the_rate_without_validation_gain(tiny_timm, photos, tmp_path, monkeypatch):
    import vitslim.engine.stage as stage_module

    monkeypatch.setattr(stage_module, "validate", lambda *args, **kwargs: 1.0)  # never any gain
    x = resize_batch(photos, 64)
    out = vitslim.compress(copy.deepcopy(tiny_timm), 0.5, data=x, workdir=tmp_path, lr=1e-3, lr_schedule="plateau",
                           patience=0, **{**_short(), "epochs": 3})
    lrs = [r["lr"] for r in get_info(out)["history"][-1]["log"] if r["stage"] == "embedding"]
    assert lrs == pytest.approx([1e-3, 5e-4, 2.5e-4])
    monkeypatch.undo()
    cos = vitslim.compress(copy.deepcopy(tiny_timm), 0.5, data=x, workdir=tmp_path / "c", lr=1e-3, **{**_short(), "epochs": 3})
    lrs = [r["lr"] for r in get_info(cos)["history"][-1]["log"] if r["stage"] == "embedding"]
    assert lrs[0] < 1e-3 and lrs[-1] == pytest.approx(0.0, abs=1e-12)  # the cosine ends at 0


def test_compress_takes_a_dataset(tiny_timm, photos, tmp_path):
    class Views(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    x = resize_batch(photos, 64)
    out = vitslim.compress(copy.deepcopy(tiny_timm), 0.5, data=Views(x), workdir=tmp_path, **_short())
    assert get_info(out)["history"][-1]["images"] == {"train": 3, "val": 1}


def test_augmented_views_are_shared_by_teacher_and_student(tiny_timm, photos, tmp_path):
    """At ratio 0 the student is the teacher: if the two saw different views the loss would not be 0."""
    x = resize_batch(photos, 64).repeat(2, 1, 1, 1)
    out = vitslim.compress(copy.deepcopy(tiny_timm), 0.0, data=x, workdir=tmp_path, lr=1e-12, **_short())
    log = get_info(out)["history"][-1]["log"]
    assert all(r["train"]["loss"] < 1e-12 for r in log)
    none = vitslim.compress(copy.deepcopy(tiny_timm), 0.5, data=x, workdir=tmp_path / "n", augment="none", **_short())
    aug = vitslim.compress(copy.deepcopy(tiny_timm), 0.5, data=x, workdir=tmp_path / "a", **_short())
    assert not all(torch.equal(a, b) for a, b in zip(none.state_dict().values(), aug.state_dict().values()))


def test_augment_specs():
    from vitslim.engine.augment import DEFAULT, NONE, parse_augment

    assert parse_augment("default") == DEFAULT and parse_augment("none") == NONE and not NONE.active
    assert parse_augment("flip,crop=0.5").describe() == "flip,crop=0.5"
    assert parse_augment(DEFAULT.describe()) == DEFAULT
    for bad in ("sparkles", "crop=2", "crop=x", "mixup=-1"):
        with pytest.raises(UsageError):
            parse_augment(bad)
    x = torch.randn(4, 3, 16, 16)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(DEFAULT(x, g()), DEFAULT(x, g())) and DEFAULT(x, g()).shape == x.shape
    assert not torch.equal(DEFAULT(x, g()), x) and torch.equal(NONE(x, g()), x)


def test_auto_epochs_and_learning_rate(tiny_timm, photos, tmp_path):
    from vitslim.engine.options import auto_lr
    from vitslim.engine.schedules import auto_epochs

    assert auto_epochs("alternate", 3, 2000) == 667 and auto_epochs("alternate", 2500, 2000) == 1
    assert auto_epochs("iterative:4", 10, 100) == 20  # 4 rounds of 2 * 20 / 4 = 10 epochs = 100 steps
    assert auto_lr(768) == pytest.approx(1.3e-4, rel=0.01) and auto_lr(96) == pytest.approx(1.04e-3, rel=0.01)
    x = resize_batch(photos, 64)  # 3 training images, batch 2: 2 steps per epoch
    out = vitslim.compress(copy.deepcopy(tiny_timm), 0.5, data=x, workdir=tmp_path, min_steps=5, progress=False,
                           importance_batches=1, batch_size=2)
    step = get_info(out)["history"][-1]
    assert step["epochs"] == 3 and step["lr"] == pytest.approx(0.1 / vitslim.describe(tiny_timm).embed_dim)


def test_teacher_loss_scale_weighs_tensors_on_different_scales_alike():
    """``loss_scale="teacher"``: each MSE divided by the reference's mean square (SAM 2's FPN levels
    differ 25,000x in scale); ``raw`` is the plain MSE, and the default resolves to the family's."""
    from vitslim.engine.losses import Term, term_loss

    term = Term("out", OUTPUT, "original", lambda n: 1.0)
    g = torch.Generator().manual_seed(0)
    r = [torch.randn(2, 4, 8, 8, generator=g), 100 * torch.randn(2, 4, 4, 4, generator=g)]
    s = [t * 1.1 for t in r]  # a 10% error on each level
    raw = term_loss(term, {OUTPUT: s}, {OUTPUT: r}, [OUTPUT])
    expected = torch.stack([((a - b) ** 2).mean() for a, b in zip(s, r)]).mean()
    assert raw == pytest.approx(float(expected), rel=1e-6)
    scaled = term_loss(term, {OUTPUT: s}, {OUTPUT: r}, [OUTPUT], scale="teacher")
    assert scaled == pytest.approx(0.01, rel=1e-5)  # 10% error is 0.01 of the mean square on every level
    assert raw > 1000 * scaled  # raw: the coarse level's 100x scale dominates
    with pytest.raises(UsageError, match="unknown loss scale 'x'"):
        vitslim.compress(torch.nn.Linear(2, 2), 0.5, data=torch.zeros(1, 3, 8, 8), loss_scale="x")


def test_loss_scale_auto_is_the_familys(tiny_timm, photos, tmp_path):
    """``auto`` resolves to the family's ``loss_scale`` (timm: raw, so the same run as ``raw``);
    ``teacher`` trains on other loss values."""
    x = resize_batch(photos, 64)
    logs = {}
    for scale in ("auto", "raw", "teacher"):
        out = vitslim.compress(copy.deepcopy(tiny_timm), 0.5, data=x, workdir=tmp_path / scale, loss_scale=scale,
                               **_short())
        logs[scale] = [r["train"] for r in get_info(out)["history"][-1]["log"]]
    assert family_of(tiny_timm).loss_scale == "raw"
    assert logs["auto"] == logs["raw"]
    assert logs["teacher"] != logs["raw"]


def test_run_identity_records_the_scale_a_run_trains_with(tiny_timm):
    """A raw run's identity is what it was before ``loss_scale`` existed (old checkpoints resume); any
    other scale is recorded, so a checkpoint of a raw run is not resumed with another; a scale other
    than the family's is recorded for the importance too (it followed the family's before)."""
    from vitslim.engine.checkpoint import differences, run_identity
    from vitslim.engine.options import PruneOptions, TrainOptions

    x = torch.zeros(2, 3, 64, 64)
    ident = {s: run_identity(tiny_timm, x, 0.5, PruneOptions().describe(), TrainOptions(loss_scale=s).describe())
             for s in ("auto", "raw", "teacher")}
    assert "loss_scale" not in ident["auto"] and ident["auto"] == ident["raw"]
    assert differences(ident["raw"], ident["teacher"]) == ["loss_scale None != 'teacher'",
                                                           "importance_scale None != 'teacher'"]
