"""One attention layer, plain vs each fused kernel, side by side: the measurement behind ``auto``.

    python benchmarks/attention.py sam-b@0.77 --block 2 --kernels sdpa chunked flex
    python benchmarks/attention.py sam-b --block 0 --device cuda --dtype bf16 --runs 50

Times block ``--block``'s attention module alone on the input it sees inside the encoder (a global
block: one 64x64 grid at 1024x1024; a windowed block: 25 windows of 14x14): forward only without
autograd, or with ``--backward`` forward + backward of a scalar loss (as in distillation).
``flex`` compiles on its first call (excluded: warm-up). Reports the largest difference from plain
(random weights; all-zero rel-pos tables, as SAM initialises them, are filled with noise first).
Specs as in ``vitslim bench``.

``--candidates`` (SAM only) adds designs measured and not adopted: ``augmented`` folds the rel-pos
terms into q and k (q' = [scale q, q.rel_h, q.rel_w], k' = [k, onehot(row), onehot(col)], scale 1:
exact, mask-free), ``augmented_padded`` also zero-pads v to q's width (so SDPA's fused CPU kernel
accepts it), and ``no_bias`` drops the rel-pos terms (not exact: the floor for the layer).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from _report import emit

import vitslim
from vitslim.bench import DTYPES, build, time_encoder
from vitslim.registry import family_of


def _candidate(attn, kind: str):
    """A forward for SAM ``Attention`` ``attn`` computed the ``kind`` way (see module docstring)."""
    import torch.nn.functional as F
    from vitslim_sam.fast import rel_pos_terms, split_heads

    def forward(x):
        B, H, W, _ = x.shape
        heads = attn.num_heads
        q, k, v = split_heads(attn, x)
        if kind == "no_bias":
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        else:
            bh, bw = rel_pos_terms(attn, q, H, W)
            rows, cols = torch.arange(H).repeat_interleave(W), torch.arange(W).repeat(H)
            onehot = torch.cat([F.one_hot(rows, H), F.one_hot(cols, W)], -1).to(q)
            q2 = torch.cat([q * attn.scale, bh, bw], -1)
            k2 = torch.cat([k, onehot.expand(B, heads, -1, -1)], -1)
            v2 = F.pad(v, (0, q2.shape[-1] - v.shape[-1])) if kind == "augmented_padded" else v
            out = F.scaled_dot_product_attention(q2, k2, v2, scale=1.0)[..., : v.shape[-1]]
        return attn.proj(out.transpose(1, 2).reshape(B, H, W, -1))

    return forward


def time_training_step(module, x: torch.Tensor, runs: int, warmup: int) -> list[float]:
    """Milliseconds per forward + backward of ``module(x).square().mean()`` (wall clock, synchronised)."""
    x = x.detach().requires_grad_(True)
    times = []
    for i in range(warmup + runs):
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        module(x).float().square().mean().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--block", type=int, default=2)
    ap.add_argument("--kernels", nargs="+", default=["sdpa", "chunked", "flex"])
    ap.add_argument("--candidates", action="store_true", help="also time designs not adopted (SAM)")
    ap.add_argument("--backward", action="store_true", help="time forward + backward")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    model = build(args.model)
    with torch.no_grad():  # SAM starts its rel-pos tables at zero: give them values so that they count
        for name, param in model.named_parameters():
            if "rel_pos" in name and not param.any():
                param.normal_(0, 0.02)
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
    variants = [("plain", plain)] + [(k, layer(vitslim.optimize(copy.deepcopy(model), kernel=k)))
                                     for k in args.kernels]
    if args.candidates:
        variants += [(c, _candidate(plain, c)) for c in ("augmented", "augmented_padded", "no_bias")]
    for name, module in variants:
        times = time_training_step(module, x, args.runs, args.warmup) if args.backward else \
            time_encoder(module, x, args.runs, args.warmup)
        with torch.no_grad():
            diff = (module(x).float() - reference).abs().max().item()
        rows.append({"kernel": name, "median_ms": statistics.median(times), "max_abs_diff": diff})
    for r in rows:
        r["speedup"] = rows[0]["median_ms"] / r["median_ms"]
    emit({"model": args.model, "block": args.block, "backward": args.backward, "input": list(x.shape), "heads": block.attn.num_heads,
          "head_dim": block.attn.head_dim, "device": args.device, "dtype": args.dtype,
          "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}, args.json_out)


if __name__ == "__main__":
    main()
