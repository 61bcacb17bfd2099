"""The CLI end to end on tiny models, and the bad-input battery: one line, exit code, no file."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vitslim
from vitslim.cli import main


def run(argv, capsys):
    """Run the CLI; return (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The single ``error:`` line (warnings may precede it); never a traceback."""
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def image_dir(tmp_path, photos):
    from PIL import Image

    d = tmp_path / "images" / "sub"
    d.mkdir(parents=True)
    for i, p in enumerate(photos):
        Image.fromarray((p.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(d / f"img{i}.jpg")
    (d / "notes.txt").write_text("not an image")
    return tmp_path / "images"


def test_compress_sam_end_to_end(sam_file, image_dir, tmp_path, capsys):
    out = tmp_path / "slim.pt"
    code, stdout, err = run(["compress", sam_file, "--ratio", "0.5", "--data", image_dir, "--out", out,
                             "--epochs", "1", "--batch-size", "2", "--importance-batches", "1",
                             "--workdir", tmp_path / "work", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["after"]["params"] < summary["before"]["params"]
    assert set(summary["stages"]) == {"embedding", "bottleneck"}
    # the summary's evaluation is vitslim.evaluate on the held-out split (seeded: 1 of the 4 images)
    from vitslim.data import find_images
    from vitslim.engine.run import split

    held_out = [find_images(image_dir)[i] for i in split(4, 0.1, 0)[1]]
    # (the summary evaluated the in-memory student, with its fused attention: a pixel may differ)
    assert summary["eval"] == pytest.approx(vitslim.evaluate(vitslim.load(out), vitslim.load(sam_file), images=held_out),
                                            abs=1e-3)
    assert summary["eval"]["prompts"] > 0
    from segment_anything import SamPredictor

    predictor = SamPredictor(vitslim.load(out))
    from skimage import data

    predictor.set_image(data.astronaut())
    masks, scores, _ = predictor.predict(point_coords=np.array([[250, 150]]), point_labels=np.array([1]),
                                         multimask_output=False)
    assert masks.shape == (1, 512, 512) and masks.dtype == bool
    fast = SamPredictor(vitslim.optimize(vitslim.load(out)))  # the fused attention behind SamPredictor
    fast.set_image(data.astronaut())
    assert (fast.features - predictor.features).abs().max().item() <= 1e-5


def test_eval_teacher_against_itself_is_perfect(sam_file, capsys):
    code, stdout, err = run(["eval", sam_file, "--teacher", sam_file, "--limit", "2", "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["miou_point_vs_teacher"] == 1.0 and result["miou_box_vs_teacher"] == 1.0
    assert result["prompts"] > 0


def test_eval_against_sa1b_ground_truth(tiny_sam, sam_file, tmp_path, capsys, photos):
    """SA-1B layout (jpg + json with RLE masks, bbox, point_coords): GT made from the teacher's own
    masks, so the teacher scores 1.0 against it."""
    from PIL import Image
    from segment_anything import SamPredictor

    from vitslim_sam.rle import mask_to_rle, rle_to_mask

    folder = tmp_path / "sa1b"
    folder.mkdir()
    img = (photos[0].permute(1, 2, 0).numpy() * 255).astype("uint8")
    Image.fromarray(img).save(folder / "sa_1.png")  # lossless, so the teacher sees the same pixels
    pred = SamPredictor(tiny_sam)
    pred.set_image(img)
    anns = []
    for x, y in [(200, 150), (300, 400)]:
        m, _, _ = pred.predict(point_coords=np.array([[x, y]]), point_labels=np.array([1]), multimask_output=False)
        # box prompt for the same annotation: that mask's box, from which the teacher predicts again
        ys, xs = np.nonzero(m[0])
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())]
        anns.append({"segmentation": mask_to_rle(m[0]), "bbox": bbox, "point_coords": [[x, y]]})
        assert np.array_equal(rle_to_mask(anns[-1]["segmentation"]), m[0])
    (folder / "sa_1.json").write_text(json.dumps({"annotations": anns}))
    code, stdout, err = run(["eval", sam_file, "--teacher", sam_file, "--data", folder, "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["miou_point_vs_gt"] == 1.0


def test_compress_timm_writes_loadable_file(tiny_timm, tmp_path, capsys):
    src = vitslim.save(tiny_timm, tmp_path / "t.pt")
    out = tmp_path / "t-slim.pt"
    code, _, err = run(["compress", src, "--ratio", "0.5", "--out", out, "--epochs", "1", "--batch-size", "2",
                        "--schedule", "one-shot", "--criterion", "magnitude", "--workdir", tmp_path / "w"], capsys)
    assert code == 0, err
    assert "real compression wants thousands of images" in err
    model = vitslim.load(out)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def test_compress_min_steps_sets_the_default_epochs(tiny_timm, tmp_path, capsys):
    """--min-steps: each stage of alternate runs the fewest epochs that reach that many optimizer steps."""
    import math

    src = vitslim.save(tiny_timm, tmp_path / "t.pt")
    for steps in (12, 24):
        code, stdout, err = run(["compress", src, "--ratio", "0.5", "--out", tmp_path / f"s{steps}.pt",
                                 "--min-steps", str(steps), "--batch-size", "2", "--criterion", "magnitude",
                                 "--workdir", tmp_path / f"w{steps}", "--no-eval", "--json"], capsys)
        assert code == 0, err
        summary = json.loads(stdout)
        per_epoch = math.ceil(summary["images"]["train"] / 2)
        assert {s["epochs"] for s in summary["stages"].values()} == {math.ceil(steps / per_epoch)}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """Every bad file and folder of the battery, made once: placeholder -> path."""
    import os

    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "empty").mkdir()
    (tmp / "bad").mkdir()
    (tmp / "bad" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp / "corrupt.pth").write_bytes(b"garbage" * 10)
    torch.save({"layer1.0.conv1.weight": torch.zeros(3, 3)}, tmp / "timm.pth")
    tiny = vitslim.create("sam-b", pretrained=False, embed_dim=64, depth=2, num_heads=2, global_attn_indexes=[1])
    torch.save(tiny.state_dict(), tmp / "tiny.pth")
    from .conftest import TINY_SAM

    sam = vitslim.save(vitslim.create("sam-b", pretrained=False, seed=0, **TINY_SAM), tmp / "tiny-sam.pt")
    data = sam.read_bytes()
    (tmp / "trunc.pt").write_bytes(data[: len(data) // 3])
    ro = tmp / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    return {"{sam}": str(sam), "{tmp}": str(tmp), "{empty}": str(tmp / "empty"), "{bad}": str(tmp / "bad"),
            "{corrupt}": str(tmp / "corrupt.pth"), "{timmckpt}": str(tmp / "timm.pth"),
            "{tinyckpt}": str(tmp / "tiny.pth"), "{truncated}": str(tmp / "trunc.pt"), "{ro}": str(ro)}


@pytest.mark.parametrize("argv,code,needle", [
    (["inspect", "not-a-model"], 2, "unknown model 'not-a-model'"),
    (["inspect", "timm:no_such_vit"], 2, "unknown timm model"),
    (["inspect", "timm:resnet18"], 2, "not a supported Vision Transformer"),
    (["compress", "{sam}", "--ratio", "1.0"], 2, "ratio must be"),
    (["compress", "{sam}", "--ratio", "-0.2"], 2, "ratio must be"),
    (["compress", "{sam}", "--ratio", "half"], 2, "--ratio"),
    (["compress", "{sam}", "--ratio", "0.5", "--data", "{tmp}/missing"], 2, "data folder not found"),
    (["compress", "{sam}", "--ratio", "0.5", "--data", "{empty}"], 2, "no jpg/png images"),
    (["compress", "{sam}", "--ratio", "0.5", "--data", "{bad}"], 2, "could be read"),
    (["compress", "sam-b", "--ratio", "0.5", "--checkpoint", "{tmp}/nope.pth"], 1, "checkpoint file not found"),
    (["compress", "sam-b", "--ratio", "0.5", "--checkpoint", "{corrupt}"], 1, "cannot read checkpoint"),
    (["compress", "sam-b", "--ratio", "0.5", "--checkpoint", "{timmckpt}"], 1, "not a checkpoint of this model"),
    (["compress", "sam-b", "--ratio", "0.5", "--checkpoint", "{tinyckpt}"], 1, "another model size"),
    (["compress", "{sam}", "--ratio", "0.5", "--out", "{tmp}/no/dir/x.pt"], 2, "does not exist"),
    (["compress", "{sam}", "--ratio", "0.5", "--out", "{ro}/x.pt"], 2, "not writable"),
    (["compress", "{sam}", "--ratio", "0.5", "--criterion", "psychic"], 2, "unknown criterion"),
    (["compress", "{sam}", "--ratio", "0.5", "--schedule", "sometimes"], 2, "unknown schedule"),
    (["compress", "{sam}", "--ratio", "0.5", "--resume", "--workdir", "{tmp}/w"], 2, "nothing to resume"),
    (["eval", "{tmp}/missing.pt"], 1, "model file not found"),
    (["eval", "{corrupt}"], 1, "not a vitslim model file"),
    (["inspect", "{tmp}/missing.pt"], 1, "model file not found"),
    (["inspect", "{truncated}"], 1, "truncated, corrupt"),
])
def test_bad_input_one_line(argv, code, needle, bad_inputs, capsys):
    import os

    subs = bad_inputs
    args = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        args.append(a)
    if os.geteuid() == 0 and "{ro}" in " ".join(argv):
        pytest.skip("root can write anywhere")
    before = set(Path.cwd().iterdir())
    got, _, err = run(args, capsys)
    assert got == code, err
    assert needle in one_error_line(err)
    assert set(Path.cwd().iterdir()) == before  # no partial output file


@pytest.mark.parametrize("exc,code,needle", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 1, "out of memory: try a smaller --batch-size"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: not enough memory"), 1, "out of memory"),
])
def test_interrupt_and_out_of_memory(exc, code, needle, sam_file, tmp_path, capsys, monkeypatch):
    import vitslim.compression

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(vitslim.compression, "compress_run", fail)
    out = tmp_path / "x.pt"
    got, _, err = run(["compress", sam_file, "--ratio", "0.5", "--out", out, "--workdir", tmp_path / "w"], capsys)
    assert got == code
    assert needle in one_error_line(err)
    assert not out.exists()


def test_prune_command(sam_file, image_dir, tmp_path, capsys):
    out = tmp_path / "pruned.pt"
    code, stdout, err = run(["prune", sam_file, "--ratio", "0.5", "--out", out, "--data", image_dir,
                             "--importance-batches", "2", "--attention", "heads"], capsys)
    assert code == 0, err
    assert "wrote" in stdout
    report = vitslim.inspect(out)
    step = report["history"][-1]
    assert step["criterion"]["name"] == "disturbed_taylor" and step["criterion"]["images"] == 2
    assert all(b["head_dim"] == 16 for b in report["widths"]["blocks"])  # whole heads removed
    assert sum(b["num_heads"] for b in report["widths"]["blocks"]) == 8


def test_prune_round_to_and_seeded_random_weights(tmp_path, capsys):
    outs = []
    for i in range(2):
        out = tmp_path / f"p{i}.pt"
        code, _, err = run(["prune", "timm:vit_tiny_patch16_224", "--random-weights", "--ratio", "0.6", "--round-to",
                            "16", "--criterion", "magnitude", "--out", out], capsys)
        assert code == 0, err
        outs.append(vitslim.load(out))
    w = vitslim.describe(outs[0]).widths()
    assert w["embed_dim"] % 16 == 0 and all(b["mlp_hidden"] % 16 == 0 and b["head_dim"] % 16 == 0 for b in w["blocks"])
    assert all(torch.equal(a, b) for a, b in zip(outs[0].state_dict().values(), outs[1].state_dict().values()))


def test_timm_eval_values(tiny_timm, photos):
    same = vitslim.evaluate(tiny_timm, tiny_timm)
    assert same["top1_agreement"] == 1.0 and same["output_cosine"] == pytest.approx(1.0) and same["images"] == 10
    pruned = vitslim.prune(tiny_timm, 0.5, importance="magnitude")
    other = vitslim.evaluate(pruned, tiny_timm, limit=4)
    assert other["images"] == 4 and other["output_cosine"] < 0.999


def test_short_timm_names_resolve_and_unknown_ones_suggest(capsys):
    code, out, err = run(["inspect", "timm:vit_base"], capsys)
    assert code == 0, err
    assert "timm:vit_base is timm:vit_base_patch16_224" in out and "86.57M" in out
    code, _, err = run(["inspect", "timm:vit_bse"], capsys)
    assert code == 2 and "closest are vit_base" in one_error_line(err)
    assert vitslim.info.get_info(vitslim.create("timm:dinov2_small", pretrained=False))["name"] == "timm:vit_small_patch14_dinov2"
    from vitslim_timm.names import resolve

    assert [resolve(n) for n in ("eva02_base", "dinov3_small", "pe_core_base", "siglip_base")] == [
        "eva02_base_patch14_224", "vit_small_patch16_dinov3", "vit_pe_core_base_patch16_224", "vit_base_patch16_siglip_224"]


def test_eval_saves_overlays_of_both_models_masks(tiny_sam, sam_file, tmp_path, capsys):
    from PIL import Image

    student = vitslim.save(vitslim.prune(tiny_sam, 0.5, importance="magnitude"), tmp_path / "student.pt")
    code, out, err = run(["eval", student, "--teacher", sam_file, "--limit", "2", "--save-overlays",
                          tmp_path / "overlays", "--json"], capsys)
    assert code == 0, err
    files = sorted((tmp_path / "overlays").glob("*.png"))
    assert [f.name for f in files] == ["0000.png", "0001.png"]
    sheet = np.asarray(Image.open(files[0]).convert("RGB")).astype(int)
    from vitslim.data import sample_images

    w = sample_images()[0].width
    assert sheet.shape[1] == 2 * w + 8  # teacher | student
    left, right = sheet[:, :w], sheet[:, w + 8:]
    assert (left != right).any()  # different masks (or captions) on the same photo
    assert json.loads(out)["prompts"] > 0


def test_the_cli_starts_without_torch():
    """``--version``, ``--help`` and ``plugins`` never import torch (it takes seconds): only commands
    that build or run a model do."""
    import subprocess
    import sys

    code = ("import sys; from vitslim.cli import main\n"
            "for argv in (['--version'], ['--help'], ['plugins'], ['inspect', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as exc:\n        assert not exc.code, exc.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "timm" in done.stdout and "sam2" in done.stdout  # plugins listed their families


@pytest.mark.parametrize("argv", [
    ["compress", "digits-vit", "--ratio", "0.5"],
    ["prune", "timm:vit_nonsense", "--ratio", "0.5"],
    ["compress", "sam-b", "--ratio", "0.5", "--checkpoint", "/no/such/file.pth"],
    ["eval", "/no/such/student.pt"],
])
def test_errors_about_the_command_line_come_before_any_warning(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code in (1, 2)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err  # no "no --data" warning first
    assert list(tmp_path.iterdir()) == []
