"""Two gloo processes started by torchrun, same global batch: the weights of one process (within 1e-5);
a SIGTERM to one rank stops every rank at the same step, and the run resumes under torchrun."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from .ddp_worker import compress_once

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, workdir: Path, mode: str = "run", check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "VITSLIM_TEST_WORKDIR": str(workdir), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                           "tests/ddp_worker.py", str(out), mode],
                          check=check, env=env, cwd=ROOT, timeout=300, capture_output=not check, text=True)


def _worst(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in b)


def test_two_processes_equal_one(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSLIM_TEST_WORKDIR", str(tmp_path / "single"))
    single = compress_once()
    out = tmp_path / "ddp.pt"
    _torchrun(out, tmp_path / "ddp")
    ddp = torch.load(out, weights_only=True)
    worst = _worst(ddp, single)
    assert worst <= 1e-5
    # training moved the weights: the same run with a vanishing learning rate ends far from both
    monkeypatch.setenv("VITSLIM_TEST_WORKDIR", str(tmp_path / "still"))
    untrained = compress_once(lr=1e-12)
    moved = max((untrained[k].float() - single[k].float()).abs().max().item() for k in single)
    assert moved > 100 * max(worst, 1e-6)


def test_sigterm_to_one_rank_stops_all_at_one_step_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSLIM_TEST_WORKDIR", str(tmp_path / "single"))
    single = compress_once(epochs=2)
    out = tmp_path / "ddp.pt"
    stopped = _torchrun(out, tmp_path / "ddp", "stop", check=False)
    assert stopped.returncode != 0 and not out.exists()
    # both ranks stopped after the same step, though only rank 1 was signalled; rank 0 wrote the checkpoint
    for rank in (0, 1):
        assert f"rank {rank}: stopped by SIGTERM: the checkpoint at stage 1 epoch 2 batch 1/2" in stopped.stdout, \
            stopped.stdout + stopped.stderr
    state = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert state["partial"]["batch"] == 1
    _torchrun(out, tmp_path / "ddp", "resume")
    assert _worst(torch.load(out, weights_only=True), single) <= 1e-5
