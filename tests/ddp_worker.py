"""Run by test_ddp under torchrun: each rank does a short compression; rank 0 saves the weights.

``argv``: the output file, then a mode: ``run`` (default), ``stop`` (rank 1 alone is sent SIGTERM after
the first epoch; every rank must stop at the same step) or ``resume`` (continue the stopped run)."""

import os
import signal
import sys

import torch
import torch.distributed as dist
from torch.optim.optimizer import register_optimizer_step_pre_hook


def compress_once(lr: float = 1e-3, epochs: int = 1, **kw) -> dict:
    """The student's weights, and under ``"first_step_grads"`` the gradients the first optimizer step
    was given (after the all-reduce under torchrun), before any optimizer touched the weights."""
    import vitslim

    from tests.conftest import TINY_TIMM

    torch.manual_seed(0)
    model = vitslim.create("timm:vit_tiny_patch16_224", pretrained=False, **TINY_TIMM)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 3, 64, 64, generator=g)  # 8 training images + 1 validation image
    # augmented views are drawn per process (mixup partners come from each process's share of the
    # batch), so the equality of 2 processes and 1 holds for the plain images; uniform ranking keeps the
    # widths independent of training, so runs with other learning rates can be compared
    grads: list[torch.Tensor] = []

    def first_step(optimizer, args, kwargs) -> None:
        if not grads:
            grads.extend(p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]
                         if p.grad is not None)

    hook = register_optimizer_step_pre_hook(first_step)
    try:
        out = vitslim.compress(model, 0.5, data=x, epochs=epochs, batch_size=4, lr=lr, importance_batches=1,
                               augment="none", ranking="uniform", progress=False,
                               workdir=os.environ.get("VITSLIM_TEST_WORKDIR", "vitslim-work"), **kw)
    finally:
        hook.remove()
    state = {k: v.clone() for k, v in out.state_dict().items()}
    if grads:
        state["first_step_grads"] = grads
    return state


def _sigterm_rank_1(record) -> None:
    if dist.get_rank() == 1 and record["stage"] == "embedding" and record["epoch"] == 0:
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode = sys.argv[2] if len(sys.argv) > 2 else "run"
    if mode == "run":
        state = compress_once()  # vitslim joins the process group torchrun describes
    else:
        from vitslim.compression import Preempted

        try:
            state = compress_once(epochs=2, checkpoint_every=1e9, resume=mode == "resume",
                                  on_epoch=_sigterm_rank_1 if mode == "stop" else None)
        except Preempted as exc:
            print(f"rank {dist.get_rank()}: {exc}", flush=True)
            sys.exit(exc.exit_code)
    assert dist.is_initialized() and dist.get_world_size() == int(os.environ["WORLD_SIZE"])
    if dist.get_rank() == 0:
        torch.save(state, sys.argv[1])
    dist.destroy_process_group()
