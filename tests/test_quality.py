"""Quality on trained teachers: what a broken engine or criterion would lose. The digits ViT is the
shipped teacher (the same weights on every machine, so the numbers below do not move with the CPU:
measured identical under ATEN_CPU_CAPABILITY=default, avx2 and avx512); each test prunes or compresses it."""

from __future__ import annotations

import json

import numpy as np
import pytest

import vitslim
from vitslim.cli import main
from vitslim.testbed import get_testbed, testbeds as installed_testbeds


@pytest.fixture(scope="module")
def digits():
    tb = get_testbed("digits-vit")
    teacher = tb.teacher()
    calib = list(tb.subset(64, seed=0).split(8))
    return tb, teacher, calib


def _accuracy(tb, model) -> float:
    return tb.score(model)["accuracy"]


def test_testbeds_come_from_the_family_plugins():
    assert {"digits-vit", "shapes-sam", "shapes-sam2"} <= set(installed_testbeds())


def test_the_shipped_teacher_is_the_one_its_manifest_describes(digits):
    tb, teacher, _ = digits
    entry = tb.shipped_entry()
    assert tb.shipped(0) is not None  # present, and its SHA-256 matches
    assert entry["command"] == "python benchmarks/teachers.py digits-vit" and entry["seed"] == 0
    assert _accuracy(tb, teacher) == pytest.approx(entry["metrics"]["accuracy"], abs=0.2)  # inference rounding only


def test_retraining_the_teacher_reproduces_it_within_the_spread_across_cpus():
    """The shipped teacher's recipe, trained again here: its accuracy lies within the spread measured
    when it was trained under each CPU capability (98.0 / 97.0 / 97.3 for avx512 / avx2 / default)."""
    tb = get_testbed("digits-vit")
    spread = [m["accuracy"] for m in tb.shipped_entry()["metrics_by_capability"].values()]
    assert len(spread) >= 3
    got = _accuracy(tb, tb.teacher(shipped=False, cache=False))
    assert min(spread) - 1.0 <= got <= max(spread) + 1.0


def test_bottleneck_pruning_disturbed_taylor_beats_random(digits):
    """Half the head dims and MLP channels, before any distillation: the informed criterion keeps
    clearly more (mean of 3 calibration subsets 88.6; random 75.7 over 5 seeds, magnitude 75.5)."""
    tb, teacher, _ = digits
    kw = dict(part="bottleneck", ranking="uniform")
    informed = [_accuracy(tb, vitslim.prune(teacher, 0.5, importance="disturbed_taylor",
                                            data=list(tb.subset(64, seed=s).split(8)), **kw)) for s in range(3)]
    rand = np.mean([_accuracy(tb, vitslim.prune(teacher, 0.5, importance="random", seed=s, **kw)) for s in range(5)])
    magnitude = _accuracy(tb, vitslim.prune(teacher, 0.5, importance="magnitude", **kw))
    assert np.mean(informed) > rand + 8
    assert min(informed) > magnitude + 8


def test_embedding_pruning_disturbed_taylor_beats_random_and_magnitude_on_average(digits):
    """Half the residual channels: averaged over 5 calibration subsets (and random seeds), disturbed
    Taylor keeps more than random and than weight magnitude (49.0 vs 43.4 and 40.5 measured). One subset
    alone can reverse the order: the spread is 38.7-56.4 for disturbed Taylor (README, Quality)."""
    tb, teacher, _ = digits

    def mean_accuracy(criterion):
        return np.mean([_accuracy(tb, vitslim.prune(teacher, 0.5, part="embedding", ranking="uniform", seed=s,
                                                    importance=criterion, data=list(tb.subset(64, seed=s).split(8))))
                        for s in range(5)])

    informed, rand, magnitude = mean_accuracy("disturbed_taylor"), mean_accuracy("random"), mean_accuracy("magnitude")
    assert informed > rand + 3
    assert informed > magnitude + 5


def test_compress_recovers_with_ten_percent_of_the_images(digits, tmp_path):
    """Ratio 0.5 from 120 images (10%): the distilled student is close to the teacher and far above
    the same pruning without distillation."""
    tb, teacher, calib = digits
    pruned_only = _accuracy(tb, vitslim.prune(teacher, 0.5, data=calib))
    student = vitslim.compress(teacher, 0.5, data=tb.subset(120, seed=0), min_steps=300, progress=False,
                               workdir=tmp_path)
    got = _accuracy(tb, student)
    assert got > _accuracy(tb, teacher) - 6
    assert got > pruned_only + 30


def test_shapes_folder_is_in_sa1b_layout(tmp_path):
    from vitslim_sam.rle import rle_to_mask
    from vitslim_sam.shapes import write_sa1b_folder

    folder = write_sa1b_folder(tmp_path / "sa", 3, seed=5, size=128)
    assert sorted(p.name for p in folder.iterdir()) == [f"sa_{i}.{e}" for i in range(3) for e in ("jpg", "json")]
    record = json.loads((folder / "sa_0.json").read_text())
    assert record["image"]["file_name"] == "sa_0.jpg"
    for ann in record["annotations"]:
        mask = rle_to_mask(ann["segmentation"])
        ys, xs = np.nonzero(mask)
        assert mask.shape == (128, 128) and ann["area"] == mask.sum()
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        x, y = ann["point_coords"][0]
        assert mask[int(y), int(x)]
    # the same seed writes the same scenes
    again = write_sa1b_folder(tmp_path / "again", 1, seed=5, size=128)
    assert (again / "sa_0.json").read_text() == (folder / "sa_0.json").read_text()


def test_rle_round_trip():
    from vitslim_sam.rle import mask_to_rle, rle_to_mask

    rng = np.random.default_rng(0)
    for trial in range(50):
        h, w = rng.integers(1, 40, 2)
        mask = rng.random((h, w)) < rng.random()
        if trial % 5 == 0:
            mask[:] = trial % 2 == 0  # all set, or empty
        assert np.array_equal(rle_to_mask(mask_to_rle(mask)), mask)


def test_eval_scores_the_trained_sam_above_an_untrained_one(tmp_path, capsys):
    """``vitslim eval`` on a generated SA-1B-layout folder: the shipped shapes-sam teacher segments the
    held-out shapes far better than the same SAM untrained. (A SAM trained inside the test for a few
    seconds moved with the CPU: under ATEN_CPU_CAPABILITY=default on an Intel AVX-512 machine it fell
    inside the margin; the shipped weights are the same everywhere.)"""
    from vitslim_sam.testbed import ShapesTestbed

    tb = ShapesTestbed(n_test=4, root=tmp_path / "shapes")
    trained = tb.teacher()
    assert tb.shipped() is not None  # the shipped file, not one trained here
    untrained = vitslim.create("sam-b", pretrained=False, seed=0, **tb.config)
    scores = {}
    for name, model in (("trained", trained), ("untrained", untrained)):
        path = vitslim.save(model, tmp_path / f"{name}.pt")
        main(["eval", str(path), "--teacher", str(path), "--data", str(tb.folder("test")), "--json"])
        scores[name] = json.loads(capsys.readouterr().out)
    assert scores["trained"]["miou_box_vs_gt"] > scores["untrained"]["miou_box_vs_gt"] + 0.3
