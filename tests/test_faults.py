"""Faults a long run meets: divergence, SIGTERM / SIGUSR1, and writes that fail (disk full, read-only,
an error midway). Each stops with one line, writes no output, keeps the last good checkpoint, and
can be resumed to the result of an uninterrupted run."""

from __future__ import annotations

import copy
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vitslim
from vitslim.compression import Interrupted, Preempted
from vitslim.errors import NonFiniteError, WriteError

from .conftest import resize_batch
from .test_cli import one_error_line, run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(photos):
    return resize_batch(photos, 64).repeat(3, 1, 1, 1)[:9]  # 8 training images (4 batches of 2) + 1 held out


def _kw(**extra):
    return dict(ratio=0.5, epochs=3, batch_size=2, importance_batches=2, progress=False, checkpoint_every=1e9,
                **extra)


def _same(a, b) -> None:
    for (k, wa), (_, wb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(wa, wb), k


def _signal_at(stage_name: str, epoch: int, signum=signal.SIGTERM):
    """An ``on_epoch`` hook that sends this process a real signal after ``epoch`` of a stage."""
    def hook(record):
        if record["stage"] == stage_name and record["epoch"] == epoch:
            os.kill(os.getpid(), signum)
    return hook


# -- divergence ---------------------------------------------------------------------------------------------
def test_a_diverging_run_is_one_line_exit_1_and_no_output(tmp_path, capsys, photos):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, p in enumerate(photos):
        Image.fromarray((p.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(folder / f"{i}.png")
    out = tmp_path / "nan.pt"
    code, _, err = run(["compress", "timm:vit_tiny_patch16_224", "--random-weights", "--ratio", "0.5", "--data",
                        folder, "--epochs", "2", "--batch-size", "2", "--lr", "1e4", "--out", out, "--no-eval"], capsys)
    assert code == 1
    line = one_error_line(err)
    assert line.startswith("error: diverged:") and "stage 1/2 embedding, epoch 1" in line and "lr " in line
    assert "--lr" in line and "no checkpoint was written yet" in line
    assert not out.exists()


def test_divergence_in_a_later_stage_keeps_the_last_good_checkpoint(tiny_timm, images, tmp_path):
    """Stage 1 ends (its checkpoint is written), stage 2 diverges: the error names stage 2 and the kept
    checkpoint, which still holds stage 1's finite student."""
    def explode(record):  # after stage 1, a learning rate that no model survives
        if record["stage"] == "embedding" and record["epoch"] == 2:
            raise_lr[0] = True

    raise_lr = [False]
    original_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        if raise_lr[0]:
            for g in self.param_groups:
                g["lr"] = 1e30
        return original_step(self, *a, **k)

    torch.optim.AdamW.step = step
    try:
        with pytest.raises(NonFiniteError, match=r"diverged: .* at stage 2/2 bottleneck.*the checkpoint at stage 1 "
                                                 r"epoch 3 is kept") as info:
            vitslim.compress(tiny_timm, data=images, workdir=tmp_path, out=tmp_path / "x.pt", on_epoch=explode,
                             **_kw())
    finally:
        torch.optim.AdamW.step = original_step
    assert info.value.exit_code == 1 and not (tmp_path / "x.pt").exists()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["stage"] == 0 and state["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in state["student"]["state_dict"].values())


def test_a_non_finite_state_never_replaces_the_checkpoint(tmp_path):
    from vitslim.engine.checkpoint import Checkpointer

    good = {"student": {"state_dict": {"w": torch.ones(3)}}, "previous": None}
    ckpt = Checkpointer(tmp_path, {"run": 1}, every=0)
    ckpt.maybe_save(0, 0, force=True, state=lambda: good)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    bad = {"student": {"state_dict": {"w": torch.tensor([1.0, float("nan"), 0.0])}}, "previous": None}
    with pytest.raises(NonFiniteError, match="student model's w is not finite"):
        ckpt.maybe_save(0, 1, force=True, state=lambda: bad)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before and ckpt.last == (0, 0)


def test_non_finite_weights_are_refused_by_prune(tiny_timm):
    with torch.no_grad():
        tiny_timm.blocks[0].mlp.fc1.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="importance of .* is not finite"):
        vitslim.prune(tiny_timm, 0.5, importance="magnitude")
    with pytest.raises(NonFiniteError, match="pruned model's .* is not finite"):
        vitslim.prune(tiny_timm, 0.5, importance="random")


# -- stop signals ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage,signum", [("embedding", signal.SIGTERM), ("bottleneck", signal.SIGUSR1)])
def test_a_stop_signal_checkpoints_midway_and_resume_is_identical(stage, signum, tiny_timm, images, tmp_path):
    """A real signal after epoch 2 of a stage: the run finishes the next optimizer step (one batch into
    epoch 3), checkpoints there and stops; --resume then gives the uninterrupted run's weights bit for bit."""
    whole = vitslim.compress(copy.deepcopy(tiny_timm), data=images, workdir=tmp_path / "whole", **_kw())
    with pytest.raises(Preempted, match=rf"stopped by {signal.Signals(signum).name}: the checkpoint at stage "
                                        rf"{1 if stage == 'embedding' else 2} epoch 3 batch 1/4 is kept") as info:
        vitslim.compress(copy.deepcopy(tiny_timm), data=images, workdir=tmp_path / "cut",
                         on_epoch=_signal_at(stage, 1, signum), **_kw())
    assert info.value.exit_code == 128 + signum and info.value.checkpoint == tmp_path / "cut"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's handlers are gone
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert state["partial"]["batch"] == 1 and state["epoch"] == 1
    resumed = vitslim.compress(copy.deepcopy(tiny_timm), data=images, workdir=tmp_path / "cut", resume=True, **_kw())
    _same(resumed, whole)


def test_ctrl_c_after_a_stop_checkpoint_names_it(tiny_timm, images, tmp_path):
    """A run resumed from a mid-epoch checkpoint and interrupted before its next one names that checkpoint."""
    with pytest.raises(Preempted):
        vitslim.compress(copy.deepcopy(tiny_timm), data=images, workdir=tmp_path, on_epoch=_signal_at("embedding", 0),
                         **_kw())

    def ctrl_c(record):
        raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="checkpoint after stage 1 epoch 2 batch 1/4 is kept"):
        vitslim.compress(copy.deepcopy(tiny_timm), data=images, workdir=tmp_path, resume=True, on_epoch=ctrl_c, **_kw())


def test_sigterm_to_the_cli_is_one_line_exit_143_and_a_checkpoint(tmp_path, tiny_timm):
    timm_file = vitslim.save(tiny_timm, tmp_path / "tiny.pt")
    out = tmp_path / "x.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from vitslim.cli import main; main()", "compress", str(timm_file),
                             "--ratio", "0.5", "--epochs", "100000", "--batch-size", "2", "--criterion", "magnitude",
                             "--out", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lock = Path(f"{out}.work") / ".lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and time.monotonic() < deadline and proc.poll() is None:  # the run has started
        time.sleep(0.2)
    time.sleep(3.0)  # well into training: magnitude scores need no images, tiny steps take milliseconds
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: stopped by SIGTERM: the checkpoint at stage 1 epoch ") and "Traceback" not in err
    assert f"is kept in {out}.work; continue with --resume" in lines[-1]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:]
    assert (Path(f"{out}.work") / "checkpoint.pt").is_file() and not out.exists()


# -- write faults ------------------------------------------------------------------------------------------
def _fail_writes_after(count: int, monkeypatch, how: str = "midway"):
    """Let ``count`` atomic writes succeed, then make every later one fail: ``midway`` writes half the
    bytes and raises ENOSPC, ``fsync`` fails when the file is flushed to disk."""
    import vitslim.atomic as mf

    done = [0]
    real_save, real_fsync = mf.torch_save, os.fsync

    def torch_save(obj, path):
        done[0] += 1
        if done[0] > count and how == "midway":
            real_save(obj, path)
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                f.truncate(size // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, path)

    def fsync(fd):
        if done[0] > count and how == "fsync":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_fsync(fd)

    monkeypatch.setattr(mf, "torch_save", torch_save)
    monkeypatch.setattr(mf.os, "fsync", fsync)
    return lambda: (monkeypatch.setattr(mf, "torch_save", real_save), monkeypatch.setattr(mf.os, "fsync", real_fsync))


@pytest.mark.parametrize("how,reason", [("midway", "No space left on device"), ("fsync", "Input/output error")])
def test_a_failed_checkpoint_write_keeps_the_previous_one_and_resumes(how, reason, tiny_timm, images, tmp_path,
                                                                      monkeypatch):
    whole = vitslim.compress(copy.deepcopy(tiny_timm), data=images, workdir=tmp_path / "whole", **_kw())
    work = tmp_path / "w"
    kw = _kw()
    kw["checkpoint_every"] = 0  # a checkpoint after every epoch: the second one fails
    restore = _fail_writes_after(1, monkeypatch, how)
    with pytest.raises(WriteError, match=rf"cannot write {work / 'checkpoint.pt'}: {reason}"):
        vitslim.compress(copy.deepcopy(tiny_timm), data=images, workdir=work, out=tmp_path / "x.pt", **kw)
    assert sorted(p.name for p in work.iterdir()) == [".lock", "checkpoint.pt"]  # no temporary file left
    state = torch.load(work / "checkpoint.pt", weights_only=True)
    assert (state["stage"], state["epoch"]) == (0, 0)
    restore()  # space is back
    resumed = vitslim.compress(copy.deepcopy(tiny_timm), data=images, workdir=work, resume=True, **kw)
    _same(resumed, whole)


def test_a_failed_output_write_leaves_no_file_and_resume_writes_it(tiny_timm, images, tmp_path, monkeypatch):
    out = tmp_path / "slim.pt"
    out.write_bytes(b"an older file")
    restore = _fail_writes_after(2, monkeypatch)  # the two stage-end checkpoints succeed, the output fails
    with pytest.raises(WriteError, match=f"cannot write {out}: No space left on device"):
        vitslim.compress(copy.deepcopy(tiny_timm), data=images, out=out, **_kw())
    assert out.read_bytes() == b"an older file" and not list(tmp_path.glob(".slim.pt.*"))
    restore()
    student = vitslim.compress(copy.deepcopy(tiny_timm), data=images, out=out, resume=True, **_kw())
    _same(vitslim.load(out), student)


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_is_one_line_and_no_partial_file(tiny_timm, tmp_path, capsys):
    """A real full file system (a 64 KB tmpfs, where the machine lets us mount one)."""
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "64k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        model = vitslim.save(tiny_timm, tmp_path / "tiny.pt")
        for name in ("out.pt", "out.safetensors"):
            code, _, err = run(["prune", model, "--ratio", "0.1", "--criterion", "magnitude", "--out", disk / name],
                               capsys)
            assert code == 1
            assert one_error_line(err) == f"error: cannot write {disk / name}: No space left on device"
            assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)
