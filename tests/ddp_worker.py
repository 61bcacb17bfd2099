"""Run by test_ddp: one rank of a gloo process group doing a short compression."""

import os
import sys

import torch
import torch.distributed as dist


def run(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        state = compress_once()
        if rank == 0:
            torch.save(state, out)
    finally:
        dist.destroy_process_group()


def compress_once() -> dict:
    import vitslim

    from tests.conftest import TINY_TIMM

    torch.manual_seed(0)
    model = vitslim.create("timm:vit_tiny_patch16_224", pretrained=False, **TINY_TIMM)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 3, 64, 64, generator=g)  # 8 training images + 1 validation image
    out = vitslim.compress(model, 0.5, data=x, epochs=1, batch_size=4, lr=1e-3, importance_batches=1,
                           progress=False, workdir=os.environ.get("VITSLIM_TEST_WORKDIR", "vitslim-work"))
    return {k: v.clone() for k, v in out.state_dict().items()}


if __name__ == "__main__":
    world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.multiprocessing.spawn(run, args=(world, port, out), nprocs=world)
