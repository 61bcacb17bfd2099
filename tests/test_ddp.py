"""Two gloo processes started by torchrun, same global batch: the weights of one process (within 1e-5)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from .ddp_worker import compress_once


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSLIM_TEST_WORKDIR", str(tmp_path / "single"))
    single = compress_once()
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "VITSLIM_TEST_WORKDIR": str(tmp_path / "ddp"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                    "tests/ddp_worker.py", str(out)],
                   check=True, env=env, cwd=Path(__file__).resolve().parents[1], timeout=300)
    ddp = torch.load(out, weights_only=True)
    assert ddp.keys() == single.keys()
    worst = max((ddp[k].float() - single[k].float()).abs().max().item() for k in single)
    assert worst <= 1e-5
    # training moved the weights: the same run with a vanishing learning rate ends far from both
    monkeypatch.setenv("VITSLIM_TEST_WORKDIR", str(tmp_path / "still"))
    untrained = compress_once(lr=1e-12)
    moved = max((untrained[k].float() - single[k].float()).abs().max().item() for k in single)
    assert moved > 100 * max(worst, 1e-6)
