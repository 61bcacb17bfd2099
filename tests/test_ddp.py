"""Two gloo processes started by torchrun, same global batch: the gradients of one process (rounding
only) and, after Adam's steps, its weights (within 1e-4, see below); a SIGTERM to one rank stops every rank at the same step, and the run resumes under torchrun."""

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


# Adam divides by the root of its second moment, so a gradient entry near zero that differs by rounding
# (fp32 sums of two ranks' halves against one sum of the whole) moves its weight by up to lr per step: a
# few steps at lr 1e-3 reach 1.2e-5 on an Intel AVX-512 CPU. Gradients are compared at rounding; weights
# at 1e-4, while a wrong gradient (one rank's half, no all-reduce) moves weights by about lr x steps and
# training itself moves them by more than 100x the tolerance (checked below).
WEIGHTS_TOL = 1e-4


def _worst(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in b if k != "first_step_grads")


def _same_gradients(a: dict, b: dict) -> None:
    ga, gb = a["first_step_grads"], b["first_step_grads"]
    assert len(ga) == len(gb) and ga
    for x, y in zip(ga, gb):
        assert (x - y).abs().max() <= 1e-5 * y.abs().max() + 1e-9  # rounding only


def test_two_processes_equal_one(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSLIM_TEST_WORKDIR", str(tmp_path / "single"))
    single = compress_once()
    out = tmp_path / "ddp.pt"
    _torchrun(out, tmp_path / "ddp")
    ddp = torch.load(out, weights_only=True)
    _same_gradients(ddp, single)
    worst = _worst(ddp, single)
    assert worst <= WEIGHTS_TOL
    # training moved the weights: the same run with a vanishing learning rate ends far from both
    monkeypatch.setenv("VITSLIM_TEST_WORKDIR", str(tmp_path / "still"))
    untrained = compress_once(lr=1e-12)
    assert _worst(untrained, single) > 100 * WEIGHTS_TOL


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
    assert _worst(torch.load(out, weights_only=True), single) <= WEIGHTS_TOL
