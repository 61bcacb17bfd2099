"""Encoder latency, dense vs compressed, plain vs fused attention, side by side in one run.

    python benchmarks/latency.py sam-b sam-b@0.77 sam-b@0.77:heads --fast --json latency.json
    python benchmarks/latency.py timm:vit_base_patch16_224 timm:vit_base_patch16_224@0.5 --fast

Same as ``vitslim bench``; see ``vitslim.bench`` for the model specs. Rows are timed in interleaved
rounds (``--rounds``, default 3), so that the machine's drift hits every row alike; each row reports
the median of its round medians and their spread. Prints JSON.
"""

from __future__ import annotations

import argparse

from _report import emit

from vitslim.bench import benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, help="timed runs per round (default: 50 on GPU, 1 on CPU)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all rows (default 3)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--device")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--img-size", type=int)
    ap.add_argument("--onnxruntime", action="store_true", help="also time the ONNX export in onnxruntime (CPU)")
    ap.add_argument("--kernel", action="append", help="also time this fused kernel (SAM: sdpa, chunked, flex)")
    ap.add_argument("--cuda-graphs", action="store_true", help="capture each encoder as a CUDA graph (GPU)")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    result = benchmark(args.models, batch=args.batch, runs=args.runs, warmup=args.warmup, fast=args.fast,
                       dtype=args.dtype, device=args.device, compile=args.compile, img_size=args.img_size,
                       onnxruntime=args.onnxruntime, kernels=args.kernel, cuda_graphs=args.cuda_graphs,
                       rounds=args.rounds,
                       progress=lambda text: print(f"timing {text}", flush=True))
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
