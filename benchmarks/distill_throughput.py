"""Distillation throughput (images/s): vitslim's training loop against a naive loop, same device, one run.

    python benchmarks/distill_throughput.py --model sam-b --img-size 512 --images 8 --batch-size 4 [--device cuda] [--json out.json]

naive: fp32, batch 1, teacher recomputed in the training graph's precision, one optimizer step per image.
vitslim: the engine's ``train_epoch`` (batch ``--batch-size``, teacher under no_grad, bf16 autocast on
CUDA with ``--precision auto``, the family's fused attention as ``compress`` uses it unless
``--no-fast``). The student is the model pruned by 0.5 (magnitude); weights are random. Each loop gets
one warm-up step first.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import vitslim
from _report import emit
from vitslim.engine.schedules import build_schedule
from vitslim.engine.options import TrainOptions
from vitslim.engine.trainer import StageLoss, train_epoch
from vitslim.registry import family_for_name, family_of


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sam-b")
    ap.add_argument("--img-size", type=int, help="input size override (SAM-B is 1024; the README uses 512)")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--no-fast", dest="fast", action="store_false", help="plain attention in vitslim's loop")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    config = family_for_name(args.model).input_size_config(args.img_size) if args.img_size else {}
    teacher = vitslim.create(args.model, pretrained=False, **config).to(args.device).eval()
    family = family_of(teacher)
    student = vitslim.prune(teacher, 0.5, part="both", importance="magnitude").to(args.device)
    x = torch.randn(args.images, *family.input_shape(teacher))
    enc_t, enc_s = family.encoder(teacher), family.encoder(student)
    for p in teacher.parameters():
        p.requires_grad_(False)

    # naive loop
    opt = torch.optim.AdamW(enc_s.parameters(), lr=1e-4)
    def mse(a, b):  # over the family's output features (SAM 2: the FPN levels)
        return sum(F.mse_loss(s, t) for s, t in zip(family.output_features(a), family.output_features(b)))

    with torch.no_grad():
        ref = enc_t(x[:1].to(args.device))
    mse(enc_s(x[:1].to(args.device)), ref).backward()  # warm-up
    opt.zero_grad()
    _sync(args.device)
    t0 = time.perf_counter()
    for img in x.split(1):
        img = img.to(args.device)
        loss = mse(enc_s(img), enc_t(img))
        loss.backward()
        opt.step()
        opt.zero_grad()
    _sync(args.device)
    naive = args.images / (time.perf_counter() - t0)

    # vitslim's loop
    if args.fast:
        vitslim.optimize(teacher)
        vitslim.optimize(student)
    stage = build_schedule("one-shot", 0.5, 1)[0]
    # the loop's own cost (no augmented views, which the naive loop does not make either)
    cfg = TrainOptions(batch_size=args.batch_size, device=args.device, precision=args.precision, augment="none").validate()
    loss = StageLoss(family, family.describe(student), stage.terms, {"original": teacher, "previous": teacher})
    opt = torch.optim.AdamW(enc_s.parameters(), lr=1e-4)
    train_epoch(student, enc_s, loss, x[:args.batch_size], 0, opt, cfg)  # warm-up
    _sync(args.device)
    t0 = time.perf_counter()
    train_epoch(student, enc_s, loss, x, 0, opt, cfg)
    _sync(args.device)
    engine = args.images / (time.perf_counter() - t0)

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    result = {"model": args.model, "input": list(family.input_shape(teacher)), "device": device_name,
              "torch": torch.__version__, "images": args.images, "batch_size": args.batch_size,
              "precision": str(cfg.amp_dtype() or "fp32"), "fast": args.fast, "naive_images_per_s": naive,
              "vitslim_images_per_s": engine, "speedup": engine / naive}
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
