"""One attention layer, plain vs each fused kernel, side by side: the measurement behind ``auto``.

    python benchmarks/attention.py sam-b@0.77 --block 2 --kernels sdpa chunked flex
    python benchmarks/attention.py sam-b --block 0 --device cuda --dtype bf16 --runs 50

Times block ``--block``'s attention module alone on the input it sees inside the encoder (a global
block: one 64x64 grid at 1024x1024; a windowed block: 25 windows of 14x14), forward only, no autograd.
``flex`` compiles on its first call (excluded: warm-up). Reports the largest difference from plain.
Specs as in ``vitslim bench``.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from _report import emit

import vitslim
from vitslim.bench import DTYPES, build, time_encoder
from vitslim.registry import family_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--block", type=int, default=2)
    ap.add_argument("--kernels", nargs="+", default=["sdpa", "chunked", "flex"])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    model = build(args.model)
    family = family_of(model)
    block = family.describe(model).blocks[args.block]
    dtype = DTYPES[args.dtype]

    def layer(m):
        return family.encoder(m).get_submodule(block.attn.module).to(args.device, dtype).eval()

    encoder = family.encoder(model)
    x = torch.randn(1, *family.input_shape(model))
    captured = {}
    hook = encoder.get_submodule(block.attn.module).register_forward_hook(
        lambda mod, inp, out: captured.setdefault("x", inp[0]))
    with torch.no_grad():
        encoder(x)
    hook.remove()
    x = captured["x"].to(args.device, dtype)

    rows = []
    plain = layer(model)
    with torch.no_grad():
        reference = plain(x).float()
    for name, module in [("plain", plain)] + [(k, layer(vitslim.optimize(copy.deepcopy(model), kernel=k)))
                                              for k in args.kernels]:
        times = time_encoder(module, x, args.runs, args.warmup)
        with torch.no_grad():
            diff = (module(x).float() - reference).abs().max().item()
        rows.append({"kernel": name, "median_ms": statistics.median(times), "max_abs_diff": diff})
    for r in rows:
        r["speedup"] = rows[0]["median_ms"] / r["median_ms"]
    emit({"model": args.model, "block": args.block, "input": list(x.shape), "heads": block.attn.num_heads,
          "head_dim": block.attn.head_dim, "device": args.device, "dtype": args.dtype,
          "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}, args.json_out)


if __name__ == "__main__":
    main()
