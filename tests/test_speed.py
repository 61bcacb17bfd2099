"""Speed as the target: the measured latency model, ``target_speedup`` in prune and compress, and its
refusals. Timing numbers are never asserted here (benchmarks measure them); what is asserted is what
the model and the planner must do with whatever was measured."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import vitslim
from vitslim.info import get_info

from .conftest import resize_batch
from .test_cli import one_error_line, run


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def latency(tiny_timm, cache, monkeypatch):
    from vitslim.latency import latency_model

    monkeypatch.setenv("VITSLIM_CACHE", str(cache))
    return latency_model(tiny_timm, device="cpu", seconds=0.01)  # measured once for the module, then cached


@pytest.fixture
def linear(tiny_timm):
    """A latency model whose times are proportional to the channels (what a big model on a big device
    looks like), so that the planner's behaviour does not hang on this machine's noise."""
    from vitslim.latency import FRACTIONS, KindTable, LatencyModel, dim_grid, head_grid, hidden_grid, model_key

    heads, dims, hidden = head_grid(3), dim_grid(16), hidden_grid(192)
    fracs = sorted(FRACTIONS)
    table = KindTable(heads, dims, hidden, 1, [[0.01 * h * d for d in dims] for h in heads],
                      [0.004 * m for m in hidden], [0.48 * f for f in fracs], [0.768 * f for f in fracs],
                      [0.05 * f for f in fracs])
    blocks = len(tiny_timm.blocks)
    return LatencyModel(key=model_key(tiny_timm, "cpu", "fp32", 1), fractions=fracs, streams=[48],
                        kinds={"k": table}, block_kind=["k"] * blocks,
                        encoder=[(0.1 + blocks * 1.298) * f for f in fracs])


def test_the_latency_model_never_predicts_more_channels_faster(latency, tiny_timm):
    dense = vitslim.describe(tiny_timm).widths()
    table = next(iter(latency.kinds.values()))
    assert table.heads == [1, 2, 3] and table.dims[-1] == 16 and table.hidden[-1] == 192

    def with_block(**w):
        widths = copy.deepcopy(dense)
        for b in widths["blocks"]:
            b.update(w)
        return latency.predict(widths)

    for key, values in (("num_heads", [1, 2, 3]), ("head_dim", [2, 5, 8, 11, 16]), ("mlp_hidden", [12, 50, 100, 192])):
        times = [with_block(**{key: v}) for v in values]
        assert times == sorted(times), (key, times)
    fracs = [latency.predict({**dense, "embed_dim": e}) for e in (6, 12, 24, 36, 48)]
    assert fracs == sorted(fracs)
    assert latency.predict(dense) == pytest.approx(max(latency.encoder))  # the measured encoder at full width


def test_the_latency_model_is_cached_per_device(latency, tiny_timm, cache, monkeypatch):
    import vitslim.latency as lat

    monkeypatch.setenv("VITSLIM_CACHE", str(cache))
    monkeypatch.setattr(lat, "measure", lambda *a, **k: pytest.fail("measured again"))
    again = lat.latency_model(tiny_timm, device="cpu")
    assert again.to_json() == latency.to_json()
    assert again.key["device_type"] == "cpu" and again.key["threads"] == torch.get_num_threads()


@pytest.mark.parametrize("part", ["both", "bottleneck"])
def test_prune_for_a_speedup_meets_its_predicted_budget(part, linear, tiny_timm, photos):
    data = resize_batch(photos, 64)
    slim = vitslim.prune(tiny_timm, target_speedup=2.0, part=part, data=data, latency=linear, verify=False)
    step = get_info(slim)["history"][-1]
    dense_ms = linear.predict(vitslim.describe(tiny_timm).widths())
    predicted = linear.predict(vitslim.describe(slim).widths())
    assert step["target_speedup"] == 2.0 and step["predicted_ms"] == pytest.approx(predicted, rel=1e-3)
    assert predicted <= dense_ms / 2.0 + 1e-9
    widths = vitslim.describe(slim).widths()
    if part == "bottleneck":
        assert widths["embed_dim"] == 48
    x = data[:2]
    assert torch.isfinite(slim(x)).all()  # a working model


def test_bottleneck_speedup_pruning_equals_zeroing(linear, tiny_timm, photos):
    """Whole heads and head dims removed together (two surgeries) compute what the original computes with
    those channels zeroed, as ratio pruning does."""
    from vitslim.pruning import _top, score_groups

    data = resize_batch(photos, 64)
    slim = vitslim.prune(tiny_timm, target_speedup=1.6, part="bottleneck", data=data, latency=linear, verify=False)
    widths = vitslim.describe(slim).widths()
    _, groups, scores, _, _ = score_groups(tiny_timm, "bottleneck", ("heads", "head_dim"), data=data)
    zeroed = copy.deepcopy(tiny_timm)
    with torch.no_grad():
        for i, (blk, w) in enumerate(zip(zeroed.blocks, widths["blocks"])):
            heads = _top(scores[f"blocks.{i}.attn.heads"], w["num_heads"])
            dims = _top(scores[f"blocks.{i}.attn.head_dim"], w["head_dim"])
            keep = torch.zeros(3, 16, dtype=torch.bool)
            keep[heads[:, None], dims[None, :]] = True
            rows = keep.flatten().repeat(3)
            blk.attn.qkv.weight[~rows] = 0
            blk.attn.qkv.bias[~rows] = 0
            hidden = _top(scores[f"blocks.{i}.mlp"], w["mlp_hidden"])
            drop = torch.ones(192, dtype=torch.bool)
            drop[hidden] = False
            blk.mlp.fc1.weight[drop] = 0
            blk.mlp.fc1.bias[drop] = 0
    assert any(w["num_heads"] < 3 for w in widths["blocks"]) and any(w["head_dim"] < 16 for w in widths["blocks"])
    x = data[:2]
    with torch.no_grad():
        assert (slim(x) - zeroed(x)).abs().max() < 1e-5


def test_a_speedup_file_records_its_target_and_loads_back_identically(linear, tiny_timm, photos, tmp_path, capsys):
    slim = vitslim.prune(tiny_timm, target_speedup=2.0, data=resize_batch(photos, 64), latency=linear, verify=False)
    path = vitslim.save(slim, tmp_path / "fast.pt")
    back = vitslim.load(path)
    for (k, a), (_, b) in zip(slim.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    step = get_info(back)["history"][-1]
    assert step["target_speedup"] == 2.0 and step["predicted_speedup"] >= 2.0
    assert step["latency_model"]["device_type"] == "cpu"
    from vitslim.cli import main

    main(["inspect", str(path)])
    text = capsys.readouterr().out
    assert "history: prune both for a 2x speed-up" in text and "predicted on" in text


@pytest.mark.parametrize("value,needle", [("1", "must be a number > 1"), ("0.5", "must be a number > 1"),
                                          ("nan", "must be a number > 1"), ("inf", "must be a number > 1")])
def test_bad_targets_are_refused_before_any_work(value, needle, tmp_path, capsys, monkeypatch, tiny_timm):
    monkeypatch.chdir(tmp_path)
    model = str(vitslim.save(tiny_timm, tmp_path / "t.pt"))
    before = set(tmp_path.iterdir())
    for command in (["prune", model, "--out", "x.pt"], ["compress", model]):
        code, _, err = run([*command, "--target-speedup", value], capsys)
        assert code == 2 and needle in one_error_line(err)
    assert set(tmp_path.iterdir()) == before


def test_ratio_and_target_are_one_or_the_other(tmp_path, capsys, tiny_timm):
    model = str(vitslim.save(tiny_timm, tmp_path / "t.pt"))
    for extra in ([], ["--ratio", "0.5", "--target-speedup", "2"]):
        code, _, err = run(["compress", model, *extra], capsys)
        assert code == 2 and "--ratio R or --target-speedup S" in one_error_line(err)
    code, _, err = run(["compress", model, "--target-speedup", "2", "--schedule", "iterative:2"], capsys)
    assert code == 2 and "alternate and one-shot" in one_error_line(err)


def test_an_unreachable_target_is_one_line(latency, tiny_timm, cache, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("VITSLIM_CACHE", str(cache))
    model = str(vitslim.save(tiny_timm, tmp_path / "t.pt"))
    code, _, err = run(["prune", model, "--target-speedup", "1000", "--criterion", "magnitude", "--out",
                        tmp_path / "x.pt", "--device", "cpu"], capsys)
    assert code == 2 and "1000x speed-up is out of reach" in one_error_line(err)
    assert not (tmp_path / "x.pt").exists()


def test_compress_for_a_speedup_records_target_prediction_and_measurement(linear, tiny_timm, photos, tmp_path,
                                                                         monkeypatch):
    import vitslim.latency

    monkeypatch.setattr(vitslim.latency, "latency_model", lambda *a, **k: linear)
    data = resize_batch(photos, 64).repeat(2, 1, 1, 1)
    result = vitslim.compress_run(tiny_timm, data=data, target_speedup=2.0, epochs=1, batch_size=2,
                                  importance_batches=2, progress=False, workdir=tmp_path / "w", out=tmp_path / "f.pt")
    speed = result.summary()["speed"]
    assert speed["target_speedup"] == 2.0 and speed["predicted_speedup"] > 1 and speed["measured_speedup"] > 0
    steps = [s for s in get_info(vitslim.load(tmp_path / "f.pt"))["history"] if s["step"] == "prune"]
    assert [s["part"] for s in steps] == ["embedding", "bottleneck"] and all(s["target_speedup"] == 2 for s in steps)
    assert json.dumps(speed)  # plain data, for --json


def test_a_plan_that_misses_when_timed_is_corrected(linear, tiny_timm, photos, monkeypatch):
    """The plan is timed; a measured miss tightens the budget and plans again (here the 'device' is a
    stand-in whose time is the latency model's prediction x 1.5 for every pruned model: the first plan
    lands at 2/1.5 = 1.33x, the corrected one at the target)."""
    import vitslim.latency as lat

    dense = linear.predict(vitslim.describe(tiny_timm).widths())

    def timed(model, *a, **k):
        widths = vitslim.describe(model).widths()
        return dense if widths == linear.key["widths"] else 1.5 * linear.predict(widths)

    monkeypatch.setattr(lat, "measured_ms", timed)
    slim = vitslim.prune(tiny_timm, target_speedup=2.0, data=resize_batch(photos, 64), latency=linear)
    step = get_info(slim)["history"][-1]
    assert step["attempts"] >= 2
    assert 0.97 * 2.0 <= step["measured_speedup"] <= 1.1 * 2.0
    assert step["predicted_speedup"] > 2.5  # the plan asked the model for more, to get 2x measured
