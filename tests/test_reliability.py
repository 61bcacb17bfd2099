"""Reliability: a resume that cannot continue the wrong run, honest Ctrl-C, images decoded right, no
silent overwrites, every option checked before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vitslim
from vitslim.compression import Interrupted
from vitslim.errors import UsageError

from .conftest import TINY_TIMM, resize_batch
from .test_cli import one_error_line, run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def timm_file(tiny_timm, tmp_path):
    return vitslim.save(tiny_timm, tmp_path / "tiny-timm.pt")


@pytest.fixture(scope="module")
def images(photos):
    return resize_batch(photos, 64).repeat(2, 1, 1, 1)


def _quick(**kw):
    return dict(epochs=1, batch_size=2, importance_batches=1, progress=False, checkpoint_every=0, **kw)


# -- checkpoints know their run ---------------------------------------------------------------------------
def test_resume_refuses_another_run_naming_the_difference(tiny_timm, images, tmp_path):
    vitslim.compress(tiny_timm, 0.5, data=images, workdir=tmp_path, **_quick())
    with pytest.raises(UsageError, match=r"belongs to another run \(ratio 0.5 != 0.4"):
        vitslim.compress(tiny_timm, 0.4, data=images, workdir=tmp_path, resume=True, **_quick())
    other = vitslim.create("timm:vit_tiny_patch16_224", pretrained=False, seed=1, **TINY_TIMM)
    with pytest.raises(UsageError, match="teacher_weights differ"):
        vitslim.compress(other, 0.5, data=images, workdir=tmp_path, resume=True, **_quick())
    with pytest.raises(UsageError, match="data differ"):
        vitslim.compress(tiny_timm, 0.5, data=images.flip(0), workdir=tmp_path, resume=True, **_quick())
    with pytest.raises(UsageError, match="lr_schedule 'cosine' != 'plateau'"):
        vitslim.compress(tiny_timm, 0.5, data=images, workdir=tmp_path, resume=True, lr_schedule="plateau", **_quick())


def test_damaged_checkpoint_is_one_line_and_writes_nothing(timm_file, images, tmp_path, capsys):
    work = tmp_path / "w"
    work.mkdir()
    (work / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    out = tmp_path / "out.pt"
    code, _, err = run(["compress", timm_file, "--ratio", "0.5", "--epochs", "1", "--workdir", work, "--resume",
                        "--out", out], capsys)
    assert code == 2
    assert "is damaged" in one_error_line(err) and "without --resume" in err
    assert not out.exists()


def test_two_runs_cannot_share_a_workdir(tiny_timm, images, tmp_path):
    from vitslim.engine.checkpoint import WorkdirLock

    with WorkdirLock(tmp_path):
        with pytest.raises(UsageError, match="in use by another vitslim run"):
            vitslim.compress(tiny_timm, 0.5, data=images, workdir=tmp_path, **_quick())
    vitslim.compress(tiny_timm, 0.5, data=images, workdir=tmp_path, **_quick())  # free again


def test_default_workdir_is_derived_from_the_output(tiny_timm, images, tmp_path):
    out = tmp_path / "slim.pt"
    vitslim.compress(tiny_timm, 0.5, data=images, out=out, **_quick())
    assert (tmp_path / "slim.pt.work" / "checkpoint.pt").is_file()


def test_interrupt_before_the_first_checkpoint_names_none(tiny_timm, images, tmp_path):
    def stop(record):
        raise KeyboardInterrupt

    kw = _quick()
    kw["checkpoint_every"] = 1e9  # the first epoch of a stage does not write one
    kw["epochs"] = 2
    with pytest.raises(Interrupted, match="before the first checkpoint") as info:
        vitslim.compress(tiny_timm, 0.5, data=images, workdir=tmp_path, on_epoch=stop, **kw)
    assert info.value.exit_code == 130 and info.value.checkpoint is None


# -- random weights are seeded -----------------------------------------------------------------------------
def test_random_weights_are_reproducible_and_eval_of_ratio_0_is_identical(capsys):
    a = vitslim.api.open_model("timm:vit_tiny_patch16_224", pretrained=False, seed=3)
    b = vitslim.api.open_model("timm:vit_tiny_patch16_224", pretrained=False, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    code, out, err = run(["eval", "timm:vit_tiny_patch16_224", "--random-weights", "--limit", "2", "--json"], capsys)
    assert code == 0, err
    import json

    result = json.loads(out)
    assert result["top1_agreement"] == 1.0 and result["output_cosine"] == pytest.approx(1.0)


# -- Ctrl-C: a real SIGINT to a real process --------------------------------------------------------------
def _interrupt(argv: list[str], after: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from vitslim.cli import main; main()", *argv], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.parametrize("command", ["bench", "compress"])
def test_ctrl_c_prints_one_line_and_exits_130(command, timm_file, tmp_path):
    argv = {"bench": ["bench", str(timm_file), "--runs", "1000000"],
            "compress": ["compress", str(timm_file), "--ratio", "0.5", "--epochs", "100000", "--batch-size", "2",
                         "--importance-batches", "1", "--out", str(tmp_path / "x.pt")]}[command]
    done = _interrupt(argv, after=8.0)
    assert done.returncode == 130, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], done.stderr  # one error, the last line
    assert lines[-1].startswith("error: interrupted") and "Traceback" not in done.stderr
    assert not any(line.endswith(("val ", "|")) for line in lines), done.stderr  # epoch lines are not cut
    assert not (tmp_path / "x.pt").exists()


# -- images decoded right --------------------------------------------------------------------------------------
def test_images_are_decoded_upright_and_in_8_bits(tmp_path):
    from PIL import Image

    from vitslim.data import load_image

    grey16 = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "deep.png")
    got = np.asarray(load_image(tmp_path / "deep.png")).astype(float)
    assert got.shape == (64, 64, 3) and 120 < got.mean() < 135  # was all white (255) before

    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    wide.save(tmp_path / "turned.jpg", exif=exif)
    assert load_image(tmp_path / "turned.jpg").size == (20, 40)

    Image.new("P", (8, 8), 3).save(tmp_path / "palette.png")
    Image.new("LA", (8, 8), (200, 255)).save(tmp_path / "la.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    for name in ("palette.png", "la.png", "cmyk.jpg"):
        assert load_image(tmp_path / name).mode == "RGB"
    assert np.asarray(load_image(tmp_path / "la.png")).mean() == pytest.approx(200, abs=1)


def test_unreadable_images_are_one_warning_line_naming_them(sam_file, tmp_path, capsys, photos):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray((photos[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    code, _, err = run(["eval", sam_file, "--teacher", sam_file, "--data", folder, "--json"], capsys)
    assert code == 0, err
    warned = [line for line in err.splitlines() if "unreadable" in line]
    assert len(warned) == 1 and warned[0].startswith("warning:") and "broken.jpg" in warned[0]
    assert "warnings.warn" not in err and "UserWarning" not in err


# -- outputs never overwrite inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["export", "{f}", "--onnx", "{f}"],
    ["prune", "{f}", "--ratio", "0.5", "--out", "{f}", "--criterion", "magnitude"],
    ["compress", "{f}", "--ratio", "0.5", "--out", "{f}", "--epochs", "1"],
])
def test_outputs_never_replace_inputs(argv, timm_file, capsys):
    before = Path(timm_file).read_bytes()
    code, _, err = run([a.replace("{f}", str(timm_file)) for a in argv], capsys)
    assert code == 2
    assert "is an input of this command" in one_error_line(err) and "--force" in err
    assert Path(timm_file).read_bytes() == before


def test_trailing_slash_means_a_folder(timm_file, tmp_path, capsys):
    code, _, err = run(["prune", timm_file, "--ratio", "0.5", "--criterion", "magnitude",
                        "--out", f"{tmp_path / 'newdir'}/"], capsys)
    assert code == 0, err
    assert (tmp_path / "newdir" / "tiny-timm-pruned50.pt").is_file()


# -- every option checked before any work ----------------------------------------------------------------------
@pytest.mark.parametrize("extra,needle", [
    (["--ratio", "nan"], "ratio must be"),
    (["--ratio", "inf"], "ratio must be"),
    (["--ratio", "0.5", "--lr", "-1"], "learning rate must be"),
    (["--ratio", "0.5", "--lr", "nan"], "learning rate must be"),
    (["--ratio", "0.5", "--criterion", "taylor"], "needs a loss function"),
    (["--ratio", "0.5", "--augment", "sparkles"], "unknown augmentation"),
    (["--ratio", "0.5", "--lr-schedule", "sometimes"], "unknown lr schedule"),
    (["--ratio", "0.5", "--epochs", "0"], "epochs must be"),
    (["--ratio", "0.5", "--min-steps", "0"], "min_steps must be"),
])
def test_compress_options_are_checked_before_any_work(extra, needle, timm_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.iterdir())
    code, _, err = run(["compress", timm_file, *extra], capsys)
    assert code == 2
    assert needle in one_error_line(err)
    assert set(tmp_path.iterdir()) == before  # no output, no working folder


def test_offline_timm_is_quick_and_gives_cli_advice(tmp_path, capsys, monkeypatch):
    import vitslim_timm.family as timm_family

    monkeypatch.setattr(timm_family, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached
    started = time.perf_counter()
    code, _, err = run(["prune", "timm:vit_tiny_patch16_224", "--ratio", "0.5", "--out", tmp_path / "x.pt",
                        "--criterion", "magnitude"], capsys)
    assert code == 1
    assert "--random-weights" in one_error_line(err) and "--checkpoint" in err
    assert time.perf_counter() - started < 30


# -- CLI polish ---------------------------------------------------------------------------------------------------
def test_version_and_help_read_well(capsys):
    import typer

    from vitslim.cli import app

    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"vitslim {vitslim.__version__}"
    code, out, _ = run(["compress", "--help"], capsys)
    assert code == 0
    assert not out.startswith("\n") and "<bool>" not in out and "--lr-schedule" in out
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            assert getattr(param, "help", None) or param.param_type_name == "argument", (name, param.name)


def test_inspect_shows_history_as_sentences(tiny_timm, images, tmp_path, capsys):
    out = tmp_path / "slim.pt"
    vitslim.compress(tiny_timm, 0.5, data=images, out=out, **_quick())
    code, text, err = run(["inspect", out], capsys)
    assert code == 0, err
    history = [line for line in text.splitlines() if line.startswith("history:")]
    assert len(history) == 3 and "{" not in "".join(history)
    assert "distill: alternate to 0.5" in history[-1]
    assert "attn kept" in text and "#####.....  50%" in text  # kept fractions per block, as bars
    assert "embedding width: 24 (#####.....  50%)" in text
