"""Time the pruning core on a real-size model: surgery alone, and importance estimation per image.

    python benchmarks/prune_time.py --model sam-b --ratio 0.77 --images 2 [--json out.json]

Weights are random (sizes and timings do not depend on them). Surgery = tracing torch-pruning's
dependency graph on a meta-device shadow, building the channel groups, removing the channels and fixing
attributes; importance = disturbed
Taylor forward + backward at the family's input size (1024x1024 for SAM), reported per image.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import vitslim
from _report import emit
from vitslim.graph import checked_embedding_params
from vitslim.groups import build_groups
from vitslim.ranking import select
from vitslim.registry import family_of
from vitslim.surgery import remove_channels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sam-b")
    ap.add_argument("--ratio", type=float, default=0.77)
    ap.add_argument("--images", type=int, default=2, help="images for the importance timing (0: skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    model = vitslim.create(args.model, pretrained=False)
    family = family_of(model)
    surgery = []
    for _ in range(args.repeats):
        m = vitslim.prune(model, 0.0, part="both", importance="magnitude")  # a fresh copy
        t0 = time.perf_counter()
        structure = family.describe(m)
        structure.embedding_params = checked_embedding_params(family.encoder(m), structure, family, m)
        groups = build_groups(structure, "both", params=set(dict(family.encoder(m).named_parameters())))
        scores = {g.name: torch.rand(g.size, dtype=torch.float64) for g in groups}
        keep = select(groups, scores, args.ratio, "global")
        remove_channels(m, family, structure, groups, keep)
        surgery.append(time.perf_counter() - t0)
    result = {
        "model": args.model, "ratio": args.ratio, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "surgery_s": min(surgery), "surgery_runs_s": surgery,
    }
    if args.images > 0:
        x = torch.randn(args.images, *family.input_shape(model))
        t0 = time.perf_counter()
        vitslim.plan(model, args.ratio, part="both", data=x)
        result["importance_s_per_image"] = (time.perf_counter() - t0) / args.images
        result["importance_images"] = args.images
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
